"""Interop: the maintained aiocometd forks against our broker.

aiocometd 0.4.5 itself fails on Python >= 3.10, so the matrix is
fork (`aiocometd_ng` 0.5.6, `aiocometd_noloop` 0.4.9) x transport
(long-polling, websocket). The forks' own classes are used throughout
(`fork.Client`, `fork.ConnectionType`, `fork.AuthExtension`,
`fork.exceptions.ServerError`): their enums are distinct types.

What aiocometd does on the wire (see /work/shared/reference/bayeux.md section 5):
it always handshakes over long-polling (POST), then, if websocket was chosen,
opens a websocket and reuses the clientId from the HTTP handshake; it matches
replies by channel + id + presence of `successful`; on a failed /meta/connect
it follows `advice.reconnect` (handshake -> re-handshake, then re-sends its
saved subscriptions batched with the next /meta/connect).

Most tests use the in-process app (so they can look at and poke the broker);
the restart test runs a real broker subprocess and restarts it on the same port.
Every test is bounded by `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

import pytest

from cometd_broker.app import BROKER
from cometd_broker.broker import Broker

FORKS = ("aiocometd_ng", "aiocometd_noloop")
TRANSPORTS = ("long-polling", "websocket")

# The broker requires credentials in every test here: users configured, no --allow-anonymous.
ALICE, ALICE_SECRET = "alice", "alice-secret"
BOB, BOB_SECRET = "bob", "bob-secret"
USERS = f"{ALICE}:{ALICE_SECRET},{BOB}:{BOB_SECRET}"

N = 50
TEST_TIMEOUT = 30.0  # seconds, per test


# ----------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(params=FORKS)
def fork(request: pytest.FixtureRequest) -> ModuleType:
    """The aiocometd fork under test, as a module."""
    return importlib.import_module(request.param)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


class _RecordingAuth:
    """Mixin for the fork's AuthExtension: records handshakes, their replies and re-auth calls."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password
        self.handshakes_sent = 0
        self.handshake_replies: list[dict[str, Any]] = []
        self.authenticate_calls = 0

    def _apply(self, message: dict[str, Any], headers: dict[str, str]) -> None:
        raise NotImplementedError

    async def outgoing(self, payload: list[dict[str, Any]], headers: dict[str, str]) -> None:
        for message in payload:
            if message.get("channel") == "/meta/handshake":
                self.handshakes_sent += 1
            self._apply(message, headers)

    async def incoming(self, payload: list[dict[str, Any]], headers: Any = None) -> None:
        self.handshake_replies.extend(m for m in payload if m.get("channel") == "/meta/handshake")

    async def authenticate(self) -> None:
        # aiocometd calls this when a reply's error code is 401 or 403, then re-sends the payload once.
        self.authenticate_calls += 1


class _ExtAuthentication(_RecordingAuth):
    """Credentials in the handshake's `ext.authentication` {user, password}."""

    def _apply(self, message: dict[str, Any], headers: dict[str, str]) -> None:
        if message.get("channel") == "/meta/handshake":
            message.setdefault("ext", {})["authentication"] = {"user": self.user, "password": self.password}


class _BasicHeader(_RecordingAuth):
    """Credentials in an `Authorization: Basic` header on every request (and on the websocket upgrade)."""

    def _apply(self, message: dict[str, Any], headers: dict[str, str]) -> None:
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"


AUTH_KINDS = {"ext": _ExtAuthentication, "basic": _BasicHeader}


def make_auth(fork: ModuleType, kind: str = "ext", user: str = ALICE, password: str = ALICE_SECRET) -> Any:
    """An instance of a subclass of the fork's own AuthExtension."""
    mixin = AUTH_KINDS[kind]
    cls = type(f"{mixin.__name__.lstrip('_')}For_{fork.__name__}", (mixin, fork.AuthExtension), {})
    return cls(user, password)


