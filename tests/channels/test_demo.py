"""`--demo`: demo users and simulated customers on the real product app (create_app + install_contact_center),
seen by an agent desktop that logs in with Basic and listens over CometD with the login cookie."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from desktop_helpers import BrowserSession

from channels.app import ContactCenterConfig, install_contact_center
from channels.demo import DEMO, MAX_ACTIVE, NICKNAMES, SCRIPTS, CustomerSimulator, install_demo
from channels.errors import InvalidState
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER

INTERVAL = 0.05
WAIT = 5.0  # seconds: the bound for anything the simulator does within a few intervals
TOPICS = ("/v2/me/smssessions", "/v2/me/chats", "/v2/me/channels")
COLLECTION = {"/v2/me/smssessions": ("smssessions", "smssession"), "/v2/me/chats": ("chats", "chat")}


class Desktop(BrowserSession):
    """One browser (as in test_agent_api), logged in with Basic, collecting its events."""

    def __init__(self, client: Any, user: str, password: str) -> None:
        super().__init__(client)
        self.user = user
        self.password = password
        self.pending: list[tuple[str, dict[str, Any]]] = []

    async def login(self) -> None:
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        async with self.http.get(self.url("/api/v2/me"), headers={"Authorization": "Basic " + token}) as response:
            assert response.status == 200, await response.text()

    async def rest(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with self.http.request(method, self.url(path), json=body) as response:
            return await response.json()

    async def start_ready(self, *channels: str) -> None:
        reply = await self.rest("POST", "/api/v2/me", {"operationName": "StartContactCenterSession",
                                                        "channels": list(channels)})
        assert reply == {"statusCode": 0}, reply
        for channel in channels:
            reply = await self.rest("POST", f"/api/v2/me/channels/{channel}", {"operationName": "Ready"})
            assert reply == {"statusCode": 0}, reply

    async def _poll(self) -> None:
        async with asyncio.timeout(WAIT):
            replies = await self.bayeux([{"channel": "/meta/connect", "clientId": self.client_id,
                                          "connectionType": "long-polling", "advice": {"timeout": 100}}])
        self.pending += [(m["channel"], m["data"]) for m in replies if not m["channel"].startswith("/meta/")]

    async def wait_for(self, matches: Callable[[str, dict[str, Any]], bool]) -> tuple[str, dict[str, Any]]:
        """The first event (channel, data) that `matches`; the events before it are dropped."""
        deadline = time.monotonic() + WAIT
        while True:
            for i, (channel, data) in enumerate(self.pending):
                if matches(channel, data):
                    self.pending = self.pending[i + 1:]
                    return channel, data
            self.pending.clear()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user}: no matching event within {WAIT} s")
            await self._poll()

    async def next_of(self, interaction_id: str, count: int) -> list[dict[str, Any]]:
        """The next `count` events about one interaction, in order (others are skipped)."""
        return [(await self.wait_for(lambda _, data: about(data, interaction_id)))[1] for _ in range(count)]


def about(data: dict[str, Any], interaction_id: str) -> bool:
    resource = data.get("smssession") or data.get("chat") or {}
    uri = data.get("smssessionUri") or data.get("chatUri") or ""
    return resource.get("id") == interaction_id or uri.endswith("/" + interaction_id)


def is_offer(channel: str, data: dict[str, Any]) -> bool:
    if channel not in COLLECTION or data.get("notificationType") != "StatusChange":
        return False
    return data[COLLECTION[channel][1]]["state"] == "Invited"


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def demo(aiohttp_client):
    app = create_app(BrokerConfig())
    center = install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=False, offer_timeout=30.0))
    credentials = install_demo(app, center, interval=INTERVAL, seed=1)
    client = await aiohttp_client(app)
    desktops: list[Desktop] = []

    def desktop(user: str) -> Desktop:
        opened = Desktop(client, user, dict(credentials)[user])
        desktops.append(opened)
        return opened

    yield client, center, app[DEMO], credentials, desktop
    for opened in desktops:
        await opened.close()


async def accept_an_offer(desk: Desktop) -> tuple[str, str, list[dict[str, Any]], dict[str, Any]]:
    """Ready on sms and chat, take the first offer: (topic, id, the three Accept events, the Accept reply)."""
    await desk.login()
    await desk.listen(*TOPICS)
    await desk.start_ready("sms", "chat")
    topic, offer = await desk.wait_for(is_offer)
    collection, key = COLLECTION[topic]
    interaction_id = offer[key]["id"]
    assert offer[key]["capabilities"] == ["Accept", "Reject"]
    reply = await desk.rest("POST", f"/api/v2/me/{collection}/{interaction_id}",
                            {"operationName": "Accept", "nickname": "Ada"})
    assert reply["statusCode"] == 0, reply
    return topic, interaction_id, await desk.next_of(interaction_id, 3), reply


def test_install_demo_adds_named_users_with_generated_passwords() -> None:
    app = create_app(BrokerConfig())
    center = install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=False))
    credentials = install_demo(app, center, interval=INTERVAL, seed=1)
    assert [user for user, _ in credentials] == ["agent1", "agent2", "agent3", "supervisor"]
    assert len({password for _, password in credentials}) == 4
    assert all(len(password) >= 16 for _, password in credentials)
    agents = [center.users.get(f"agent{n}") for n in (1, 2, 3)]
    assert [(a.first_name, a.last_name, a.agent_id, sorted(a.roles)) for a in agents] == [
        ("Ada", "Agent", "101", ["agent"]), ("Ben", "Agent", "102", ["agent"]), ("Cleo", "Agent", "103", ["agent"])]
    assert "supervisor" in center.users.get("supervisor").roles
    user, password = credentials[0]
    assert center.users.authenticate(user, password) is not None  # stored hashed, and that is the password


def test_existing_users_keep_their_accounts(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(BrokerConfig())
    center = install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=False))
    center.users.add("agent2", "mine")
    with caplog.at_level(logging.WARNING, "channels.demo"):
        credentials = install_demo(app, center)
    assert [user for user, _ in credentials] == ["agent1", "agent3", "supervisor"]
    assert center.users.authenticate("agent2", "mine") is not None
    assert "agent2 not added" in caplog.text


def test_the_seed_decides_the_customers() -> None:
    app = create_app(BrokerConfig())
    center = install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=False))

    def arrivals(seed: int) -> list[tuple[str, str, str]]:
        simulator = CustomerSimulator(center.conversations, seed=seed)
        return [(a.media.name, a.nickname, a.script.opening) for a in
                (simulator.plan_arrival() for _ in range(8))]

    assert arrivals(1) == arrivals(1)
    assert arrivals(1) != arrivals(2)
    assert {nickname for _, nickname, _ in arrivals(1)} <= set(NICKNAMES)
    assert {media for media, _, _ in arrivals(1) + arrivals(2)} == {"sms", "chat"}


async def test_customers_arrive_and_stay_bounded_without_agents(demo) -> None:
    _, center, simulator, _, _ = demo
    expected = CustomerSimulator(center.conversations, seed=1)
    await until(lambda: simulator.arrivals == MAX_ACTIVE)
    await asyncio.sleep(6 * INTERVAL)  # several more intervals: nobody answers, so nobody new comes
    assert simulator.arrivals == MAX_ACTIVE and len(simulator.customers) == MAX_ACTIVE
    first = next(iter(simulator.customers.values()))
    plan = expected.plan_arrival()
    assert (first.media, first.nickname, first.script) == (plan.media, plan.nickname, plan.script)
    transcript = center.conversations.transcript(first.media, first.interaction_id)
    assert [(m["type"], m["from"]["nickname"], m.get("text")) for m in transcript] == [
        ("ParticipantJoined", first.nickname, None), ("Text", first.nickname, plan.script.opening)]


async def test_offer_accept_reply_and_clean_shutdown(demo) -> None:
    client, _, simulator, _, desktop = demo
    desk = desktop("agent1")
    topic, interaction_id, accepted, reply = await accept_an_offer(desk)
    customer = simulator.customers[interaction_id]
    _, key = COLLECTION[topic]

    # Seed 001: StatusChange (no participants yet), ParticipantsUpdated, the log up to the agent joining.
    status, participants, history = accepted
    assert (status["notificationType"], status["referenceId"]) == ("StatusChange", reply["referenceId"])
    assert status[key]["state"] == "Chatting" and status[key]["participants"] == []
    assert participants["notificationType"] == "ParticipantsUpdated"
    assert [(p["type"], p["nickname"]) for p in participants[key]["participants"]] == [
        ("Agent", "Ada"), ("Customer", customer.nickname)]
    assert history["notificationType"] == "NewMessages"
    assert [(m["index"], m["type"], m["from"]["type"], m.get("text")) for m in history["messages"]] == [
        (1, "ParticipantJoined", "Customer", None), (2, "Text", "Customer", customer.script.opening),
        (3, "ParticipantJoined", "Agent", None)]
    assert customer.script in SCRIPTS

    # The customer types and answers a moment after the agent writes.
    collection, _ = COLLECTION[topic]
    sent = await desk.rest("POST", f"/api/v2/me/{collection}/{interaction_id}",
                           {"operationName": "SendMessage", "text": "Hello, how can I help?"})
    assert sent["statusCode"] == 0, sent
    (mine,) = (await desk.next_of(interaction_id, 1))[0]["messages"]
    assert (mine["from"]["type"], mine["text"]) == ("Agent", "Hello, how can I help?")
    typing, answer = await desk.next_of(interaction_id, 2)
    assert [(m["type"], m["from"]["type"]) for m in typing["messages"]] == [("TypingStarted", "Customer")]
    (text,) = answer["messages"]
    assert answer["notificationType"] == "NewMessages"
    assert (text["type"], text["from"]["type"], text["text"]) == ("Text", "Customer", customer.script.replies[0])
    assert text["index"] == mine["index"] + 2

    # Shutdown cancels the simulator and leaves nothing running (the chat offer's timer included).
    await desk.close()
    await client.close()
    assert not simulator.running
    leftover = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(("demo-", "offer-timeout-"))]
    assert leftover == []


async def test_customer_says_goodbye_and_leaves_after_the_script(demo) -> None:
    _, _, simulator, _, desktop = demo
    desk = desktop("agent2")
    topic, interaction_id, _, _ = await accept_an_offer(desk)
    collection, key = COLLECTION[topic]
    script = simulator.customers[interaction_id].script
    heard = []
    for n in range(len(script.replies) + 1):
        sent = await desk.rest("POST", f"/api/v2/me/{collection}/{interaction_id}",
                               {"operationName": "SendMessage", "text": f"Answer {n}"})
        assert sent["statusCode"] == 0, sent
        _, data = await desk.wait_for(lambda _, d: about(d, interaction_id) and any(
            m["type"] == "Text" and m["from"]["type"] == "Customer" for m in d.get("messages", ())))
        heard.append(data["messages"][0]["text"])
    assert heard == [*script.replies, script.farewell]

    _, left = await desk.wait_for(lambda _, d: about(d, interaction_id) and any(
        m["type"] == "ParticipantLeft" for m in d.get("messages", ())))
    assert left["messages"][0]["from"]["type"] == "Customer"
    _, status = await desk.wait_for(lambda _, d: about(d, interaction_id) and d["notificationType"] == "StatusChange")
    assert status[key]["state"] == "LeftChat" and "Complete" in status[key]["capabilities"]
    await until(lambda: interaction_id not in simulator.customers)
    reply = await desk.rest("POST", f"/api/v2/me/{collection}/{interaction_id}", {"operationName": "Complete"})
    assert reply["statusCode"] == 0, reply


async def test_agent_completing_ends_the_customer_quietly(demo, caplog) -> None:
    _, _, simulator, _, desktop = demo
    desk = desktop("agent3")
    topic, interaction_id, _, _ = await accept_an_offer(desk)
    collection, _ = COLLECTION[topic]
    with caplog.at_level(logging.INFO, "channels.demo"):
        # A message right before Complete: the customer's answer, if it was planned, meets an ended chat.
        await desk.rest("POST", f"/api/v2/me/{collection}/{interaction_id}",
                        {"operationName": "SendMessage", "text": "Bye"})
        reply = await desk.rest("POST", f"/api/v2/me/{collection}/{interaction_id}", {"operationName": "Complete"})
        assert reply["statusCode"] == 0, reply
        await until(lambda: interaction_id not in simulator.customers)
        await asyncio.sleep(4 * INTERVAL)
    assert simulator.running
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_domain_errors_are_logged_and_the_simulation_goes_on(demo, monkeypatch, caplog) -> None:
    _, center, simulator, _, _ = demo
    await until(lambda: simulator.arrivals >= 1)
    customer = next(iter(simulator.customers.values()))

    async def refuse(*_: Any, **__: Any) -> None:
        raise InvalidState("has ended")

    with caplog.at_level(logging.INFO, "channels.demo"):
        monkeypatch.setattr(center.conversations, "create_inbound", refuse)
        monkeypatch.setattr(center.conversations, "customer_left", refuse)
        customer.action, customer.due = "leave", 0.0
        await until(lambda: customer.interaction_id not in simulator.customers)
        await until(lambda: "no new" in caplog.text)
        assert simulator.running
        monkeypatch.undo()
        before = simulator.arrivals
        await until(lambda: simulator.arrivals > before)
    assert f"customer {customer.nickname} ({customer.interaction_id}) stops: has ended" in caplog.text
    assert "Traceback" not in caplog.text
