"""Nothing on the event loop waits on a disk or a socket (DESIGN.md rule 4), with the contact center's state
in SQLite or in Redis.

The contact-center scenarios (agents log in and go Ready, a customer's chat is offered, accepted, talked
in, parked in a workbin and pulled back, completed; an agent-gateway conference with its event polls) run
with asyncio's debug mode and a 20 ms slow-callback threshold against a store made slow on purpose:

- Redis behind a proxy (on its own thread and loop) that delays every reply by 50 ms;
- SQLite on a real file whose write lock another connection holds for 50 ms out of every 60 ms.

Any callback that runs for 20 ms fails the test: a store call made on the loop would take at least the
delay. The scenarios run once before debug mode is switched on (imports, caches and first-time set-up are
not what is measured) and the garbage collector is paused while they are measured (its pauses are not I/O);
a run with a slow callback is tried again, up to five runs (see `run_measured`).

Then: whatever a client is told is stored first. A store that keeps a copy of what its writes stored
(updated as each write completes) checks every notification as it is published: a chat's state, an
agent's readiness, must already be what the store holds; and no write queued before the notification
may still be in flight (the scenario runs one step at a time, so a write in flight would be the change
being announced).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from bayeux_helpers import connect, events_in, open_session

from channels.app import NOTIFICATIONS, ContactCenterConfig, install_engine
from channels.auth import GwsAuthenticator, HttpSessions, User, UserDirectory, hash_password
from channels.store import Change, DocumentStore, StateStore
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER, add_mount
from cometd_broker.security import ChainedAuthenticator

DELAY = 0.05  # what the slow store costs per round trip
THRESHOLD = 0.02  # asyncio's slow-callback threshold for the measured run
MEDIA_TOKEN = "media-secret"
AGENTS = {"alice": "101", "bob": "102"}  # user -> Huawei agent id
PASSWORD = "pw"
PREFIX, LEASE = "nbtest:cc", "nbtest:cc:leader"
WAIT = 5.0

USERS = UserDirectory(User(name, hash_password(PASSWORD, iterations=1), agent_id=agent_id)
                      for name, agent_id in AGENTS.items())


# ================================================================ slow stores


class DelayProxy:
    """A TCP proxy on its own thread and loop: every chunk the server sends back reaches the client
    `delay` seconds later (in order); requests go through at once."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for pump in (self._pump(reader, up_writer, 0.0), self._pump(up_reader, writer, self.delay)):
            task = asyncio.get_running_loop().create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, chunk = await due.get()
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.get_running_loop().create_task(deliver())
        try:
            while chunk := await reader.read(65536):
                due.put_nowait((time.monotonic() + delay, chunk))
            while not due.empty():
                await asyncio.sleep(delay)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(Exception):
                writer.close()


class LockHolder:
    """Another connection to the SQLite file that holds its write lock `hold` seconds out of every
    `hold + gap`: a disk that makes every writer wait."""

    def __init__(self, path: str, hold: float, gap: float) -> None:
        self.path, self.hold, self.gap = path, hold, gap
        self.held = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-lock-holder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        try:
            while not self._stop.is_set():
                db.execute("BEGIN IMMEDIATE")
                self._stop.wait(self.hold)
                db.execute("COMMIT")
                self.held += 1
                self._stop.wait(self.gap)
        finally:
            db.close()