class _WireLog:
    """Mixin for the fork's Extension: keeps every payload sent and received (evidence for failures)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def outgoing(self, payload: list[dict[str, Any]], headers: dict[str, str]) -> None:
        self.lines.append(">> " + json.dumps(payload))

    async def incoming(self, payload: list[dict[str, Any]], headers: Any = None) -> None:
        self.lines.append("<< " + json.dumps(payload))

    def mark(self, text: str) -> None:
        self.lines.append(f"-- {text}")

    def since(self, text: str) -> str:
        start = self.lines.index(f"-- {text}") if f"-- {text}" in self.lines else 0
        return "\n".join(self.lines[start:])


def make_wire_log(fork: ModuleType) -> Any:
    cls = type(f"WireLogFor_{fork.__name__}", (_WireLog, fork.Extension), {})
    return cls()


def new_client(fork: ModuleType, url: str, transport: str, auth: Any = None, **options: Any) -> Any:
    """A fork Client restricted to one connection type (aiocometd still handshakes over long-polling)."""
    options.setdefault("connection_timeout", 10)
    return fork.Client(url, connection_types=[fork.ConnectionType(transport)], auth=auth, **options)


def url_of(server: Any) -> str:
    """The loopback URL of an in-process test server's Bayeux endpoint."""
    return str(server.make_url("/cometd"))


async def start_app(make_client: Callable, **options: Any) -> tuple[Any, Broker]:
    options.setdefault("users", USERS)
    server = await make_client(**options)
    return server, server.app[BROKER]


async def receive_n(client: Any, count: int) -> list[dict[str, Any]]:
    """The next `count` messages, by async iteration over the client."""
    received: list[dict[str, Any]] = []
    if count == 0:
        return received
    async with contextlib.aclosing(aiter(client)) as messages:
        async for message in messages:
            received.append(message)
            if len(received) == count:
                break
    return received


async def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def only_session(broker: Broker) -> Any:
    assert len(broker.sessions) == 1, broker.sessions
    return next(iter(broker.sessions.values()))


def session_subscribed(broker: Broker, channel: str, *, not_id: str | None = None) -> Any:
    for session in broker.sessions.values():
        if session.client_id != not_id and channel in session.subscriptions:
            return session
    return None


async def raw_connect(server: Any, client_id: str) -> tuple[int, list[dict[str, Any]]]:
    """A raw long-polling /meta/connect for `client_id` (what a server sees after the client is gone)."""
    response = await server.post("/cometd", json=[{
        "channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling", "id": "raw-1",
        "advice": {"timeout": 0}}])
    return response.status, await response.json()


# ----------------------------------------------------------------------------- pub/sub basics


async def test_subscribe_publish_receive_in_order(make_client, fork, transport):
    """One client: subscribe, publish N messages, every publish acknowledged, all N received in order."""
    async with asyncio.timeout(TEST_TIMEOUT):
        server, broker = await start_app(make_client)
        async with new_client(fork, url_of(server), transport, make_auth(fork)) as client:
            assert client.connection_type.value == transport
            session = only_session(broker)
            assert session.transport == transport
            assert session.user_id == ALICE

            await client.subscribe("/interop/order")
            assert client.subscriptions == {"/interop/order"}
            assert session.subscriptions == {"/interop/order"}

            acks = [await client.publish("/interop/order", {"seq": i}) for i in range(N)]
            received = await receive_n(client, N)

        for i, ack in enumerate(acks):
            assert ack.get("channel") == "/interop/order", (i, ack)
            assert ack.get("successful") is True, (i, ack)
        assert [m["channel"] for m in received] == ["/interop/order"] * N
        assert [m["data"] for m in received] == [{"seq": i} for i in range(N)]
        assert not any("clientId" in m for m in received)


async def test_second_client_receives_what_the_first_publishes(make_client, fork, transport):
    async with asyncio.timeout(TEST_TIMEOUT):
        server, broker = await start_app(make_client)
        url = url_of(server)
        async with new_client(fork, url, transport, make_auth(fork, user=BOB, password=BOB_SECRET)) as subscriber, \
                new_client(fork, url, transport, make_auth(fork)) as publisher:
            await subscriber.subscribe("/interop/fanout")
            acks = [await publisher.publish("/interop/fanout", {"seq": i, "from": "alice"}) for i in range(N)]
            received = await receive_n(subscriber, N)
            await asyncio.sleep(0.1)
            publisher_pending = publisher.pending_count

        assert all(ack.get("successful") is True for ack in acks), acks
        assert [m["data"]["seq"] for m in received] == list(range(N))
        assert {m["channel"] for m in received} == {"/interop/fanout"}
        assert not any("clientId" in m for m in received)
        assert publisher_pending == 0  # the publisher did not subscribe: nothing comes back to it
        assert not broker.sessions


