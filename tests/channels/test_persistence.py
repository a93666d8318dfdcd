"""Contact-center state survives a restart: serialization round trips, the engine reloaded from its
StateStore, and end to end with real broker subprocesses killed with SIGKILL."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from bayeux_helpers import connect, events_in, hold_loop_until, open_session
from conftest import RunningBroker, start_broker
from gws_stack import served_center

from channels.auth import User, UserDirectory, hash_password
from channels.conversation import Conversations, ReferenceIds
from channels.errors import ContactCenterError
from channels.gws.envelope import GwsError, Status
from channels.huawei.agentgateway import AgentGateway, Conference
from channels.huawei.agentgateway import Participant as ConfParticipant
from channels.model import (
    CHAT,
    SMS,
    Interaction,
    Leg,
    LegState,
    MessageType,
    Participant,
    Role,
    Visibility,
)
from channels.routing import OfferRequest, Routing
from channels.store import StateStore
from channels.workbins import Workbin, Workbins

BASE_URL = "http://localhost:8080"
WAIT = 5.0  # seconds: the bound of every wait in this file
USERS = UserDirectory(User(name, hash_password(f"{name}-pw", iterations=1), first_name=name.capitalize())
                      for name in ("alice", "bob", "carol"))


def json_round_trip(doc: dict[str, Any]) -> dict[str, Any]:
    """What the store gives back: the document through JSON."""
    return orjson.loads(orjson.dumps(doc))


# ================================================================ serialization


def sample_interaction() -> Interaction:
    customer = Participant("PersonP", "Customer", "C1")
    ix = Interaction("0000ABCDEF012345", SMS, customer, "sales", "contact-7", 1_700_000_000_123)
    alice = Participant("Alice A", "Agent", "A1")
    ix.legs["alice"] = Leg("alice", LegState.CHATTING, Role.OWNER, alice)
    ix.legs["bob"] = Leg("bob", LegState.INVITED, Role.CONSULT)
    ix.legs["carol"] = Leg("carol", LegState.REVOKED, Role.CONFERENCE)
    ix.append(MessageType.PARTICIPANT_JOINED, customer, Visibility.ALL, 1_700_000_000_123)
    ix.append(MessageType.TEXT, customer, Visibility.ALL, 1_700_000_000_200, text="Hello World")
    ix.append(MessageType.TEXT, alice, Visibility.AGENTS, 1_700_000_000_300, text="psst")
    ix.append(MessageType.CUSTOM_NOTICE, alice, Visibility.ALL, 1_700_000_000_400, text="notice")
    ix.append(MessageType.PUSH_URL, alice, Visibility.ALL, 1_700_000_000_500, url="https://example.com/x")
    ix.user_data = {"DispositionCode": "sold", "nested": {"list": [1, 2.5, None, True]}}
    ix.customer_present = False
    ix.ended = True
    return ix


def test_interaction_round_trip() -> None:
    ix = sample_interaction()
    again = Interaction.from_document(json_round_trip(ix.to_document()))
    assert again == ix
    assert list(again.legs) == ["alice", "bob", "carol"]  # join order is kept
    for leg in ix.legs.values():
        assert again.view(again.legs[leg.user_id], BASE_URL) == ix.view(leg, BASE_URL)
    assert again.transcript() == ix.transcript() and again.messages_for_agents() == ix.messages_for_agents()
    # The log goes on from where it was.
    assert again.append(MessageType.TEXT, ix.customer, Visibility.ALL, 1, text="more").index == 6


def test_the_stored_log_is_each_message_encoded_once_and_reads_back_the_same() -> None:
    # The repository stores an interaction again on every change; its log goes as each message's JSON,
    # made once, and must be byte for byte what encoding the documents would give.
    ix = sample_interaction()
    assert orjson.dumps(ix.to_document(encoded_log=True)) == orjson.dumps(ix.to_document())
    first = ix.log[0].encoded
    ix.append(MessageType.TEXT, ix.customer, Visibility.ALL, 7, text="later")
    assert ix.log[0].encoded is first  # not encoded again
    stored = orjson.loads(orjson.dumps(ix.to_document(encoded_log=True)))
    assert Interaction.from_document(stored) == ix


def test_a_fresh_chat_round_trips() -> None:
    ix = Interaction("0000000000000001", CHAT, Participant("P", "Customer", "C"), "default", "P", 5)
    assert Interaction.from_document(json_round_trip(ix.to_document())) == ix


def test_a_log_with_a_gap_is_refused() -> None:
    doc = sample_interaction().to_document()
    del doc["log"][1]
    with pytest.raises(ValueError, match="indices"):
        Interaction.from_document(doc)


def test_documents_do_not_share_state_with_the_interaction() -> None:
    ix = sample_interaction()
    doc = ix.to_document()
    doc["userData"]["DispositionCode"] = "changed"
    assert ix.user_data["DispositionCode"] == "sold"


def test_routing_workbin_and_conference_round_trips() -> None:
    request = OfferRequest("0000A", "chat", Role.CONFERENCE, queue="sales", reference_id=9, requester="alice",
                           preferred="bob", declined={"carol", "bob"}, seq=4)
    again = OfferRequest.from_document(json_round_trip(request.to_document()))
    assert vars(again) == vars(request)
    workbin = Workbin("alice-drafts", "Drafts", "Drafts", "alice", ["0000A", "0000B"], subscribed=False)
    assert Workbin.from_document(json_round_trip(workbin.to_document())) == workbin
    conference = Conference(3, "101", {p.key: p for p in (ConfParticipant("9", "102"),
                                                           ConfParticipant("6", "5551234", 2, 7))})
    again_conf = Conference.from_document(json_round_trip(conference.to_document()))
    assert (again_conf.conf_id, again_conf.chair) == (3, "101")
    assert list(again_conf.participants.items()) == list(conference.participants.items())


# ================================================================ the engine reloaded


@dataclass
class Engine:
    store: StateStore
    routing: Routing
    conversations: Conversations
    workbins: Workbins
    published: list[tuple[str, str, dict[str, Any]]]

    def events(self, user: str, topic: str) -> list[dict[str, Any]]:
        return [data for who, where, data in self.published if who == user and where == topic]

    async def stop(self) -> None:
        # Like a crash as far as the store is concerned: nothing is written on the way down.
        await self.routing.close()
        await self.store.close()


def make_engine(path: Path, clock: Callable[[], int], store_type: type[StateStore] = StateStore) -> Engine:
    published: list[tuple[str, str, dict[str, Any]]] = []

    async def publish(user_id: str, topic: str, data: dict[str, Any]) -> None:
        published.append((user_id, topic, data))

    store = store_type(path)
    routing = Routing(publish, queues=("default", "sales"), offer_timeout=30.0)
    refs = ReferenceIds()
    conversations = Conversations(publish, routing, USERS, base_url=BASE_URL, reference_ids=refs,
                                  clock_ms=clock, store=store)
    return Engine(store, routing, conversations, Workbins(conversations, publish, reference_ids=refs), published)


@pytest.fixture
def clock() -> Callable[[], int]:
    ticks = itertools.count(1_700_000_000_000, 7)
    return lambda: next(ticks)


async def op(engine: Engine, user: str, media: Any, ix_id: str, operation: str, **params: Any) -> int:
    return await engine.conversations.operate(user, media, ix_id, operation, params)


def snapshot(engine: Engine) -> dict[str, Any]:
    conv = engine.conversations
    return {
        "views": {user: {media.name: conv.active(user, media) for media in (SMS, CHAT)}
                  for user in ("alice", "bob", "carol")},
        "documents": {ix.id: ix.to_document() for ix in conv.all_interactions()},
        "waiting": {queue: [r.interaction_id for r in engine.routing.waiting(queue)]
                    for queue in ("default", "sales")},
        "last_agent": dict(conv.last_agent),
        "workbin": engine.workbins.content(engine.workbins.find("alice", "InProgress")),
    }


async def test_engine_state_is_reloaded_from_the_store(tmp_path, clock) -> None:
    path = tmp_path / "state.db"
    engine = make_engine(path, clock)
    conv, routing = engine.conversations, engine.routing
    await routing.set_ready("alice", "sms")
    await routing.set_ready("bob", "sms")
    # A conference SMS: alice owns it (saveLAR), bob invited and chatting, messages of both visibilities.
    sms = (await conv.create_inbound(SMS, "PersonP", text="Hello", contact_id="+15550001")).id
    await op(engine, "alice", SMS, sms, "Accept", saveLAR=True)
    await op(engine, "alice", SMS, sms, "Invite", targetUri="/users/bob")
    await op(engine, "bob", SMS, sms, "Accept")
    await conv.customer_message(SMS, sms, "hi both")
    await op(engine, "alice", SMS, sms, "SendToAgents", text="psst")
    await op(engine, "alice", SMS, sms, "AttachUserData", userData={"k": {"nested": [1, 2]}})
    # Alice and bob are full: a second SMS waits in the default queue.
    queued = (await conv.create_inbound(SMS, "Waiting")).id
    # A chat offered to carol and not answered when the server dies.
    await routing.set_ready("carol", "chat")
    offered = (await conv.create_inbound(CHAT, "Offered", queue="sales")).id
    # A chat alice parks in her workbin.
    await routing.set_ready("alice", "chat")
    parked = (await conv.create_inbound(CHAT, "Parked")).id
    await op(engine, "alice", CHAT, parked, "Accept")
    await engine.workbins.place("alice", engine.workbins.find("alice", "InProgress"), parked)
    last_ref = await engine.workbins.send_content("alice", engine.workbins.find("alice", "Drafts"), "/t")
    before = snapshot(engine)
    assert before["views"]["carol"]["chat"][0]["state"] == "Invited"
    sms_log = len(conv.interaction(sms).log)
    await engine.stop()

    engine = make_engine(path, clock)
    conv, routing = engine.conversations, engine.routing
    after = snapshot(engine)
    # Everything comes back as it was, except the offer pending at the crash: it went back to its queue.
    assert after["views"]["alice"] == before["views"]["alice"]
    assert after["views"]["bob"] == before["views"]["bob"]
    assert after["views"]["carol"] == {"sms": [], "chat": []}
    assert conv.interaction(offered).legs["carol"].state is LegState.REVOKED
    assert {k: v for k, v in after["documents"].items() if k != offered} == \
           {k: v for k, v in before["documents"].items() if k != offered}
    assert after["waiting"] == {"default": [queued], "sales": [offered]}
    assert after["last_agent"] == {"+15550001": "alice"}
    assert after["workbin"] == before["workbin"] and engine.workbins.holder(parked) is not None

    # The conversation continues: the next index, a larger referenceId, both agents told.
    ref = await op(engine, "alice", SMS, sms, "SendMessage", text="still here")
    assert ref > last_ref
    for user in ("alice", "bob"):
        [message] = engine.events(user, SMS.topic)[-1]["messages"]
        assert (message["index"], message["text"]) == (sms_log + 1, "still here")
    await conv.customer_message(SMS, sms, "good")
    assert engine.events("bob", SMS.topic)[-1]["messages"][0]["index"] == sms_log + 2
    # Readiness is not persisted: carol gets her chat back once she is Ready again.
    assert routing.waiting("sales")[0].interaction_id == offered
    await routing.set_ready("carol", "chat")
    status = engine.events("carol", CHAT.topic)[-1]
    assert (status["chat"]["id"], status["chat"]["state"]) == (offered, "Invited")
    # The parked chat can be pulled out of the workbin after the restart.
    await engine.workbins.pull("alice", engine.workbins.find("alice", "InProgress"), parked)
    assert conv.interaction(parked).legs["alice"].state is LegState.INVITED
    await engine.stop()

    # What the second server did is on disk too.
    engine = make_engine(path, clock)
    assert engine.conversations.interaction(offered).legs["carol"].state is LegState.REVOKED  # pending again
    assert [m.index for m in engine.conversations.interaction(sms).log] == list(range(1, sms_log + 3))
    assert engine.workbins.holder(parked) is None and engine.routing.waiting("default")[-1].interaction_id == parked
    assert next(engine.conversations._refs) > ref
    await engine.stop()


async def test_an_ended_interaction_and_the_counter_persist(tmp_path, clock) -> None:
    path = tmp_path / "state.db"
    engine = make_engine(path, clock)
    chat = (await engine.conversations.create_inbound(CHAT, "Gone", text="bye")).id
    await engine.conversations.customer_left(CHAT, chat)
    ref = await engine.workbins.subscribe(engine.workbins.find("bob", "Drafts"), False)
    await engine.stop()

    engine = make_engine(path, clock)
    ix = engine.conversations.interaction(chat)
    assert ix is not None and ix.ended and not ix.customer_present
    assert [m["type"] for m in engine.conversations.transcript(CHAT, chat)] == ["ParticipantJoined", "Text",
                                                                                 "ParticipantLeft"]
    assert engine.routing.waiting() == []
    assert engine.workbins.find("bob", "Drafts").subscribed is False
    assert await engine.workbins.subscribe(engine.workbins.find("bob", "Drafts"), True) == ref + 1
    await engine.stop()


class RefusingStore(StateStore):
    """Refuses every write while `down` (a full disk, a cluster's Redis gone)."""

    down = False

    async def submit(self, changes: Any) -> asyncio.Future[None]:
        if not self.down:
            return await super().submit(changes)
        # As the writer thread reports a failed COMMIT: the write was queued, its future fails.
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(OSError("the disk is full"))
        return failed


async def test_a_write_that_fails_tells_nobody_and_the_next_run_writes_it(tmp_path, clock) -> None:
    """The engine publishes a run's notifications once its write is stored: a refused write is an error
    nobody hears of, and the change stays due, written by the next run (with that run's own change)."""
    engine = make_engine(tmp_path / "state.db", clock, RefusingStore)
    store, conv = engine.store, engine.conversations
    assert isinstance(store, RefusingStore)
    await engine.routing.set_ready("alice", "sms")
    sms = (await conv.create_inbound(SMS, "PersonP", text="Hello")).id
    told = len(engine.published)
    store.down = True
    with pytest.raises(OSError, match="disk is full"):
        await op(engine, "alice", SMS, sms, "Accept")
    assert len(engine.published) == told  # nobody was told of the Accept
    assert store.load("interaction")[sms]["legs"][0]["state"] == "Invited"
    store.down = False
    await op(engine, "alice", SMS, sms, "SendMessage", text="hi")
    legs = store.load("interaction")[sms]["legs"]
    assert [(leg["userId"], leg["state"]) for leg in legs] == [("alice", "Chatting")]
    await engine.stop()


async def test_without_a_store_nothing_is_written(tmp_path, clock) -> None:
    routing = Routing(lambda *_: asyncio.sleep(0))
    conversations = Conversations(lambda *_: asyncio.sleep(0), routing, USERS, clock_ms=clock)
    await conversations.create_inbound(SMS, "P")
    assert conversations.store is None and list(tmp_path.iterdir()) == []
    await conversations.close()


# ================================================================ conferences


GATEWAY_USERS = UserDirectory(User(f"agent{n}", hash_password("pw", iterations=1), agent_id=n)
                              for n in ("101", "102"))


async def gateway_call(client: Any, method: str, path: str, body: Any = None, guid: str = "") -> dict[str, Any]:
    async with client.request(method, f"/agentgateway/resource/{path}", data=orjson.dumps(body or {}),
                              headers={"Content-Type": "application/json", "Guid": guid}) as response:
        return await response.json()


async def test_conferences_and_sign_ins_survive_a_restart(aiohttp_client, tmp_path) -> None:
    path = tmp_path / "state.db"

    async def serve() -> tuple[Any, AgentGateway, StateStore]:
        store = StateStore(path)
        gateway = AgentGateway(GATEWAY_USERS, poll_wait=0.01, store=store)
        app = web.Application()
        gateway.add_routes(app)
        return await aiohttp_client(app), gateway, store

    async def sign_in(client: Any, agent_id: str) -> str:
        answer = await gateway_call(client, "PUT", f"onlineagent/{agent_id}", {"password": "pw"})
        assert answer["retcode"] == "0", answer
        return answer["result"]["guid"]

    client, gateway, store = await serve()
    guid = await sign_in(client, "101")
    conf_id = (await gateway_call(client, "POST", "agentconf/101/requestagentconf", guid=guid))["result"]["confId"]
    added = await gateway_call(client, "POST", "agentconf/101/batchaddparticipant", guid=guid, body={
        "addresses": [{"addressType": "9", "address": "102"}, {"addressType": "6", "address": "5551234"}]})
    assert added["retcode"] == "0", added
    await client.close()
    await store.close()

    client, gateway, store = await serve()
    assert list(gateway.conferences) == [conf_id]
    restored = gateway.conferences[conf_id]
    assert restored.chair == "101" and list(restored.participants) == [("9", "102"), ("6", "5551234")]
    # The sign-in is kept too: still signed in, and the same Guid goes on chairing the same conference.
    assert (await gateway_call(client, "PUT", "onlineagent/101", {"password": "pw"}))["retcode"] == "100-002"
    removed = await gateway_call(client, "POST", "agentconf/101/batchremoveparticipant", guid=guid,
                                 body={"addresses": [{"addressType": "6", "address": "5551234"}]})
    assert removed["retcode"] == "0", removed
    # Agent 102 is still in conference 1, so cannot start another; a new conference gets a new id.
    assert (await gateway_call(client, "POST", "agentconf/102/requestagentconf",
                               guid=await sign_in(client, "102")))["retcode"] == "101-002"
    await gateway_call(client, "DELETE", "onlineagent/101/logout", guid=guid)  # the chair ends it
    assert gateway.conferences == {}
    assert (await gateway_call(client, "POST", "agentconf/101/requestagentconf",
                               guid=await sign_in(client, "101")))["result"]["confId"] == conf_id + 1
    await client.close()
    await store.close()

    client, gateway, store = await serve()
    assert [(c.conf_id, c.chair, list(c.participants)) for c in gateway.conferences.values()] == [
        (conf_id + 1, "101", [])]
    await client.close()
    await store.close()


# ================================================================ end to end: SIGKILL and restart

TOKEN = "media-secret"
PASSWORD = "alice-e2e-pw"


@pytest.fixture
async def brokers() -> AsyncIterator[list[RunningBroker]]:
    started: list[RunningBroker] = []
    yield started
    for running in started:
        await asyncio.to_thread(running.stop)


class Client:
    """REST as alice (Basic), the media gateway (bearer) and alice's CometD session, on one broker."""

    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{port}"
        self.auth = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        self.client_id = ""
        self.pending: list[tuple[str, dict[str, Any]]] = []

    async def rest(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with self.http.request(method, self.base + path, json=body, headers={"Authorization": self.auth},
                                     timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
            reply = await response.json()
        assert reply["statusCode"] == 0, (method, path, reply)
        return reply

    async def media(self, path: str, body: Any = None, method: str = "POST") -> dict[str, Any]:
        async with self.http.request(method, f"{self.base}/api/v2/media/{path}", json=body,
                                     headers={"Authorization": f"Bearer {TOKEN}"},
                                     timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
            reply = await response.json()
        assert reply["statusCode"] == 0, (path, reply)
        return reply

    async def _bayeux(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        async with self.http.post(self.base + "/api/v2/notifications", json=batch,
                                  headers={"Authorization": self.auth},
                                  timeout=aiohttp.ClientTimeout(total=WAIT + 2)) as response:
            return await response.json()

    async def subscribe(self) -> None:
        self.client_id = await open_session(self._bayeux, subscriptions=("/v2/me/smssessions", "/v2/me/chats"))

    async def next_event(self, topic: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first event on `topic` that satisfies `predicate` (earlier ones are dropped)."""
        deadline = time.monotonic() + WAIT
        while True:
            for i, (channel, data) in enumerate(self.pending):
                if channel == topic and predicate(data):
                    del self.pending[:i + 1]
                    return data
            assert time.monotonic() < deadline, f"no matching event on {topic}: {self.pending}"
            replies = await connect(self._bayeux, self.client_id, timeout=200)
            self.pending += [(m["channel"], m["data"]) for m in events_in(replies)]

    async def start_session(self, *channels: str) -> None:
        await self.rest("POST", "/api/v2/me", {"operationName": "StartContactCenterSession",
                                               "channels": list(channels)})

    async def ready(self, channel: str) -> None:
        await self.rest("POST", f"/api/v2/me/channels/{channel}", {"operationName": "Ready"})

    async def operate(self, collection: str, ix_id: str, operation: str, **params: Any) -> int:
        reply = await self.rest("POST", f"/api/v2/me/{collection}/{ix_id}", {"operationName": operation, **params})
        return reply["referenceId"]


def state_of(resource_key: str, ix_id: str, state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda data: data.get(resource_key, {}).get("id") == ix_id and data[resource_key]["state"] == state


def new_message(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda data: any(m.get("text") == text for m in data.get("messages", ()))


async def test_interactions_over_for_the_retention_are_forgotten_in_memory_and_on_disk(tmp_path, clock) -> None:
    path = tmp_path / "state.db"
    engine = make_engine(path, clock)
    conv, routing = engine.conversations, engine.routing
    await routing.set_ready("alice", "sms")
    done = (await conv.create_inbound(SMS, "Done")).id
    await op(engine, "alice", SMS, done, "Accept")
    await op(engine, "alice", SMS, done, "Complete")
    assert conv.interaction(done).ended and not conv.interaction(done).active_legs()
    # Wrap-up: the customer left a chat, alice has not completed it yet.
    await routing.set_ready("alice", "chat")
    wrapup = (await conv.create_inbound(CHAT, "Wrapup")).id
    await op(engine, "alice", CHAT, wrapup, "Accept")
    await conv.customer_left(CHAT, wrapup)
    assert conv.interaction(wrapup).ended and conv.interaction(wrapup).legs["alice"].state is LegState.LEFT_CHAT
    live = (await conv.create_inbound(SMS, "Live")).id  # offered to alice, not answered yet
    # Parked in a workbin: alice's leg is done, the customer's side is kept open.
    await routing.set_ready("bob", "chat")
    parked = (await conv.create_inbound(CHAT, "Parked")).id
    await op(engine, "bob", CHAT, parked, "Accept")
    await engine.workbins.place("bob", engine.workbins.find("bob", "InProgress"), parked)

    assert await conv.prune(60, now=1000.0) == 0  # over from now on
    assert await conv.prune(60, now=1059.9) == 0
    assert await conv.prune(60, now=1060.0) == 1 and conv.pruned == 1
    assert conv.interaction(done) is None
    with pytest.raises(ContactCenterError) as missing:
        conv.transcript(SMS, done)
    assert GwsError.of(missing.value).status is Status.NOT_FOUND
    assert {ix.id for ix in conv.all_interactions()} == {wrapup, live, parked}
    await engine.stop()

    engine = make_engine(path, clock)  # gone from the store too
    conv = engine.conversations
    assert {ix.id for ix in conv.all_interactions()} == {wrapup, live, parked}
    await op(engine, "alice", CHAT, wrapup, "Complete")  # wrap-up done: over, counted from the next sweep
    assert await conv.prune(60, now=5000.0) == 0
    assert await conv.prune(60, now=5060.0) == 1
    assert {ix.id for ix in conv.all_interactions()} == {live, parked}
    await engine.stop()
    engine = make_engine(path, clock)
    assert {ix.id for ix in engine.conversations.all_interactions()} == {live, parked}
    await engine.stop()


async def test_a_completed_interaction_is_forgotten_after_ended_retention(tmp_path, brokers) -> None:
    users_file = tmp_path / "users.json"
    directory = UserDirectory()
    directory.add("alice", PASSWORD, first_name="Alice", last_name="Agent")
    directory.save(users_file)
    running = await asyncio.to_thread(start_broker, "--users-file", str(users_file), "--state-db",
                                      str(tmp_path / "state.db"), "--media-token", TOKEN, "--no-csrf",
                                      "--ended-retention", "0.4")
    brokers.append(running)
    async with aiohttp.ClientSession() as http:
        alice = Client(http, running.port)
        await alice.subscribe()
        await alice.start_session("sms")
        await alice.ready("sms")
        sms = (await alice.media("sms/interactions", {"nickname": "PersonP", "text": "Hello"}))["id"]
        await alice.next_event("/v2/me/smssessions", state_of("smssession", sms, "Invited"))
        await alice.operate("smssessions", sms, "Accept")
        await alice.operate("smssessions", sms, "Complete")
        assert len((await alice.media(f"sms/interactions/{sms}/transcript", method="GET"))["messages"]) >= 2

        async def transcript_status() -> int:
            async with http.get(f"{alice.base}/api/v2/media/sms/interactions/{sms}/transcript",
                                headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                return (await response.json())["statusCode"]

        deadline = time.monotonic() + WAIT
        while await transcript_status() == 0:
            assert time.monotonic() < deadline, "the completed interaction was never forgotten"
            await asyncio.sleep(0.1)
        assert await transcript_status() == 6  # not found
    assert "contact center: forgot 1 interaction(s) over for more than 0.4 s (0 kept)" in running.log(), running.log()


async def test_restart_keeps_state(tmp_path, brokers) -> None:
    users_file, state_db = tmp_path / "users.json", tmp_path / "state.db"
    directory = UserDirectory()
    directory.add("alice", PASSWORD, first_name="Alice", last_name="Agent")
    directory.save(users_file)
    # A fixed --base-url: the resource uris must not change with the port of each broker.
    flags = ("--users-file", str(users_file), "--state-db", str(state_db), "--media-token", TOKEN, "--no-csrf",
             "--base-url", "http://gws.example")

    async def start() -> RunningBroker:
        running = await asyncio.to_thread(start_broker, *flags)
        brokers.append(running)
        return running

    first = await start()
    async with aiohttp.ClientSession() as http:
        alice = Client(http, first.port)
        await alice.subscribe()
        await alice.start_session("sms", "chat")
        await alice.ready("sms")
        await alice.ready("chat")
        # An inbound SMS, offered to alice, accepted, messages both ways.
        sms = (await alice.media("sms/interactions", {"nickname": "PersonP", "text": "Hello World"}))["id"]
        await alice.next_event("/v2/me/smssessions", state_of("smssession", sms, "Invited"))
        await alice.operate("smssessions", sms, "Accept", nickname="Alice")
        await alice.operate("smssessions", sms, "SendMessage", text="How can I help?")
        await alice.media(f"sms/interactions/{sms}/messages", {"text": "My order"})
        await alice.next_event("/v2/me/smssessions", new_message("My order"))
        last_ref = await alice.operate("smssessions", sms, "SendStartTypingNotification")
        # A chat alice parks in her workbin, and a chat that waits in the queue while she is NotReady.
        chat = (await alice.media("chat/interactions", {"nickname": "Parked", "text": "later"}))["id"]
        await alice.next_event("/v2/me/chats", state_of("chat", chat, "Invited"))
        await alice.operate("chats", chat, "Accept")
        placed = await alice.rest("POST", "/api/v2/me/workbins/alice-inprogress",
                                  {"operationName": "AddInteraction", "id": chat})
        await alice.rest("POST", "/api/v2/me/channels/chat", {"operationName": "NotReady"})
        queued = (await alice.media("chat/interactions", {"nickname": "Queued", "text": "anyone?"}))["id"]

        sessions = (await alice.rest("GET", "/api/v2/me/smssessions?fields=*"))["smssessions"]
        workbin = (await alice.rest("GET", "/api/v2/me/workbins/alice-inprogress"))["workbin"]
        transcript = (await alice.media(f"sms/interactions/{sms}/transcript", method="GET"))["messages"]
        agent_log = len(transcript)  # nothing agents-only was said: the customer saw the whole log
        assert [s["id"] for s in sessions] == [sms] and [i["id"] for i in workbin["interactions"]] == [chat]

        first.process.kill()  # SIGKILL: no shutdown hook runs
        await asyncio.to_thread(first.process.wait, WAIT)

        second = await start()
        alice = Client(http, second.port)
        assert (await alice.rest("GET", "/api/v2/me/smssessions?fields=*"))["smssessions"] == sessions
        assert (await alice.rest("GET", "/api/v2/me/workbins/alice-inprogress"))["workbin"] == workbin
        assert (await alice.media(f"sms/interactions/{sms}/transcript", method="GET"))["messages"] == transcript

        # The conversation goes on over a new CometD session: next index, larger referenceIds.
        await alice.subscribe()
        ref = await alice.operate("smssessions", sms, "SendMessage", text="Back again")
        assert ref > max(last_ref, placed["referenceId"])
        sent = await alice.next_event("/v2/me/smssessions", new_message("Back again"))
        assert sent["referenceId"] == ref and sent["messages"][0]["index"] == agent_log + 1
        await alice.media(f"sms/interactions/{sms}/messages", {"text": "Thanks"})
        heard = await alice.next_event("/v2/me/smssessions", new_message("Thanks"))
        assert heard["messages"][0]["index"] == agent_log + 2
        # The queued chat is still queued, and is offered once alice logs in and is Ready again.
        await alice.start_session("sms", "chat")
        await alice.ready("chat")
        await alice.next_event("/v2/me/chats", state_of("chat", queued, "Invited"))


async def test_a_state_file_that_refuses_a_write_answers_503_with_what_happened(aiohttp_client, tmp_path,
                                                                                 caplog) -> None:
    """SQLite refuses the write (here a trigger; in production a full disk or a lock held too long): the
    customer gets a 503 envelope saying the change is made but not stored, the log one WARNING line without
    a traceback, and the next change stores it too."""
    import sqlite3

    path = tmp_path / "state.db"
    center = await served_center(aiohttp_client, path)
    client, media = center.client, center.media

    async def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with client.post(url, json=body, headers=media) as response:
            return response.status, await response.json()

    status, created = await post("/api/v2/media/sms/interactions", {"nickname": "P", "text": "first"})
    assert status == 200
    messages = f"/api/v2/media/sms/interactions/{created['id']}/messages"
    other = sqlite3.connect(path)
    other.execute("CREATE TRIGGER refuse BEFORE INSERT ON documents BEGIN SELECT RAISE(ABORT, 'refused'); END")
    other.commit()
    caplog.clear()
    status, reply = await post(messages, {"text": "second"})
    assert status == 503 and reply["statusCode"] == 4
    assert "could not be stored yet" in reply["statusMessage"] and "refused" in reply["statusMessage"]
    warnings = [r for r in caplog.records if "not stored" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING" and warnings[0].exc_info is None
    other.execute("DROP TRIGGER refuse")
    other.commit()
    status, _ = await post(messages, {"text": "third"})
    assert status == 200
    (body,) = other.execute("SELECT body FROM documents WHERE kind = 'interaction' AND key = ?",
                            (created["id"],)).fetchone()
    assert [m.get("text") for m in orjson.loads(body)["log"] if m.get("text")] == ["first", "second", "third"]
    other.close()


async def test_the_broker_settles_the_state_files_writes_as_requests_come_in(aiohttp_client, tmp_path) -> None:
    """The contact center has the broker reap its state store with the event log, so on a busy loop a stored
    change's notifications go out within the turn."""

    from channels.app import CENTER

    center = await served_center(aiohttp_client, tmp_path / "state.db")
    client, broker = center.client, center.broker
    store = center.app[CENTER].store
    await store.apply([("workbin", "warm", {"items": []})])
    before = store.commits
    written = await store.submit([("workbin", "alice-drafts", {"items": []})])
    hold_loop_until(lambda: store.commits > before)  # the loop is held in this turn
    assert store.commits == before + 1 and not written.done()
    broker.reap()  # what the exchange does before each batch of Bayeux requests
    assert written.done()
    await client.close()