class CheckingStore:
    """A store that counts writes queued and completed, and keeps a copy of what completed writes stored."""

    def __init__(self, store: DocumentStore) -> None:
        self.store = store
        self.queued = 0
        self.completed = 0
        self.stored: dict[tuple[str, str], Any] = {}

    def load(self, kind: str) -> dict[str, Any]:
        return self.store.load(kind)

    async def apply(self, changes: Iterable[Change]) -> None:
        await (await self.submit(changes))

    async def submit(self, changes: Iterable[Change]) -> asyncio.Future[None]:
        changes = list(changes)
        if not changes:
            return await self.store.submit(changes)
        self.queued += 1

        def completed(write: asyncio.Future[None]) -> None:  # runs before anyone awaiting the write resumes
            self.completed += 1
            if not write.cancelled() and write.exception() is None:
                for kind, key, doc in changes:  # as stored: the log's encoded messages decoded again
                    self.stored[kind, key] = None if doc is None else orjson.loads(orjson.dumps(doc))

        write = await self.store.submit(changes)
        write.add_done_callback(completed)
        return write

    def reap(self) -> None:
        self.store.reap()

    def problem(self, user_id: str, channel: str, data: dict[str, Any]) -> str | None:
        """What `data`, about to be published, tells that the store does not hold yet (None: nothing).
        Writes queued after the one that stored it may be in flight: runs share commits."""
        if channel == "/v2/me/chats" and "state" in data.get("chat", {}):
            chat = data["chat"]
            stored = self.stored.get(("interaction", chat["id"])) or {"legs": []}
            if not any(leg["userId"] == user_id and leg["state"] == chat["state"] for leg in stored["legs"]):
                return f"chat {chat['id']} is {chat['state']} for {user_id}, not stored so"
        if channel == "/v2/me/chats" and data.get("notificationType") == "NewMessages":
            chat_id = data["chatUri"].rsplit("/", 1)[-1]
            stored_log = (self.stored.get(("interaction", chat_id)) or {"log": []})["log"]
            texts = {message.get("text") for message in stored_log}
            missing = [m["text"] for m in data["messages"] if "text" in m and m["text"] not in texts]
            if missing:
                return f"messages {missing} of chat {chat_id} are not stored"
        if channel == "/v2/me/channels":
            states = (self.stored.get(("agent", user_id)) or {"states": {}})["states"]
            for entry in data["channels"]:
                if states.get(entry["channel"], {}).get("stateId") != entry["userState"]["id"]:
                    return f"{user_id} is {entry['userState']['state']} on {entry['channel']}, not stored so"
        return None

    async def close(self) -> None:
        await self.store.close()


# ================================================================ the application and its clients


async def serve(store: DocumentStore) -> tuple[TestClient, Any]:
    """The contact center as `cometd-broker serve` wires it (readiness kept, as in a cluster), on `store`."""
    app = create_app(BrokerConfig())
    broker = app[BROKER]
    sessions = HttpSessions()
    broker.authenticator = ChainedAuthenticator(GwsAuthenticator(USERS, sessions), broker.authenticator)
    add_mount(app, NOTIFICATIONS)
    config = ContactCenterConfig(csrf=False, media_token=MEDIA_TOKEN, gateway_poll_wait=0.2)
    center = install_engine(app, broker, config, USERS, sessions, store, keep_readiness=True)
    client = TestClient(TestServer(app), cookie_jar=aiohttp.DummyCookieJar())
    await client.start_server()
    return client, center