async def test_unsubscribe_stops_delivery(make_client, fork, transport):
    async with asyncio.timeout(TEST_TIMEOUT):
        server, broker = await start_app(make_client)
        url = url_of(server)
        async with new_client(fork, url, transport, make_auth(fork, user=BOB, password=BOB_SECRET)) as subscriber, \
                new_client(fork, url, transport, make_auth(fork)) as publisher:
            await subscriber.subscribe("/interop/muted")
            await subscriber.subscribe("/interop/sentinel")
            await publisher.publish("/interop/muted", {"n": "before"})
            [before] = await receive_n(subscriber, 1)
            assert (before["channel"], before["data"]) == ("/interop/muted", {"n": "before"})

            await subscriber.unsubscribe("/interop/muted")
            assert subscriber.subscriptions == {"/interop/sentinel"}
            assert session_subscribed(broker, "/interop/muted") is None
            assert await broker.publish("/interop/muted", {"n": "server"}) == 0

            await publisher.publish("/interop/muted", {"n": "after"})
            await publisher.publish("/interop/sentinel", {"n": "sentinel"})
            [next_message] = await receive_n(subscriber, 1)
            await asyncio.sleep(0.2)
            left = subscriber.pending_count

        # The sentinel was published after the muted message: had the muted one been delivered, it came first.
        assert next_message["channel"] == "/interop/sentinel", next_message
        assert next_message["data"] == {"n": "sentinel"}
        assert left == 0


async def test_close_disconnects_and_the_server_session_is_gone(make_client, fork, transport):
    async with asyncio.timeout(TEST_TIMEOUT):
        server, broker = await start_app(make_client)
        client = new_client(fork, url_of(server), transport, make_auth(fork))
        await client.open()
        try:
            await client.subscribe("/interop/close")
            client_id = only_session(broker).client_id
        finally:
            await client.close()

        assert client.closed
        assert client_id not in broker.sessions
        assert not broker.sessions
        assert await broker.publish("/interop/close", {"x": 1}) == 0  # its subscription went with it

        # A later raw request with its clientId: unknown session, and the error says the client disconnected
        # (a /meta/disconnect arrived; the session did not merely time out).
        status, replies = await raw_connect(server, client_id)
        assert status == 200
        [reply] = replies
        assert reply["channel"] == "/meta/connect"
        assert reply["successful"] is False
        assert reply["error"].startswith("402:"), reply
        assert "disconnected by the client" in reply["error"], reply


# ----------------------------------------------------------------------------- authentication


@pytest.mark.parametrize("auth_kind", sorted(AUTH_KINDS))
async def test_authenticated_handshake(make_client, fork, transport, auth_kind):
    """ext.authentication or an Authorization: Basic header (set by the extension's headers hook) works."""
    async with asyncio.timeout(TEST_TIMEOUT):
        server, broker = await start_app(make_client)
        auth = make_auth(fork, auth_kind, BOB, BOB_SECRET)
        async with new_client(fork, url_of(server), transport, auth) as client:
            session = only_session(broker)
            await client.subscribe("/interop/auth")
            ack = await client.publish("/interop/auth", {"who": "bob"})
            [message] = await receive_n(client, 1)

        assert session.user_id == BOB
        assert auth.handshakes_sent == 1
        assert auth.authenticate_calls == 0
        [reply] = auth.handshake_replies
        assert reply["successful"] is True
        assert ack["successful"] is True
        assert message["data"] == {"who": "bob"}


@pytest.mark.parametrize("auth_kind", sorted(AUTH_KINDS))
async def test_wrong_credentials_are_surfaced_as_server_error(make_client, fork, transport, auth_kind):
    async with asyncio.timeout(TEST_TIMEOUT):
        server, broker = await start_app(make_client)
        auth = make_auth(fork, auth_kind, ALICE, "not-the-secret")
        client = new_client(fork, url_of(server), transport, auth)
        with pytest.raises(fork.exceptions.ServerError) as caught:
            async with client:
                pytest.fail("the handshake should have been refused")

        error = caught.value
        assert error.message == "Handshake request failed."
        assert error.error == "403::handshake_denied"
        assert error.error_code == 403
        assert error.response["channel"] == "/meta/handshake"
        assert error.response["successful"] is False
        assert error.response["advice"]["reconnect"] == "none"
        assert error.response["ext"]["authentication"]["failureReason"] == "invalid user or secret"
        # 403 is an auth error to aiocometd: it called authenticate() once and re-sent the handshake once.
        assert auth.authenticate_calls == 1
        assert auth.handshakes_sent == 2
        assert client.closed
        assert not broker.sessions


