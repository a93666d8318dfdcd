"""The Huawei agent gateway over HTTP: sign-in and Guid, event polling, idle sign-out, conferences.

Every rule of seed 003 (batchaddparticipant) has a test that fails if the rule is not enforced; a
refused request is also shown to have changed nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from channels.auth import User, UserDirectory, hash_password
from channels.huawei.agentgateway import (
    CHANGE_LEAVE,
    AgentGateway,
    BatchAdd,
    GatewayError,
    Participant,
    parse_batch_add,
)
from channels.store import StateStore, StoreUnavailable

PASSWORDS = {"101": "pw101", "102": "pw102", "103": "pw103", "104": "pw104"}
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.AgentGateway1$")
BASE = "/agentgateway/resource"
POLL_WAIT = 0.05  # an empty poll's wait; events are queued before the reply that caused them, so short is safe
IDLE = 120.0
WAIT_LIMIT = 5.0  # upper bound on any wait in this file


class FakeClock:
    """The gateway's idle clock, moved by hand; asyncio's own timers keep real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def users() -> UserDirectory:
    # Cheap hashes: every sign-in checks one, and the default cost is deliberately slow. One test below
    # signs in a user made by UserDirectory.add with the default cost.
    directory = UserDirectory(User(f"agent{agent_id}", hash_password(password, iterations=1_000), agent_id=agent_id)
                              for agent_id, password in PASSWORDS.items())
    directory.add("supervisor", "sup-pw", roles=("supervisor",))  # no workNo: cannot sign in here
    return directory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class Gateway:
    client: TestClient
    gateway: AgentGateway


@pytest.fixture
def make_gateway(aiohttp_client, users, clock) -> Callable[..., Awaitable[Gateway]]:
    async def make(**options: Any) -> Gateway:
        options.setdefault("poll_wait", POLL_WAIT)
        options.setdefault("idle_signout", IDLE)
        options.setdefault("clock", clock)
        gateway = AgentGateway(users, **options)
        app = web.Application()
        gateway.add_routes(app)
        store = options.get("store")
        if store is not None:  # the gateway does not own its store: the test's app closes it, and its thread

            async def close_store(_: web.Application) -> None:
                await store.close()

            app.on_cleanup.append(close_store)
        return Gateway(await aiohttp_client(app), gateway)

    return make