class Desk:
    """An agent: REST calls with Basic auth, CometD events over long-polling, the agent gateway."""

    def __init__(self, client: TestClient, user: str) -> None:
        self.client, self.user, self.agent_id = client, user, AGENTS[user]
        self.client_id = ""
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.guid = ""

    async def rest(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        auth = base64.b64encode(f"{self.user}:{PASSWORD}".encode()).decode()
        async with self.client.request(method, path, json=body, headers={"Authorization": f"Basic {auth}"}) as r:
            reply = await r.json()
        assert r.status == 200 and reply["statusCode"] == 0, (method, path, body, reply)
        return reply

    async def open(self) -> None:
        self.client_id = await open_session(
            self.client, path=NOTIFICATIONS,
            subscriptions=("/v2/me/chats", "/v2/me/channels", "/v2/me/interactions", "/v2/me/workbins"),
            ext={"authentication": {"user": self.user, "password": PASSWORD}})

    async def wait_for(self, found: Callable[[str, dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while True:
            for index, (channel, data) in enumerate(self.events):
                if found(channel, data):
                    del self.events[:index + 1]
                    return data
            assert time.monotonic() < deadline, f"{self.user}: not found in {self.events}"
            replies = await connect(self.client, self.client_id, timeout=200, path=NOTIFICATIONS)
            self.events += [(m["channel"], m["data"]) for m in events_in(replies)]

    async def chat_state(self, chat_id: str, state: str) -> dict[str, Any]:
        return await self.wait_for(lambda ch, d: ch == "/v2/me/chats" and d.get("chat", {}).get("id") == chat_id
                                   and d["chat"].get("state") == state)

    async def operate(self, chat_id: str, operation: str, **params: Any) -> dict[str, Any]:
        return await self.rest("POST", f"/api/v2/me/chats/{chat_id}", {"operationName": operation, **params})

    async def gateway(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with self.client.request(method, f"/agentgateway/resource/{path}", data=orjson.dumps(body or {}),
                                       headers={"Content-Type": "application/json", "Guid": self.guid}) as r:
            reply = await r.json()
        assert reply["retcode"] == "0", (method, path, body, reply)
        return reply

    async def gateway_event(self, event_type: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            event = (await self.gateway("GET", f"agentevent/{self.agent_id}")).get("event")
            if event is not None and event["eventType"] == event_type:
                return event
        raise AssertionError(f"agent {self.agent_id}: no {event_type} event")


async def customer(client: TestClient, method: str, path: str, body: Any = None) -> dict[str, Any]:
    async with client.request(method, f"/api/v2/media/chat/interactions{path}", json=body,
                              headers={"Authorization": f"Bearer {MEDIA_TOKEN}"}) as r:
        reply = await r.json()
    assert r.status == 200 and reply["statusCode"] == 0, reply
    return reply


async def scenario(client: TestClient) -> None:
    """The contact-center flows, one step at a time, each checked by its reply and its notification."""
    alice, bob = Desk(client, "alice"), Desk(client, "bob")
    for desk in (alice, bob):
        await desk.open()
        await desk.rest("POST", "/api/v2/me", {"operationName": "StartContactCenterSession", "channels": ["chat"]})
    await alice.rest("POST", "/api/v2/me/channels/chat", {"operationName": "Ready"})
    await alice.wait_for(lambda ch, d: ch == "/v2/me/channels" and d["channels"][0]["userState"]["state"] == "Ready")

    chat_id = (await customer(client, "POST", "", {"nickname": "Pat", "text": "Hello"}))["id"]
    await alice.chat_state(chat_id, "Invited")
    await alice.operate(chat_id, "Accept")
    await alice.chat_state(chat_id, "Chatting")
    await alice.operate(chat_id, "SendMessage", text="How can I help?")
    await customer(client, "POST", f"/{chat_id}/messages", {"text": "My order"})
    await alice.wait_for(lambda ch, d: d.get("notificationType") == "NewMessages"
                         and any(m.get("text") == "My order" for m in d["messages"]))

    await alice.rest("POST", f"/api/v2/me/interactions/{chat_id}",
                     {"operationName": "PlaceInWorkbin", "workbin": "InProgress"})
    await alice.wait_for(lambda ch, d: ch == "/v2/me/workbins" and d.get("action") == "ItemAdded")
    await alice.rest("POST", "/api/v2/me/workbins/alice-inprogress", {"operationName": "Pull", "id": chat_id})
    await alice.chat_state(chat_id, "Invited")
    await alice.operate(chat_id, "Accept")
    await alice.chat_state(chat_id, "Chatting")
    await bob.rest("POST", "/api/v2/me/channels/chat", {"operationName": "Ready"})
    await alice.operate(chat_id, "Consult", targetPath="/users/bob")
    await bob.chat_state(chat_id, "Invited")
    await bob.operate(chat_id, "Accept")
    await bob.chat_state(chat_id, "Chatting")
    await bob.operate(chat_id, "Leave")
    await customer(client, "POST", f"/{chat_id}/end")
    await alice.operate(chat_id, "Complete")
    await alice.chat_state(chat_id, "Completed")
    for desk in (alice, bob):
        await desk.rest("POST", "/api/v2/me/channels/chat", {"operationName": "NotReady"})
        await desk.rest("POST", "/api/v2/me", {"operationName": "EndContactCenterSession"})

    # The agent gateway: sign-ins, a conference, events polled (each taking stored first), sign-outs.
    for desk in (alice, bob):
        signed = await desk.gateway("PUT", f"onlineagent/{desk.agent_id}", {"password": PASSWORD})
        desk.guid = signed["result"]["guid"]
    await alice.gateway("POST", "agentconf/101/requestagentconf")
    await alice.gateway_event("AgentConf_RequestSuccess")
    await alice.gateway("POST", "agentconf/101/batchaddparticipant",
                        {"addresses": [{"addressType": "9", "address": "102"}]})
    await bob.gateway_event("AgentConf_ParticipantChanged")
    await alice.gateway("POST", "agentconf/101/batchremoveparticipant",
                        {"addresses": [{"addressType": "9", "address": "102"}]})
    await bob.gateway_event("AgentConf_ParticipantChanged")
    for desk in (bob, alice):
        await desk.gateway("DELETE", f"onlineagent/{desk.agent_id}/logout")


@contextlib.contextmanager
def slow_callbacks_recorded() -> Iterator[list[str]]:
    """asyncio debug mode with a THRESHOLD slow-callback duration; yields the 'Executing ... took' lines."""
    loop = asyncio.get_running_loop()
    found: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("Executing"):
                found.append(message)

    logger = logging.getLogger("asyncio")
    recorder = Recorder(logging.WARNING)
    logger.addHandler(recorder)
    debug, duration = loop.get_debug(), loop.slow_callback_duration
    gc.collect()
    gc.disable()
    loop.set_debug(True)
    loop.slow_callback_duration = THRESHOLD
    try:
        yield found
    finally:
        gc.enable()
        loop.set_debug(debug)
        loop.slow_callback_duration = duration
        logger.removeHandler(recorder)


async def run_measured(client: TestClient, attempts: int = 5) -> None:
    """The scenario without a slow callback, in one of `attempts` runs. On a machine with more runnable
    threads than cores (this one has two; the test itself adds Redis and the proxy or the lock holder) the
    loop's thread sometimes waits tens of milliseconds for a core, which no code can help, once or twice a
    run; a store call made on the loop stalls it at every write (dozens per run, DELAY each), so it fails
    every attempt."""
    await scenario(client)  # warm-up: imports, caches, first-time set-up
    failures = []
    for _ in range(attempts):
        with slow_callbacks_recorded() as slow:
            started = time.monotonic()
            await scenario(client)
            elapsed = time.monotonic() - started
        assert elapsed > 10 * DELAY  # the store really was slow (dozens of writes, each delayed)
        if not slow:
            return
        failures.append(slow)
    raise AssertionError(f"callbacks that held the loop for {THRESHOLD * 1000:.0f} ms or more, in each of "
                         f"{attempts} runs:\n" + "\n\n".join("\n".join(run) for run in failures))


# ================================================================ the tests


@pytest.fixture
def slow_redis(redis_server: Any) -> Iterator[str]:
    proxy = DelayProxy(redis_server.port, DELAY)
    proxy.start()
    yield f"redis://127.0.0.1:{proxy.port}/0"
    proxy.stop()


async def redis_store(url: str) -> DocumentStore:
    import redis.asyncio as aioredis

    from channels.redis_store import RedisStateStore

    admin = aioredis.Redis.from_url(url)
    await admin.flushdb()
    await admin.set(LEASE, "term-1")
    await admin.aclose()
    store = RedisStateStore(url, prefix=PREFIX, lease_key=LEASE, lease_value="term-1", timeout=2.0)
    await store.open()  # as the cluster does when this process wins the lease
    return store


async def test_no_slow_callback_with_redis_state_that_answers_in_50_ms(slow_redis: str) -> None:
    client, _ = await serve(await redis_store(slow_redis))
    try:
        await run_measured(client)
    finally:
        await client.close()


async def test_no_slow_callback_with_sqlite_state_on_a_disk_that_makes_writers_wait(tmp_path: Any) -> None:
    path = str(tmp_path / "state.db")
    client, _ = await serve(StateStore(path))
    holder = LockHolder(path, hold=DELAY, gap=0.01)
    holder.start()
    try:
        await run_measured(client)
    finally:
        holder.stop()
        await client.close()
    assert holder.held > 10


@pytest.fixture(params=["sqlite", "redis"])
async def slow_store(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """A slow store of either kind, made on demand."""
    stops: list[Callable[[], None]] = []

    async def make() -> DocumentStore:
        if request.param == "redis":
            server = request.getfixturevalue("redis_server")
            proxy = DelayProxy(server.port, DELAY)
            proxy.start()
            stops.append(proxy.stop)
            return await redis_store(f"redis://127.0.0.1:{proxy.port}/0")
        path = str(tmp_path / "state.db")
        store = StateStore(path)
        holder = LockHolder(path, hold=DELAY, gap=0.01)
        holder.start()
        stops.append(holder.stop)
        return store

    yield make
    for stop in stops:
        stop()


async def test_every_notification_tells_only_what_is_stored(slow_store) -> None:
    store = CheckingStore(await slow_store())
    client, _ = await serve(store)  # type: ignore[arg-type]
    broker = client.app[BROKER]  # type: ignore[index]
    published: list[str] = []
    early: list[str] = []
    publish = broker.publish_to_user

    async def checked(user_id: str, channel: str, data: Any) -> Any:
        published.append(channel)
        if (problem := store.problem(user_id, channel, data)) is not None:
            early.append(f"{channel} to {user_id} published early: {problem}")
        return await publish(user_id, channel, data)

    publish_many = broker.publish_to_users

    async def checked_many(events: Any) -> Any:
        for user_id, channel, data in events:
            published.append(channel)
            if (problem := store.problem(user_id, channel, data)) is not None:
                early.append(f"{channel} to {user_id} published early: {problem}")
        return await publish_many(events)

    broker.publish_to_user = checked
    broker.publish_to_users = checked_many
    try:
        await scenario(client)
    finally:
        await client.close()
    assert early == []
    assert published.count("/v2/me/chats") > 10 and published.count("/v2/me/channels") >= 4
    assert store.completed > 20