async def test_missing_credentials_are_refused(make_client, fork, transport):
    async with asyncio.timeout(TEST_TIMEOUT):
        server, broker = await start_app(make_client)
        with pytest.raises(fork.exceptions.ServerError) as caught:
            async with new_client(fork, url_of(server), transport):
                pytest.fail("the handshake should have been refused")
        assert caught.value.error == "403::handshake_denied"
        assert "credentials required" in caught.value.response["ext"]["authentication"]["failureReason"]
        assert not broker.sessions


# ----------------------------------------------------------------------------- recovery


def expire_sessions(broker: Broker) -> int:
    """End every session as the sweeper does when its expiry passed.

    `broker.sweep(float('inf'))` alone does not do it for these clients: a session
    whose /meta/connect is parked has `expires_at = inf` (a parked connect proves
    the client alive), and aiocometd always has one parked. So mark them expired first.
    """
    for session in broker.sessions.values():
        session.expires_at = float("-inf")
    return broker.sweep(time.monotonic())


async def overflow_queue(broker: Broker, channel: str, max_queue: int) -> None:
    """Make a subscriber a slow consumer: more events than its queue holds, in one event-loop tick."""
    for i in range(max_queue + 1):
        await broker.publish(channel, {"flood": i})  # no await inside: nothing is written in between


@pytest.mark.parametrize("auth_kind", sorted(AUTH_KINDS))
@pytest.mark.parametrize("cause", ["expiry", "slow-consumer"])
async def test_recovers_from_server_side_session_end(make_client, fork, transport, auth_kind, cause):
    """The server ends the session under a parked /meta/connect; its reply is 402 + reconnect=handshake;
    the client re-handshakes by itself (with credentials), re-subscribes batched with the next
    /meta/connect and receives what is published afterwards."""
    channel = "/interop/recover"
    max_queue = 5
    async with asyncio.timeout(TEST_TIMEOUT):
        server, broker = await start_app(make_client, max_queue=max_queue)
        auth = make_auth(fork, auth_kind)
        async with new_client(fork, url_of(server), transport, auth) as client:
            await client.subscribe(channel)
            old = only_session(broker)
            await wait_until(lambda: old.parked is not None or old.sink is not None, "a parked connect")

            if cause == "expiry":
                assert expire_sessions(broker) == 1
            else:
                await overflow_queue(broker, channel, max_queue)
            assert old.client_id not in broker.sessions

            new = await wait_until(lambda: session_subscribed(broker, channel, not_id=old.client_id),
                                   "a new session subscribed again")
            assert new.user_id == ALICE
            assert new.transport == transport

            await broker.publish(channel, {"after": "server"})
            ack = await client.publish(channel, {"after": "client"})
            got = await receive_n(client, 2)
            # Drop whatever flood events made it out before the removal (slow-consumer case).
            after = [m["data"] for m in got if "flood" not in m["data"]]
            while len(after) < 2:
                [m] = await receive_n(client, 1)
                if "flood" not in m["data"]:
                    after.append(m["data"])

            assert client.subscriptions == {channel}
            assert len(broker.sessions) == 1

        assert ack["successful"] is True
        assert after == [{"after": "server"}, {"after": "client"}]
        assert auth.handshakes_sent == 2
        assert [r["successful"] for r in auth.handshake_replies] == [True, True]
        assert auth.authenticate_calls == 0