@pytest.fixture
async def gw(make_gateway) -> Gateway:
    return await make_gateway()


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[[Awaitable[Any]], asyncio.Task]]:
    """`spawn(coro)` -> a task that is cancelled at teardown, so a failing test leaves no poll behind."""
    tasks: list[asyncio.Task] = []

    def start(coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def call(client: TestClient, method: str, path: str, body: Any = None, *, guid: str | None = None,
               raw: bytes | None = None) -> dict[str, Any]:
    """One request; every answer of the gateway is HTTP 200 JSON, failures included."""
    headers = {"Content-Type": "application/json; charset=UTF-8"}
    if guid is not None:
        headers["Guid"] = guid
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    async with client.request(method, path, data=data, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


@dataclass
class Agent:
    client: TestClient
    agent_id: str
    guid: str = ""

    async def sign_in(self, password: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {"password": PASSWORDS.get(self.agent_id, "x") if password is None else password, **fields}
        answer = await call(self.client, "PUT", f"{BASE}/onlineagent/{self.agent_id}", body)
        if answer["retcode"] == "0":
            self.guid = answer["result"]["guid"]
        return answer

    async def sign_out(self) -> dict[str, Any]:
        return await call(self.client, "DELETE", f"{BASE}/onlineagent/{self.agent_id}/logout", guid=self.guid)

    async def poll(self) -> dict[str, Any]:
        return await asyncio.wait_for(
            call(self.client, "GET", f"{BASE}/agentevent/{self.agent_id}", guid=self.guid), WAIT_LIMIT)

    async def conf(self, action: str, body: Any = None, raw: bytes | None = None) -> dict[str, Any]:
        return await call(self.client, "POST", f"{BASE}/agentconf/{self.agent_id}/{action}", body,
                          guid=self.guid, raw=raw)

    async def request_conf(self) -> int:
        answer = await self.conf("requestagentconf")
        assert answer["retcode"] == "0", answer
        return answer["result"]["confId"]

    async def add(self, body: Any = None, raw: bytes | None = None) -> dict[str, Any]:
        return await self.conf("batchaddparticipant", body, raw)

    async def remove(self, body: Any) -> dict[str, Any]:
        return await self.conf("batchremoveparticipant", body)

    async def events(self) -> list[dict[str, Any]]:
        """Every queued event, oldest first; the last poll waits poll_wait and finds none."""
        found = []
        for _ in range(200):
            answer = await self.poll()
            assert answer["retcode"] == "0", answer
            if answer["event"] is None:
                return found
            found.append(answer["event"])
        raise AssertionError("event queue did not drain")


async def signed_in(client: TestClient, agent_id: str) -> Agent:
    agent = Agent(client, agent_id)
    answer = await agent.sign_in()
    assert answer["retcode"] == "0", answer
    return agent


async def chair_with_conference(client: TestClient, agent_id: str = "101") -> tuple[Agent, int]:
    """A signed-in chairperson whose setup events are already consumed."""
    chair = await signed_in(client, agent_id)
    conf_id = await chair.request_conf()
    assert [e["eventType"] for e in await chair.events()] == ["AgentConf_SelfJoinResult",
                                                              "AgentConf_RequestSuccess"]
    return chair, conf_id


async def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def agent_entry(agent_id: str, **extra: Any) -> dict[str, Any]:
    return {"addressType": "9", "address": agent_id, **extra}


def phone_entry(number: str, **extra: Any) -> dict[str, Any]:
    return {"addressType": "6", "address": number, **extra}


def changed(event: dict[str, Any]) -> dict[str, Any]:
    assert event["eventType"] == "AgentConf_ParticipantChanged", event
    return event["content"]


# ================================================================ sign-in and sign-out


async def test_sign_in_returns_a_guid_in_the_body_and_the_set_guid_header(gw):
    headers = {"Content-Type": "application/json"}
    async with gw.client.put(f"{BASE}/onlineagent/101", data=orjson.dumps({"password": "pw101"}),
                             headers=headers) as response:
        assert response.status == 200
        answer = await response.json()
        header = response.headers.get("Set-GUID")
    assert answer["retcode"] == "0" and answer["message"] == "success"
    assert GUID.match(answer["result"]["guid"]), answer
    assert header == answer["result"]["guid"]


async def test_each_sign_in_gets_a_new_guid_and_the_old_one_dies(gw):
    agent = await signed_in(gw.client, "101")
    first = agent.guid
    assert (await agent.sign_out())["retcode"] == "0"
    await agent.sign_in()
    assert agent.guid != first
    stale = await call(gw.client, "GET", f"{BASE}/agentevent/101", guid=first)
    assert stale["retcode"] == "000-003"
    assert (await agent.poll())["retcode"] == "0"


async def test_sign_in_accepts_every_documented_field(gw):
    agent = Agent(gw.client, "101")
    answer = await agent.sign_in(phonenum="8" * 24, autoanswer=False, autoenteridle=True, releasephone=False,
                                 agenttype=11, status=5)
    assert answer["retcode"] == "0", answer


async def test_sign_in_accepts_the_string_values_a_huawei_desktop_sends(gw):
    # The sample desktop posts <select> values: "4", "true".
    answer = await Agent(gw.client, "101").sign_in(agenttype="4", status="4", releasephone="true")
    assert answer["retcode"] == "0", answer


@pytest.mark.parametrize("agent_id, password", [("101", "wrong"), ("150", "pw101"), ("101", "")])
async def test_sign_in_with_bad_credentials_is_refused(gw, agent_id, password):
    answer = await Agent(gw.client, agent_id).sign_in(password)
    assert answer["retcode"] == "000-002"
    assert answer["message"] == f"agent {agent_id} does not exist or the password is incorrect"
    assert agent_id not in gw.gateway.sessions


@pytest.mark.parametrize("agent_id", [
    "100", "60000", "0101", "abc", "1e3", "-101",
    pytest.param("\u0661\u0660\u0661", id="arabic-indic-101"),  # str.isdigit() says yes
    pytest.param("9" * 5000, id="5000-digits"),  # past int()'s 4300-digit limit
])
async def test_agent_id_outside_101_to_59999_is_refused(gw, agent_id):
    answer = await call(gw.client, "PUT", f"{BASE}/onlineagent/{agent_id}", {"password": "pw"})
    assert answer["retcode"] == "000-002"
    assert "agentid must be an agent ID from 101 to 59999" in answer["message"]


@pytest.mark.parametrize("body, message", [
    ({}, "password is required"),
    ({"password": None}, "password is required"),
    ({"password": 101}, "password must be a string, got an integer"),
    ({"password": "p" * 33}, "password must be at most 32 characters"),
    ({"password": "pw101", "phonenum": "1" * 25}, "phonenum must be at most 24 characters"),
    ({"password": "pw101", "phonenum": 5551234}, "phonenum must be a string"),
    ({"password": "pw101", "agenttype": 5}, "agenttype must be 4 or 11"),
    ({"password": "pw101", "agenttype": True}, "agenttype must be 4 or 11"),
    ({"password": "pw101", "status": 3}, "status must be 4 or 5"),
    ({"password": "pw101", "autoanswer": "yes"}, "autoanswer must be a boolean"),
    ({"password": "pw101", "releasephone": 1}, "releasephone must be a boolean"),
    ({"password": "pw101", "autoenteridle": []}, "autoenteridle must be a boolean"),
])
async def test_invalid_sign_in_body_is_refused_and_signs_nobody_in(gw, body, message):
    answer = await call(gw.client, "PUT", f"{BASE}/onlineagent/101", body)
    assert answer["retcode"] == "000-002"
    assert message in answer["message"]
    assert (await Agent(gw.client, "101").sign_in())["retcode"] == "0"  # not already signed in


@pytest.mark.parametrize("raw, message", [
    (b"", "the request body is empty"),
    (b"{", "the request body is not valid JSON"),
    (b"[]", "the request body must be a JSON object, got an array"),
    (b'"pw101"', "the request body must be a JSON object, got a string"),
    (b"null", "the request body must be a JSON object, got null"),
    (b"\xff\xfe", "the request body is not valid JSON"),
])
async def test_malformed_sign_in_body_is_refused(gw, raw, message):
    answer = await call(gw.client, "PUT", f"{BASE}/onlineagent/101", raw=raw)
    assert answer["retcode"] == "000-002"
    assert message in answer["message"]


async def test_signing_in_twice_answers_100_002_and_keeps_the_first_guid(gw):
    agent = await signed_in(gw.client, "101")
    second = await Agent(gw.client, "101").sign_in()
    assert second["retcode"] == "100-002"
    assert second["message"] == "agent 101 is already signed in"
    assert (await agent.poll())["retcode"] == "0"


async def test_sign_out_ends_the_guid_and_a_second_sign_out_answers_100_006(gw):
    agent = await signed_in(gw.client, "101")
    assert await agent.sign_out() == {"message": "success", "retcode": "0", "result": {}}
    assert (await agent.poll())["retcode"] == "100-006"
    again = await agent.sign_out()
    assert again["retcode"] == "100-006"
    assert again["message"] == "agent 101 is not signed in"


async def test_an_agent_that_never_signed_in_gets_100_006(gw):
    answer = await Agent(gw.client, "103", guid="anything").poll()
    assert answer["retcode"] == "100-006"


# ================================================================ the Guid header


def _route_calls(agent: Agent) -> dict[str, Callable[[], Awaitable[dict[str, Any]]]]:
    return {
        "logout": agent.sign_out,
        "poll": agent.poll,
        "requestagentconf": lambda: agent.conf("requestagentconf"),
        "batchaddparticipant": lambda: agent.add({"addresses": [phone_entry("5550001")]}),
        "batchremoveparticipant": lambda: agent.remove({"addresses": [phone_entry("5550001")]}),
    }


@pytest.mark.parametrize("route", ["logout", "poll", "requestagentconf", "batchaddparticipant",
                                   "batchremoveparticipant"])
@pytest.mark.parametrize("which", ["missing", "wrong", "another agent's"])
async def test_every_call_after_sign_in_needs_the_agents_own_guid(gw, route, which):
    owner = await signed_in(gw.client, "101")
    other = await signed_in(gw.client, "102")
    guid = {"missing": "", "wrong": owner.guid[:-1] + "x", "another agent's": other.guid}[which]
    impostor = Agent(gw.client, "101", guid=guid)
    answer = await _route_calls(impostor)[route]()
    assert answer["retcode"] == "000-003", answer
    assert answer["message"].startswith("GUID error")
    # Nothing happened: still signed in, no conference, no event.
    assert await owner.events() == []
    assert (await owner.conf("batchaddparticipant", {"addresses": [phone_entry("1")]}))["retcode"] == "101-001"


# ================================================================ event polling


async def test_poll_returns_queued_events_oldest_first_one_per_poll(gw):
    agent = await signed_in(gw.client, "101")
    conf_id = await agent.request_conf()
    first = await agent.poll()
    assert first == {"message": "", "retcode": "0", "event": {
        "eventType": "AgentConf_SelfJoinResult", "workNo": "101", "content": {"result": 0, "confId": conf_id}}}
    second = await agent.poll()
    assert second["event"] == {"eventType": "AgentConf_RequestSuccess", "workNo": "101",
                               "content": {"result": 0, "confId": conf_id}}


async def test_an_empty_poll_waits_poll_wait_then_answers_with_no_event(make_gateway):
    gw = await make_gateway(poll_wait=0.2)
    agent = await signed_in(gw.client, "101")
    started = time.monotonic()
    answer = await agent.poll()
    elapsed = time.monotonic() - started
    assert answer == {"message": "", "retcode": "0", "event": None}
    assert 0.18 <= elapsed < 2


async def test_a_user_added_with_the_default_password_cost_signs_in(aiohttp_client, clock):
    directory = UserDirectory()
    directory.add("agent200", "secret", agent_id="200")
    gateway = AgentGateway(directory, poll_wait=POLL_WAIT, clock=clock)
    app = web.Application()
    gateway.add_routes(app)
    client = await aiohttp_client(app)
    assert (await Agent(client, "200").sign_in("secret"))["retcode"] == "0"
    assert (await Agent(client, "200").sign_in("Secret"))["retcode"] == "000-002"


async def test_a_parked_poll_answers_as_soon_as_an_event_arrives(make_gateway, spawn):
    gw = await make_gateway(poll_wait=WAIT_LIMIT * 2)
    chair = await signed_in(gw.client, "101")
    await chair.request_conf()
    invited = await signed_in(gw.client, "102")
    parked = spawn(invited.poll())
    await wait_until(lambda: gw.gateway.sessions["102"].waiter is not None)
    started = time.monotonic()
    assert (await chair.add({"addresses": [agent_entry("102")]}))["retcode"] == "0"
    answer = await parked
    assert time.monotonic() - started < 2
    assert answer["event"]["eventType"] == "AgentConf_ParticipantChanged"


async def test_a_second_poll_answers_the_first_with_no_event(make_gateway, spawn):
    gw = await make_gateway(poll_wait=WAIT_LIMIT * 2)
    agent = await signed_in(gw.client, "101")
    first = spawn(agent.poll())
    await wait_until(lambda: gw.gateway.sessions["101"].waiter is not None)
    parked_first = gw.gateway.sessions["101"].waiter
    second = spawn(agent.poll())
    answer = await asyncio.wait_for(first, 2)
    assert answer == {"message": "", "retcode": "0", "event": None}
    await wait_until(lambda: gw.gateway.sessions["101"].waiter not in (None, parked_first))
    await agent.request_conf()  # the newest poll gets the event
    assert (await asyncio.wait_for(second, 2))["event"]["eventType"] == "AgentConf_SelfJoinResult"


async def test_signing_out_answers_a_parked_poll_with_100_006(make_gateway, spawn):
    gw = await make_gateway(poll_wait=WAIT_LIMIT * 2)
    agent = await signed_in(gw.client, "101")
    parked = spawn(agent.poll())
    await wait_until(lambda: gw.gateway.sessions["101"].waiter is not None)
    assert (await agent.sign_out())["retcode"] == "0"
    answer = await asyncio.wait_for(parked, 2)
    assert answer["retcode"] == "100-006"


async def test_the_event_queue_keeps_the_newest_max_events_and_counts_drops(make_gateway):
    gw = await make_gateway(max_events=3)
    chair = await signed_in(gw.client, "101")
    await chair.request_conf()  # 2 events
    phones = [phone_entry(f"55500{i}") for i in range(3)]
    assert (await chair.add({"addresses": phones}))["retcode"] == "0"  # 3 more: the 2 oldest go
    events = await chair.events()
    assert [changed(e)["participant"] for e in events] == ["555000", "555001", "555002"]
    assert gw.gateway.dropped_events == 2


async def test_concurrent_polls_of_different_agents_do_not_interfere(make_gateway, spawn):
    gw = await make_gateway(poll_wait=WAIT_LIMIT * 2)
    a, b = await signed_in(gw.client, "101"), await signed_in(gw.client, "102")
    poll_a, poll_b = spawn(a.poll()), spawn(b.poll())
    await wait_until(lambda: all(gw.gateway.sessions[i].waiter is not None for i in ("101", "102")))
    await b.request_conf()
    assert (await asyncio.wait_for(poll_b, 2))["event"]["workNo"] == "102"
    assert not poll_a.done()
    await a.sign_out()
    assert (await asyncio.wait_for(poll_a, 2))["retcode"] == "100-006"


# ================================================================ idle sign-out


async def test_an_agent_that_does_not_poll_for_idle_signout_is_signed_out(gw, clock):
    agent = await signed_in(gw.client, "101")
    clock.advance(IDLE - 1)
    assert gw.gateway.sign_out_idle_agents() == []
    clock.advance(1)
    assert gw.gateway.sign_out_idle_agents() == ["101"]
    assert (await agent.poll())["retcode"] == "100-006"
    assert (await agent.sign_in())["retcode"] == "0"  # and may sign in again


async def test_an_idle_guid_dies_even_before_the_sweeper_runs(gw, clock):
    agent = await signed_in(gw.client, "101")
    clock.advance(IDLE)
    assert (await agent.conf("requestagentconf"))["retcode"] == "100-006"


async def test_polling_keeps_an_agent_signed_in(gw, clock):
    agent = await signed_in(gw.client, "101")
    for _ in range(3):
        clock.advance(IDLE - 1)
        assert (await agent.poll())["retcode"] == "0"
    assert gw.gateway.sign_out_idle_agents() == []


async def test_a_parked_poll_counts_as_polling(make_gateway, clock, spawn):
    gw = await make_gateway(poll_wait=WAIT_LIMIT * 2)
    agent = await signed_in(gw.client, "101")
    parked = spawn(agent.poll())
    await wait_until(lambda: gw.gateway.sessions["101"].waiter is not None)
    clock.advance(IDLE * 10)
    assert gw.gateway.sign_out_idle_agents() == []
    await agent.sign_out()
    await asyncio.wait_for(parked, 2)


async def test_the_background_sweeper_signs_out_idle_agents(make_gateway):
    gw = await make_gateway(idle_signout=0.1, clock=time.monotonic)
    await signed_in(gw.client, "101")
    # No request is made, so only the sweeper can end the session.
    await wait_until(lambda: "101" not in gw.gateway.sessions)


async def test_the_sweeper_task_is_cancelled_when_the_app_stops(make_gateway):
    gw = await make_gateway()

    def sweepers() -> list[asyncio.Task]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "agentgateway-sweeper" and not t.done()]

    assert len(sweepers()) == 1
    await gw.client.close()
    assert sweepers() == []


async def test_an_idle_chairperson_ends_the_conference(gw, clock):
    chair, conf_id = await chair_with_conference(gw.client)
    invited = await signed_in(gw.client, "102")
    assert (await chair.add({"addresses": [agent_entry("102")]}))["retcode"] == "0"
    clock.advance(IDLE / 2)
    assert (await invited.events())[0]["content"]["changeType"] == 0  # 102 polls, 101 does not
    clock.advance(IDLE / 2)
    assert gw.gateway.sign_out_idle_agents() == ["101"]
    content = changed((await invited.events())[0])
    assert (content["changeType"], content["changeReason"], content["confId"]) == (1, 3, conf_id)


# ================================================================ requestagentconf


async def test_request_conference_makes_the_requester_chairperson(gw):
    chair = await signed_in(gw.client, "101")
    answer = await chair.conf("requestagentconf")
    assert answer["retcode"] == "0"
    conf_id = answer["result"]["confId"]
    events = await chair.events()
    assert [(e["eventType"], e["content"]["confId"]) for e in events] == [
        ("AgentConf_SelfJoinResult", conf_id), ("AgentConf_RequestSuccess", conf_id)]


async def test_request_conference_while_in_one_is_refused(gw):
    chair, conf_id = await chair_with_conference(gw.client)
    answer = await chair.conf("requestagentconf")
    assert answer["retcode"] == "101-002"
    assert answer["message"] == f"agent 101 is already in conference {conf_id}"
    assert await chair.events() == []


async def test_request_conference_with_a_malformed_body_is_refused(gw):
    chair = await signed_in(gw.client, "101")
    answer = await chair.conf("requestagentconf", raw=b"{oops")
    assert answer["retcode"] == "000-002"
    assert await chair.events() == []


# ================================================================ batchaddparticipant (seed 003)

SEED_EXAMPLE = {
    "addresses": [{"address": "102", "addressType": "9", "deviceCallType": 1, "deviceType": 66}],
    "beepTone": False,
    "playMode": 2,
    "voicePath": "y:/conf/120/1136287.V3",
    "caller": "1111",
}


async def test_the_seed_example_invites_the_agent_and_tells_both_sides(gw):
    chair, conf_id = await chair_with_conference(gw.client)
    invited = await signed_in(gw.client, "102")
    answer = await chair.add(SEED_EXAMPLE)
    assert answer == {"result": {}, "message": "success", "retcode": "0"}
    expected = {"result": 0, "changeType": 0, "confId": conf_id, "participant": "102", "participantType": 9,
                "deviceCallType": 1, "deviceType": 66}
    assert await invited.events() == [
        {"eventType": "AgentConf_ParticipantChanged", "workNo": "102", "content": expected}]
    assert await chair.events() == [
        {"eventType": "AgentConf_ParticipantChanged", "workNo": "101", "content": expected}]


async def test_the_chairperson_gets_one_event_per_participant_in_order(gw):
    chair, _ = await chair_with_conference(gw.client)
    a, b = await signed_in(gw.client, "102"), await signed_in(gw.client, "103")
    body = {"addresses": [agent_entry("102"), phone_entry("+861234"), agent_entry("103")]}
    assert (await chair.add(body))["retcode"] == "0"
    events = [changed(e) for e in await chair.events()]
    assert [(c["participant"], c["participantType"]) for c in events] == [
        ("102", 9), ("+861234", 6), ("103", 9)]
    assert [changed(e)["participant"] for e in await a.events()] == ["102"]
    assert [changed(e)["participant"] for e in await b.events()] == ["103"]


@pytest.mark.parametrize("entry", [
    agent_entry("102"),
    agent_entry("102", deviceCallType=None, deviceType=None),
])
async def test_device_types_default_to_0_when_missing_or_null(gw, entry):
    chair, _ = await chair_with_conference(gw.client)
    invited = await signed_in(gw.client, "102")
    assert (await chair.add({"addresses": [entry]}))["retcode"] == "0"
    content = changed((await invited.events())[0])
    assert (content["deviceCallType"], content["deviceType"]) == (0, 0)


def test_parse_batch_add_applies_the_documented_defaults():
    parsed = parse_batch_add({"addresses": [phone_entry("555", deviceCallType=None)], "beepTone": None,
                              "playMode": None})
    assert parsed == BatchAdd((Participant("6", "555", 0, 0),), beep_tone=False, play_mode=2, voice_path=None,
                              caller=None)


def test_parse_batch_add_errors_are_gateway_errors_with_000_002():
    with pytest.raises(GatewayError) as caught:
        parse_batch_add({"addresses": [phone_entry("1"), phone_entry("2"), phone_entry("3"), phone_entry("4" * 25)]})
    assert caught.value.retcode == "000-002"
    assert caught.value.message == "addresses[3].address must be at most 24 characters, got 25"


VALID = agent_entry("102")  # addresses[0] of every refused body: it must not be added either


def with_second(entry: Any, **top: Any) -> dict[str, Any]:
    return {"addresses": [VALID, entry], **top}


@pytest.mark.parametrize("body, message", [
    pytest.param({}, "addresses is required", id="addresses-missing"),
    pytest.param({"addresses": None}, "addresses is required", id="addresses-null"),
    pytest.param({"addresses": VALID}, "addresses must be an array, got an object", id="addresses-object"),
    pytest.param({"addresses": []}, "addresses must hold 1 to 120 entries, got 0", id="0-addresses"),
    pytest.param({"addresses": [VALID] + [phone_entry(str(5550000 + i)) for i in range(120)]},
                 "addresses must hold 1 to 120 entries, got 121", id="121-addresses"),
    pytest.param(with_second("102"), "addresses[1] must be an object, got a string", id="entry-not-object"),
    pytest.param(with_second({"address": "555"}), "addresses[1].addressType is required", id="type-missing"),
    pytest.param(with_second(phone_entry("555", addressType="7")),
                 'addresses[1].addressType must be the string "6" (phone number) or "9" (agent ID), got "7"',
                 id="type-7"),
    pytest.param(with_second(phone_entry("555", addressType=6)),
                 'addresses[1].addressType must be the string "6" (phone number) or "9" (agent ID), got 6',
                 id="type-int"),
    pytest.param(with_second({"addressType": "6"}), "addresses[1].address is required", id="address-missing"),
    pytest.param(with_second(phone_entry(None)), "addresses[1].address is required", id="address-null"),
    pytest.param(with_second(phone_entry(5551234)), "addresses[1].address must be a string, got an integer",
                 id="address-int"),
    pytest.param(with_second(phone_entry("")), "addresses[1].address must not be empty", id="address-empty"),
    pytest.param(with_second(phone_entry("5" * 25)), "addresses[1].address must be at most 24 characters",
                 id="address-25"),
    pytest.param(with_second(agent_entry("100")), "addresses[1].address must be an agent ID from 101 to 59999",
                 id="agent-100"),
    pytest.param(with_second(agent_entry("60000")),
                 "addresses[1].address must be an agent ID from 101 to 59999", id="agent-60000"),
    pytest.param(with_second(agent_entry("agent103")),
                 "addresses[1].address must be an agent ID from 101 to 59999", id="agent-not-digits"),
    pytest.param(with_second(phone_entry("555", deviceCallType=256)),
                 "addresses[1].deviceCallType must be from 0 to 255, got 256", id="deviceCallType-256"),
    pytest.param(with_second(phone_entry("555", deviceCallType=-1)),
                 "addresses[1].deviceCallType must be from 0 to 255, got -1", id="deviceCallType--1"),
    pytest.param(with_second(phone_entry("555", deviceCallType="x")),
                 "addresses[1].deviceCallType must be an integer, got a string", id="deviceCallType-x"),
    pytest.param(with_second(phone_entry("555", deviceCallType=1.5)),
                 "addresses[1].deviceCallType must be an integer, got a number", id="deviceCallType-float"),
    pytest.param(with_second(phone_entry("555", deviceCallType=True)),
                 "addresses[1].deviceCallType must be an integer, got a boolean", id="deviceCallType-bool"),
    pytest.param(with_second(phone_entry("555", deviceType=256)),
                 "addresses[1].deviceType must be from 0 to 255, got 256", id="deviceType-256"),
    pytest.param(with_second(phone_entry("555", deviceType=-1)),
                 "addresses[1].deviceType must be from 0 to 255, got -1", id="deviceType--1"),
    pytest.param(with_second(phone_entry("555", deviceType="66")),
                 "addresses[1].deviceType must be an integer, got a string", id="deviceType-string"),
    pytest.param(with_second(agent_entry("102")), "addresses[1] repeats addresses[0] (9:102)", id="repeated"),
    pytest.param({"addresses": [VALID], "beepTone": "true"}, "beepTone must be a boolean, got a string",
                 id="beepTone-string"),
    pytest.param({"addresses": [VALID], "beepTone": True},
                 "voicePath is required when beepTone is true", id="beepTone-without-voicePath"),
    pytest.param({"addresses": [VALID], "beepTone": True, "voicePath": ""},
                 "voicePath is required when beepTone is true", id="beepTone-empty-voicePath"),
    pytest.param({"addresses": [VALID], "beepTone": True, "voicePath": "y:/conf/1/a.V3", "playMode": 1},
                 "playMode must be 2 when beepTone is true, got 1", id="beepTone-playMode-1"),
    pytest.param({"addresses": [VALID], "playMode": "2"}, "playMode must be an integer, got a string",
                 id="playMode-string"),
    pytest.param({"addresses": [VALID], "voicePath": "v" * 128}, "voicePath must be at most 127 characters",
                 id="voicePath-128"),
    pytest.param({"addresses": [VALID], "voicePath": 7}, "voicePath must be a string, got an integer",
                 id="voicePath-int"),
    pytest.param({"addresses": [VALID], "caller": "1" * 25}, "caller must be at most 24 characters",
                 id="caller-25"),
    pytest.param({"addresses": [VALID], "caller": 1111}, "caller must be a string, got an integer",
                 id="caller-int"),
])
async def test_every_seed_003_rule_is_enforced_and_a_refusal_changes_nothing(gw, body, message):
    chair, _ = await chair_with_conference(gw.client)
    invited = await signed_in(gw.client, "102")
    answer = await chair.add(body)
    assert answer["retcode"] == "000-002", answer
    assert message in answer["message"]
    # Nothing changed: nobody was told anything and 102 can still be invited.
    assert await invited.events() == []
    assert await chair.events() == []
    assert (await chair.add({"addresses": [VALID]}))["retcode"] == "0"


@pytest.mark.parametrize("body", [
    pytest.param({"addresses": [phone_entry(str(5550000 + i)) for i in range(120)]}, id="120-addresses"),
    pytest.param({"addresses": [phone_entry("5" * 24)]}, id="address-24"),
    pytest.param({"addresses": [agent_entry("59999"), agent_entry("103")]},
                 id="agent-ids-in-range"),
    pytest.param({"addresses": [phone_entry("1", deviceCallType=0, deviceType=255)]}, id="device-bounds"),
    pytest.param({"addresses": [phone_entry("1", deviceCallType=255, deviceType=0)]}, id="device-bounds-2"),
    pytest.param({"addresses": [phone_entry("1")], "beepTone": True, "voicePath": "v" * 127},
                 id="beepTone-voicePath-127-default-playMode"),
    pytest.param({"addresses": [phone_entry("1")], "beepTone": True, "voicePath": "y:/c", "playMode": 2},
                 id="beepTone-playMode-2"),
    pytest.param({"addresses": [phone_entry("1")], "beepTone": False, "playMode": 7}, id="playMode-ignored"),
    pytest.param({"addresses": [phone_entry("1")], "caller": "1" * 24}, id="caller-24"),
    pytest.param({"addresses": [phone_entry("1")], "beepTone": None, "playMode": None, "voicePath": None,
                  "caller": None}, id="optional-nulls"),
    pytest.param({"addresses": [phone_entry("1"), agent_entry("104")]},
                 id="phone-and-agent"),
])
async def test_values_at_the_documented_limits_are_accepted(gw, body):
    chair, _ = await chair_with_conference(gw.client)
    answer = await chair.add(body)
    assert answer == {"result": {}, "message": "success", "retcode": "0"}
    assert len(await chair.events()) == len(body["addresses"])


@pytest.mark.parametrize("raw, message", [
    (b"", "the request body is empty"),
    (b'{"addresses": [', "the request body is not valid JSON"),
    (b"[]", "the request body must be a JSON object, got an array"),
    (b"42", "the request body must be a JSON object, got an integer"),
])
async def test_a_malformed_batch_add_body_is_refused(gw, raw, message):
    chair, _ = await chair_with_conference(gw.client)
    answer = await chair.add(raw=raw)
    assert answer["retcode"] == "000-002"
    assert message in answer["message"]


async def test_batch_add_by_an_agent_without_a_conference_is_refused(gw):
    agent = await signed_in(gw.client, "102")
    answer = await agent.add({"addresses": [agent_entry("103")]})
    assert answer["retcode"] == "101-001"
    assert answer["message"] == "agent 102 is not the chairperson of an active conference"


async def test_batch_add_by_an_invited_participant_is_refused(gw):
    chair, _ = await chair_with_conference(gw.client)
    invited = await signed_in(gw.client, "102")
    await signed_in(gw.client, "103")
    assert (await chair.add({"addresses": [agent_entry("102")]}))["retcode"] == "0"
    await invited.events()
    await chair.events()
    answer = await invited.add({"addresses": [agent_entry("103")]})
    assert answer["retcode"] == "101-001"
    assert await chair.events() == []


async def test_batch_add_by_an_agent_not_signed_in_is_refused(gw):
    chair, _ = await chair_with_conference(gw.client)
    guid = chair.guid
    assert (await chair.sign_out())["retcode"] == "0"
    answer = await Agent(gw.client, "101", guid=guid).add({"addresses": [agent_entry("102")]})
    assert answer["retcode"] == "100-006"
    assert answer["message"] == "agent 101 is not signed in"


async def test_inviting_someone_already_in_the_conference_is_refused_whole(gw):
    chair, conf_id = await chair_with_conference(gw.client)
    assert (await chair.add({"addresses": [phone_entry("555")]}))["retcode"] == "0"
    await chair.events()
    answer = await chair.add({"addresses": [phone_entry("556"), phone_entry("555")]})
    assert answer["retcode"] == "101-002"
    assert answer["message"] == f"addresses[1] (6:555) is already in conference {conf_id}"
    assert await chair.events() == []  # 556 was not added either
    assert (await chair.add({"addresses": [phone_entry("556")]}))["retcode"] == "0"


async def test_the_chairperson_cannot_invite_itself(gw):
    chair, conf_id = await chair_with_conference(gw.client)
    answer = await chair.add({"addresses": [agent_entry("101")]})
    assert answer["retcode"] == "101-002"
    assert answer["message"] == f"addresses[0] (9:101) is already in conference {conf_id}"


async def test_an_agent_in_another_conference_cannot_be_invited(gw):
    first, _ = await chair_with_conference(gw.client, "101")
    _, second_conf = await chair_with_conference(gw.client, "102")
    answer = await first.add({"addresses": [agent_entry("102")]})
    assert answer["retcode"] == "101-002"
    assert answer["message"] == f"addresses[0] (9:102) is already in conference {second_conf}"


async def test_an_agent_not_signed_in_can_be_invited_but_gets_no_event(gw):
    chair, _ = await chair_with_conference(gw.client)
    assert (await chair.add({"addresses": [agent_entry("104")]}))["retcode"] == "0"
    assert [changed(e)["participant"] for e in await chair.events()] == ["104"]
    late = await signed_in(gw.client, "104")
    assert await late.events() == []


async def test_a_conference_holds_at_most_120_participants(gw):
    chair, conf_id = await chair_with_conference(gw.client)
    full = {"addresses": [phone_entry(str(5550000 + i)) for i in range(120)]}
    assert (await chair.add(full))["retcode"] == "0"
    answer = await chair.add({"addresses": [phone_entry("1")]})
    assert answer["retcode"] == "101-002"
    assert answer["message"] == f"conference {conf_id} would exceed 120 participants"


# ================================================================ batchremoveparticipant


async def test_batch_remove_tells_the_removed_agent_and_the_chairperson(gw):
    chair, conf_id = await chair_with_conference(gw.client)
    invited = await signed_in(gw.client, "102")
    await chair.add({"addresses": [agent_entry("102", deviceType=3), phone_entry("555")]})
    await chair.events()
    await invited.events()
    answer = await chair.remove({"addresses": [{"addressType": "9", "address": "102"}]})
    assert answer == {"result": {}, "message": "success", "retcode": "0"}
    content = changed((await invited.events())[0])
    assert content == {"result": 0, "changeType": 1, "changeReason": 1, "confId": conf_id, "participant": "102",
                       "participantType": 9, "deviceCallType": 0, "deviceType": 3}
    assert [changed(e) for e in await chair.events()] == [content]
    # 102 is out and 555 is still in.
    assert (await chair.add({"addresses": [agent_entry("102")]}))["retcode"] == "0"
    assert (await chair.add({"addresses": [phone_entry("555")]}))["retcode"] == "101-002"


async def test_removing_someone_not_in_the_conference_is_refused_whole(gw):
    chair, conf_id = await chair_with_conference(gw.client)
    invited = await signed_in(gw.client, "102")
    await chair.add({"addresses": [agent_entry("102")]})
    await chair.events()
    await invited.events()
    answer = await chair.remove({"addresses": [agent_entry("102"), agent_entry("103")]})
    assert answer["retcode"] == "101-002"
    assert answer["message"] == f"addresses[1] (9:103) is not a participant of conference {conf_id}"
    assert await invited.events() == []
    assert (await chair.add({"addresses": [agent_entry("102")]}))["retcode"] == "101-002"  # still in


@pytest.mark.parametrize("body, message", [
    ({}, "addresses is required"),
    ({"addresses": []}, "addresses must hold 1 to 30 entries, got 0"),
    ({"addresses": [phone_entry(str(i)) for i in range(31)]}, "addresses must hold 1 to 30 entries, got 31"),
    ({"addresses": [agent_entry("102"), {"addressType": "7", "address": "1"}]},
     'addresses[1].addressType must be the string "6" (phone number) or "9" (agent ID)'),
    ({"addresses": [agent_entry("102"), phone_entry("5" * 25)]}, "addresses[1].address must be at most 24"),
    ({"addresses": [agent_entry("102"), agent_entry("99")]}, "addresses[1].address must be an agent ID"),
    ({"addresses": [agent_entry("102"), agent_entry("102")]}, "addresses[1] repeats addresses[0] (9:102)"),
])
async def test_invalid_batch_remove_is_refused_and_removes_nobody(gw, body, message):
    chair, _ = await chair_with_conference(gw.client)
    invited = await signed_in(gw.client, "102")
    await chair.add({"addresses": [agent_entry("102")]})
    await chair.events()
    await invited.events()
    answer = await chair.remove(body)
    assert answer["retcode"] == "000-002"
    assert message in answer["message"]
    assert await invited.events() == []


async def test_thirty_addresses_may_be_removed_at_once(gw):
    chair, _ = await chair_with_conference(gw.client)
    phones = [phone_entry(str(5550000 + i)) for i in range(30)]
    await chair.add({"addresses": phones})
    await chair.events()
    assert (await chair.remove({"addresses": phones}))["retcode"] == "0"
    events = [changed(e) for e in await chair.events()]
    assert len(events) == 30 and all(c["changeReason"] == 1 for c in events)


async def test_batch_remove_by_a_non_chairperson_is_refused(gw):
    agent = await signed_in(gw.client, "102")
    answer = await agent.remove({"addresses": [phone_entry("555")]})
    assert answer["retcode"] == "101-001"


# ================================================================ sign-out inside a conference


async def test_a_chairperson_signing_out_ends_the_conference(gw):
    chair, conf_id = await chair_with_conference(gw.client)
    invited = await signed_in(gw.client, "102")
    await chair.add({"addresses": [agent_entry("102")]})
    await invited.events()
    await chair.sign_out()
    content = changed((await invited.events())[0])
    assert (content["changeType"], content["changeReason"], content["confId"]) == (1, 3, conf_id)
    assert (await invited.conf("requestagentconf"))["retcode"] == "0"  # free for a new conference


async def test_a_participant_signing_out_leaves_the_conference(gw):
    chair, _ = await chair_with_conference(gw.client)
    invited = await signed_in(gw.client, "102")
    await chair.add({"addresses": [agent_entry("102")]})
    await chair.events()
    await invited.sign_out()
    content = changed((await chair.events())[0])
    assert (content["changeType"], content["changeReason"], content["participant"]) == (1, 4, "102")


# ================================================================ robustness


async def test_an_unexpected_error_answers_100_007_without_a_traceback(gw, monkeypatch):
    chair, _ = await chair_with_conference(gw.client)

    def broken(_agent_id: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(gw.gateway, "_chaired", broken)
    answer = await chair.add({"addresses": [phone_entry("1")]})
    assert answer["retcode"] == "100-007"
    assert "boom" not in answer["message"] and "Traceback" not in answer["message"]


def test_add_routes_refuses_a_second_app(users):
    gateway = AgentGateway(users)
    gateway.add_routes(web.Application())
    with pytest.raises(RuntimeError):
        gateway.add_routes(web.Application())


@pytest.mark.parametrize("options", [{"poll_wait": -1}, {"idle_signout": 0}, {"max_events": 0}])
def test_nonsense_limits_are_refused(users, options):
    with pytest.raises(ValueError):
        AgentGateway(users, **options)


class FlakyStore(StateStore):
    """A store that refuses every write while `down` (a cluster's Redis gone)."""

    down = False

    async def apply(self, changes):
        if self.down:
            raise StoreUnavailable("contact-center state store (Redis) unavailable: connection refused")
        await super().apply(changes)


async def test_a_state_store_that_is_unavailable_is_a_retry_later_not_a_traceback(make_gateway, caplog):
    """A cluster's Redis down (or the lead lost) while writing a conference: 100-007 saying to retry,
    and one warning line in the log, not the traceback of an unexpected error."""
    store = FlakyStore(":memory:")
    gw = await make_gateway(store=store)
    chair = await signed_in(gw.client, "101")
    store.down = True
    with caplog.at_level(logging.WARNING, logger="channels.agentgateway"):
        answer = await chair.conf("requestagentconf")
    assert answer == {"retcode": "100-007", "result": {}, "message": "agent gateway state unavailable, retry "
                      "later (contact-center state store (Redis) unavailable: connection refused)"}
    [record] = [r for r in caplog.records if r.name == "channels.agentgateway"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "state store unavailable" in record.getMessage()


async def test_sign_ins_and_unpolled_events_survive_a_restart_on_the_same_store(make_gateway, tmp_path, clock):
    """A restart (or a cluster's leader failover): the desktop polls on with its Guid and gets, once each,
    the events queued before; the store holds neither the Guid nor the password."""
    path = tmp_path / "state.db"
    first = await make_gateway(store=StateStore(path))
    chair = await signed_in(first.client, "101")
    member = await signed_in(first.client, "102")
    conf_id = await chair.request_conf()
    assert (await chair.poll())["event"]["eventType"] == "AgentConf_SelfJoinResult"  # taken before the restart
    assert (await chair.add({"addresses": [agent_entry("102")]}))["retcode"] == "0"
    stored = str(StateStore(path).load("gateway-session"))
    assert chair.guid not in stored and member.guid not in stored and PASSWORDS["101"] not in stored

    clock.now += IDLE - 1  # nearly idle before the restart: the idle time counts from the restart
    second = await make_gateway(store=StateStore(path))
    chair, member = Agent(second.client, "101", chair.guid), Agent(second.client, "102", member.guid)
    clock.now += 2
    assert [(e["eventType"], e["content"]["confId"]) for e in await chair.events()] == [
        ("AgentConf_RequestSuccess", conf_id), ("AgentConf_ParticipantChanged", conf_id)]
    assert [e["eventType"] for e in await member.events()] == ["AgentConf_ParticipantChanged"]
    assert (await Agent(second.client, "101", member.guid).poll())["retcode"] == "000-003"  # still its own Guid
    assert (await chair.sign_in())["retcode"] == "100-002"  # still signed in
    assert (await member.sign_out())["retcode"] == "0"

    third = await make_gateway(store=StateStore(path))
    later = await Agent(third.client, "101", chair.guid).events()  # only what came after: nothing twice
    assert [(e["eventType"], e["content"]["participant"], e["content"]["changeType"]) for e in later] == [
        ("AgentConf_ParticipantChanged", "102", CHANGE_LEAVE)]
    assert (await Agent(third.client, "102", member.guid).poll())["retcode"] == "100-006"  # signed out


async def test_an_event_whose_taking_cannot_be_saved_stays_queued(make_gateway):
    store = FlakyStore(":memory:")
    gw = await make_gateway(store=store)
    chair = await signed_in(gw.client, "101")
    await chair.request_conf()
    store.down = True
    assert (await chair.poll())["retcode"] == "100-007"  # not handed out: it would come back after a restart
    store.down = False
    assert [e["eventType"] for e in await chair.events()] == ["AgentConf_SelfJoinResult", "AgentConf_RequestSuccess"]


async def test_a_sign_in_the_store_cannot_keep_is_not_made(make_gateway):
    store = FlakyStore(":memory:")
    gw = await make_gateway(store=store)
    store.down = True
    assert (await Agent(gw.client, "101").sign_in())["retcode"] == "100-007"
    store.down = False
    assert (await signed_in(gw.client, "101")).guid  # not "already signed in" with a Guid nobody received