# ----------------------------------------------------------------------------- restart of a broker process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Broker:
    """`python -m cometd_broker serve` on a fixed loopback port, restartable on that same port."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.args = args
        self.url = f"http://127.0.0.1:{port}/cometd"
        self.process: subprocess.Popen | None = None
        self.log_paths: list[str] = []

    async def start(self, timeout: float = 15.0) -> None:
        command = [sys.executable, "-m", "cometd_broker", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), *self.args]
        with tempfile.NamedTemporaryFile(prefix=f"aiocometd-broker-{self.port}-", suffix=".log",
                                         delete=False) as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                            env=dict(os.environ))
        self.log_paths.append(log_file.name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited with {self.process.returncode}: {self.log()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise RuntimeError("broker did not start listening in time")

    async def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)

    def log(self) -> str:
        text = []
        for path in self.log_paths:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text.append(handle.read())
        return "\n----- restart -----\n".join(text)


@contextlib.asynccontextmanager
async def running_broker(*args: str) -> AsyncIterator[_Broker]:
    broker = _Broker(_free_port(), *args)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
        for path in broker.log_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


NG_WAIT_FOR_BUG = ("ignore:coroutine 'TransportBase.wait_for_state' was never awaited:RuntimeWarning")


async def receive_surviving_reconnects(client: Any, fork: ModuleType, timeout: float) -> dict[str, Any]:
    """`client.receive()`, tolerating the TransportTimeoutError aiocometd-ng raises while it reconnects.

    aiocometd-ng 0.5.6 raises it at once whenever the transport is CONNECTING (after a network error),
    because its `Client._wait_connection_timeout` still calls `asyncio.wait_for(..., loop=...)`, a
    TypeError on Python >= 3.10 (which also leaves a never-awaited coroutine: NG_WAIT_FOR_BUG). The
    transport keeps reconnecting in the background regardless. A client bug, not the server's.
    """
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await client.receive()
            except fork.exceptions.TransportTimeoutError:
                await asyncio.sleep(0.05)


def connected_after(wire: _WireLog, marker: str, handshakes: int) -> bool:
    """Whether, since `marker`, the client got `handshakes` successful handshake replies and then a
    successful /meta/connect reply."""
    seen = 0
    for line in wire.since(marker).splitlines():
        if not line.startswith("<< "):
            continue
        for message in json.loads(line[3:]):
            if message.get("channel") == "/meta/handshake" and message.get("successful"):
                seen += 1
            elif message.get("channel") == "/meta/connect" and message.get("successful") and seen >= handshakes:
                return True
    return False


@pytest.mark.filterwarnings(NG_WAIT_FOR_BUG)
async def test_recovers_from_broker_restart(fork, transport):
    """A real broker process is restarted on the same port: every session is gone. The client's
    parked connect is answered (503 server_shutdown, reconnect=handshake) or fails; the client
    retries, gets 402 + reconnect=handshake from the new process, re-handshakes with its
    credentials, re-subscribes and receives what is published afterwards."""
    channel = "/interop/restart"
    async with asyncio.timeout(TEST_TIMEOUT + 15), running_broker("--users", USERS) as process:
        auth = make_auth(fork)
        wire = make_wire_log(fork)
        subscriber = new_client(fork, process.url, transport, auth, extensions=[wire])
        await subscriber.open()
        try:
            await subscriber.subscribe(channel)
            async with new_client(fork, process.url, transport, make_auth(fork, "basic", BOB, BOB_SECRET)) as pub:
                await pub.publish(channel, {"phase": "before"})
            first = await subscriber.receive()
            assert first["data"] == {"phase": "before"}

            wire.mark("restart")
            await process.stop()
            await process.start()
            await wait_until(lambda: connected_after(wire, "restart", 1), "a new handshake and connect")

            # aiocometd must still hold its subscription, to re-send it batched with a /meta/connect.
            assert subscriber.subscriptions == {channel}, (
                "aiocometd forgot its subscription across the restart; wire since the restart:\n"
                + wire.since("restart"))

            # Publish probes until the subscriber, once re-subscribed on the new process, gets one.
            async with new_client(fork, process.url, transport, make_auth(fork, "basic", BOB, BOB_SECRET)) as pub:
                received = None
                for probe in range(30):
                    ack = await pub.publish(channel, {"phase": "probe", "n": probe})
                    assert ack["successful"] is True
                    try:
                        received = await receive_surviving_reconnects(subscriber, fork, 0.3)
                        break
                    except TimeoutError:
                        continue
                assert received is not None, "nothing received after the restart:\n" + wire.since("restart")
                assert received["data"]["phase"] == "probe"
                # Once re-subscribed, nothing published later is lost or reordered.
                for i in range(N):
                    await pub.publish(channel, {"phase": "after", "seq": i})
                after = []
                while len(after) < N:
                    message = await receive_surviving_reconnects(subscriber, fork, 5)
                    if message["data"]["phase"] == "after":
                        after.append(message["data"]["seq"])
            assert after == list(range(N))
        finally:
            await subscriber.close()

        assert auth.handshakes_sent >= 2, process.log()


# ----------------------------------------------------------------------------- interop hazards found


async def raw_publisher(server: Any, user: str = ALICE, password: str = ALICE_SECRET) -> str:
    """Handshake a raw long-polling client (not aiocometd) and return its clientId."""
    response = await server.post("/cometd", json=[{
        "channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"], "id": "1",
        "ext": {"authentication": {"user": user, "password": password}}}])
    [reply] = await response.json()
    assert reply["successful"] is True, reply
    return reply["clientId"]


@pytest.mark.filterwarnings(NG_WAIT_FOR_BUG)  # aiocometd-ng, once an event is taken for its connect reply
async def test_delivered_events_do_not_carry_the_publishers_message_id(make_client, fork, transport):
    """Another client (any Bayeux client: aiocometd, CometD JS...) numbers its messages "0", "1", "2"...
    and so does the subscribing aiocometd client. A delivered event must not carry the publisher's
    `id`: the CometD server resets it for broadcast channels ("to avoid clashes with message-based
    transports such as websocket whose clients may rely on the messageId to match request/responses",
    BayeuxServerImpl.publish). aiocometd's websocket transport resolves its pending /meta/connect
    with any incoming message whose id matches, so an event with the id of that connect is taken as
    its reply: `_connect` then fails with KeyError('successful'), the transport goes CONNECTING and
    re-sends /meta/connect a second later (superseding its own parked one); aiocometd-ng additionally
    raises TransportTimeoutError from receive() while CONNECTING."""
    channel = "/interop/ids"
    async with asyncio.timeout(TEST_TIMEOUT):
        server, broker = await start_app(make_client)
        async with new_client(fork, url_of(server), transport, make_auth(fork, user=BOB, password=BOB_SECRET)) \
                as subscriber:
            await subscriber.subscribe(channel)
            session = only_session(broker)
            parked = await wait_until(lambda: session.parked, "the subscriber's parked /meta/connect")

            publisher_id = await raw_publisher(server)
            response = await server.post("/cometd", json=[
                {"channel": channel, "clientId": publisher_id, "data": {"seq": i}, "id": str(i)} for i in range(10)])
            acks = await response.json()
            assert [a["successful"] for a in acks] == [True] * 10

            received = await receive_n(subscriber, 10)
            if transport == "websocket":
                await asyncio.sleep(1.3)  # longer than aiocometd's 1 s reconnection delay
                still_parked = session.parked is parked
            more = await broker.publish(channel, {"seq": "server"})
            [last] = await receive_n(subscriber, 1)

        assert [m["data"]["seq"] for m in received] == list(range(10))
        assert more == 1 and last["data"] == {"seq": "server"}
        problems = []
        leaked = [m for m in received if "id" in m]
        if leaked:
            problems.append(f"delivered events carry the publisher's message ids: {leaked[:3]}")
        if transport == "websocket" and not still_parked:
            problems.append("the subscriber re-sent /meta/connect: an event was taken as its connect reply")
        assert not problems, "; ".join(problems)


async def test_handshake_refused_during_shutdown_advises_an_interval_aiocometd_can_follow(make_client, fork,
                                                                                         transport):
    """aiocometd sleeps `advice.interval` *seconds* (asyncio.sleep(interval)) before following
    reconnect=handshake (bayeux.md section 5: "Send interval: 0"). When the broker stops, it answers
    the parked /meta/connect with 503 + reconnect=handshake, interval 0, and aiocometd re-handshakes
    at once; a handshake that still reaches the stopping broker (over the still-open websocket, or a
    kept-alive HTTP connection) is refused with advice {reconnect: handshake, interval: 1000}: the
    client then waits 1000 s (16 min) before its next handshake, long after the broker is back."""
    async with asyncio.timeout(TEST_TIMEOUT):
        server, broker = await start_app(make_client)
        auth = make_auth(fork)
        client = new_client(fork, url_of(server), transport, auth)
        await client.open()
        try:
            session = only_session(broker)
            await wait_until(lambda: session.parked is not None or session.sink is not None, "a parked connect")
            await broker.close()  # what the app's on_shutdown does first; the HTTP server still serves here
            await wait_until(lambda: len(auth.handshake_replies) >= 2, "the client's re-handshake reply")
        finally:
            await client.close()

        refused = auth.handshake_replies[1]
        assert refused["successful"] is False
        assert refused["error"].startswith("503:")
        assert refused["advice"]["reconnect"] == "handshake"
        assert refused["advice"].get("interval", 0) == 0, (
            f"aiocometd will sleep {refused['advice']['interval']} s before re-handshaking: {refused}")
