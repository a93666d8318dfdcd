"""The contact center in a cluster: broker processes on one Redis share HTTP sessions and the
contact-center state; one leader runs the engine, the others forward REST calls to it, and a
successor takes over (state intact) when the leader is killed.

Real redis-server (no persistence) and real `python -m cometd_broker serve` subprocesses; the Redis
building blocks (fenced store, sessions, lease) are also tested directly. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from bayeux_helpers import connect, events_in, open_session
from conftest import RunningBroker, free_port, start_broker, wait_listening
from yarl import URL

from channels.auth import User, UserDirectory, hash_password

TOKEN = "media-secret"
TTL = 1.5  # lease seconds: failover within about this
WAIT = 8.0  # seconds: the bound of every wait for an event or a reply
PREFIX = "cometd:db0:cc"  # the contact center's keys: the default namespace (redis_url's database 0), then cc
LEASE = f"{PREFIX}:leader"


def raw_redis(port: int, *command: str) -> bytes:
    """One command over a plain socket (RESP), its raw reply."""
    payload = f"*{len(command)}\r\n" + "".join(f"${len(c.encode())}\r\n{c}\r\n" for c in command)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(payload.encode())
        return sock.recv(65536)


@pytest.fixture
def redis_url(redis_server) -> str:
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    assert raw_redis(redis_server.port, "FLUSHALL").startswith(b"+OK")
    return redis_server.url


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    # One PBKDF2 iteration: logins stay fast on a loaded machine; hashing is tested elsewhere.
    directory = UserDirectory(User(name, hash_password(f"{name}-pw", iterations=1), first_name=name.capitalize(),
                                   agent_id=agent_id) for name, agent_id in (("alice", None), ("bob", "101")))
    path = tmp_path / "users.json"
    directory.save(path)
    return path


@pytest.fixture
async def brokers() -> AsyncIterator[list[RunningBroker]]:
    started: list[RunningBroker] = []
    yield started
    for running in started:
        await asyncio.to_thread(running.stop)


def cluster_flags(redis_url: str, users_file: Path, *extra: str) -> tuple[str, ...]:
    return ("--redis", redis_url, "--users-file", str(users_file), "--media-token", TOKEN,
            "--cluster-lease-ttl", str(TTL), "--base-url", "http://gws.example", "--log-level", "INFO", *extra)


async def start_cluster(brokers: list[RunningBroker], count: int, *flags: str) -> list[RunningBroker]:
    # The event log of a cluster is its Redis (conftest defaults subprocesses to memory:).
    env = {"COMETD_BROKER_EVENT_LOG": flags[flags.index("--redis") + 1]}
    started = await asyncio.gather(*(asyncio.to_thread(start_broker, *flags, env=env) for _ in range(count)))
    brokers.extend(started)
    return list(started)


def leader_pid(redis_port: int) -> int | None:
    reply = raw_redis(redis_port, "GET", LEASE)
    if reply.startswith(b"$-1"):
        return None
    return orjson.loads(reply.split(b"\r\n")[1])["pid"]


async def wait_for_leader(redis_port: int, among: list[RunningBroker]) -> RunningBroker:
    """The one of `among` that holds the lease, once one does."""
    deadline = time.monotonic() + WAIT
    while True:
        pid = leader_pid(redis_port)
        for running in among:
            if running.process.pid == pid:
                return running
        assert time.monotonic() < deadline, f"no leader among {[r.process.pid for r in among]} (lease: {pid})"
        await asyncio.sleep(0.05)


class Desk:
    """An agent desktop: one cookie jar (JSESSIONID), the CSRF token, REST and CometD on any process."""

    def __init__(self, http: aiohttp.ClientSession, user: str) -> None:
        self.http = http
        self.user = user
        self.csrf = ""
        self.client_id = ""
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.cometd_port = 0

    async def login(self, port: int) -> dict[str, Any]:
        auth = "Basic " + base64.b64encode(f"{self.user}:{self.user}-pw".encode()).decode()
        async with self.http.get(f"http://127.0.0.1:{port}/api/v2/me", headers={"Authorization": auth},
                                 timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
            reply = await response.json()
            assert response.status == 200 and reply["statusCode"] == 0, reply
            self.csrf = response.headers.get("X-CSRF-TOKEN", "")  # none with --no-csrf
            assert "JSESSIONID" in response.cookies
        return reply

    async def call(self, port: int, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        headers = {"X-CSRF-TOKEN": self.csrf} if method != "GET" else {}
        async with self.http.request(method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
            return response.status, await response.json()

    async def rest(self, port: int, method: str, path: str, body: Any = None) -> dict[str, Any]:
        status, reply = await self.call(port, method, path, body)
        assert status == 200 and reply["statusCode"] == 0, (port, method, path, status, reply)
        return reply

    async def operate(self, port: int, collection: str, ix_id: str, operation: str, **params: Any) -> int:
        reply = await self.rest(port, "POST", f"/api/v2/me/{collection}/{ix_id}", {"operationName": operation,
                                                                                  **params})
        return reply["referenceId"]

    def _bayeux(self, port: int) -> Callable[[list[dict[str, Any]]], Any]:
        async def send(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            async with self.http.post(f"http://127.0.0.1:{port}/api/v2/notifications", json=batch,
                                      timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
                return await response.json()

        return send

    async def subscribe(self, port: int, *topics: str) -> None:
        """A CometD session on `port`, authenticated by the session cookie alone (no credentials)."""
        self.cometd_port = port
        self.client_id = await open_session(self._bayeux(port), subscriptions=topics)

    async def next_event(self, topic: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while True:
            for i, (channel, data) in enumerate(self.pending):
                if channel == topic and predicate(data):
                    del self.pending[:i + 1]
                    return data
            assert time.monotonic() < deadline, f"no matching event on {topic}: {self.pending}"
            replies = await connect(self._bayeux(self.cometd_port), self.client_id, timeout=200)
            self.pending += [(m["channel"], m["data"]) for m in events_in(replies)]


async def media(http: aiohttp.ClientSession, port: int, path: str, body: Any = None,
                method: str = "POST") -> dict[str, Any]:
    async with http.request(method, f"http://127.0.0.1:{port}/api/v2/media/{path}", json=body,
                            headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
        reply = await response.json()
    assert reply["statusCode"] == 0, (path, reply)
    return reply


def state_of(resource_key: str, ix_id: str, state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda data: data.get(resource_key, {}).get("id") == ix_id and data[resource_key]["state"] == state


def new_message(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda data: any(m.get("text") == text for m in data.get("messages", ()))


def sms_state(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda data: data["channels"] == [{"channel": "sms", "userState": {
        **data["channels"][0]["userState"], "state": state}, "capacity": 1}]


def new_http() -> aiohttp.ClientSession:
    # unsafe: keep cookies of an IP-address host. Cookies ignore the port: both processes get JSESSIONID.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


# ================================================================ subprocesses


async def test_login_on_one_process_and_the_desktop_works_on_every_process(redis_server, redis_url, users_file,
                                                                           brokers):
    a, b = await start_cluster(brokers, 2, *cluster_flags(redis_url, users_file))
    async with new_http() as http:
        alice = Desk(http, "alice")
        me = await alice.login(a.port)
        assert me["user"]["userName"] == "alice"
        # The CometD handshake on B is authenticated by the JSESSIONID A handed out (shared sessions).
        await alice.subscribe(b.port, "/v2/me/channels")
        # A state change through B (with the CSRF token A gave) is notified to the CometD session on B,
        # and one through A too: whoever leads, every request reaches the one engine.
        await alice.rest(b.port, "POST", "/api/v2/me", {"operationName": "StartContactCenterSession",
                                                        "channels": ["sms", "chat"]})
        await alice.rest(a.port, "POST", "/api/v2/me/channels/sms", {"operationName": "Ready"})
        await alice.next_event("/v2/me/channels", sms_state("NotReady"))
        await alice.next_event("/v2/me/channels", lambda d: d["channels"] == [
            {"channel": "sms", "userState": {"state": "Ready", "displayName": "Ready",
                                             "id": d["channels"][0]["userState"]["id"]}, "capacity": 1}])
        for port in (a.port, b.port):  # both processes read the same readiness
            channels = (await alice.rest(port, "GET", "/api/v2/me?subresources=*"))["user"]["channels"]
            assert {c["channel"]: c["userState"]["state"] for c in channels} == {"sms": "Ready", "chat": "NotReady"}

        # A missing CSRF token is refused on either process, as in one process.
        async with http.post(f"http://127.0.0.1:{b.port}/api/v2/me/channels/sms",
                             json={"operationName": "NotReady"}) as response:
            assert response.status == 403 and (await response.json())["statusCode"] == 3

        # The Huawei gateway: signed in through one process, the Guid works through the other.
        gateway = "/agentgateway/resource/onlineagent/101"
        async with http.put(f"http://127.0.0.1:{b.port}{gateway}", json={"password": "bob-pw"}) as response:
            signed_in = await response.json()
            assert signed_in["retcode"] == "0", signed_in
            guid = response.headers["Set-GUID"]
        for expected in ("0", "100-006"):  # signed out, then no longer signed in
            async with http.delete(f"http://127.0.0.1:{a.port}{gateway}/logout", headers={"Guid": guid}) as response:
                assert (await response.json())["retcode"] == expected

        # A body over the size limit is refused where it arrives, as an envelope.
        async with http.post(f"http://127.0.0.1:{b.port}/api/v2/me", data=b"x" * 400_000,
                             headers={"X-CSRF-TOKEN": alice.csrf, "Content-Type": "application/json"}) as response:
            assert response.status == 413 and (await response.json())["statusCode"] == 10

        # Ending the contact-center session ends the HTTP session on every process.
        await alice.rest(a.port, "POST", "/api/v2/me", {"operationName": "EndContactCenterSession"})
        for port in (a.port, b.port):
            status, reply = await alice.call(port, "GET", "/api/v2/me")
            assert status == 401 and reply["statusCode"] == 20, reply

        # A leader stopped gracefully releases the lease: the other process leads at once.
        leader = await wait_for_leader(redis_server.port, [a, b])
        [other] = [r for r in (a, b) if r is not leader]
        await asyncio.to_thread(leader.stop)
        assert "stops leading: shutting down" in leader.log()
        assert leader_pid(redis_server.port) in (None, other.process.pid)
        await alice.login(other.port)
        assert leader_pid(redis_server.port) == other.process.pid


async def test_a_bearer_jwt_works_on_every_process(redis_url, users_file, brokers):
    """Forwarded REST calls keep their Authorization header; the leader verifies it with the same key."""
    import jwt

    secret = "a-shared-secret-of-at-least-32-bytes!"
    a, b = await start_cluster(brokers, 2, *cluster_flags(redis_url, users_file, "--jwt-secret", secret))
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, secret, algorithm="HS256")
    bearer = {"Authorization": f"Bearer {token}"}
    async with new_http() as http:
        for port in (a.port, b.port):
            async with http.post(f"http://127.0.0.1:{port}/api/v2/me", headers=bearer,
                                 json={"operationName": "StartContactCenterSession", "channels": ["sms"]},
                                 timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
                assert response.status == 200 and (await response.json()) == {"statusCode": 0}
                assert "JSESSIONID" not in response.cookies
        alice = Desk(http, "alice")
        async with http.post(f"http://127.0.0.1:{b.port}/api/v2/notifications", timeout=aiohttp.ClientTimeout(
                total=WAIT), json=[{"channel": "/meta/handshake", "version": "1.0",
                                    "supportedConnectionTypes": ["long-polling"],
                                    "ext": {"authentication": {"token": token}}}]) as response:
            [reply] = await response.json()
        assert reply["successful"] is True, reply
        alice.client_id, alice.cometd_port = reply["clientId"], b.port
        await connect(alice._bayeux(b.port), alice.client_id)
        async with http.post(f"http://127.0.0.1:{b.port}/api/v2/notifications", json=[
                {"channel": "/meta/subscribe", "clientId": alice.client_id, "subscription": "/v2/me/channels"}],
                timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
            assert (await response.json())[0]["successful"] is True
        async with http.post(f"http://127.0.0.1:{a.port}/api/v2/me/channels/sms", headers=bearer,
                             json={"operationName": "Ready"}, timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
            assert (await response.json()) == {"statusCode": 0}
        await alice.next_event("/v2/me/channels", sms_state("Ready"))


async def test_sms_flow_alternating_processes_survives_killing_the_leader(redis_server, redis_url, users_file,
                                                                         brokers):
    cluster = await start_cluster(brokers, 2, *cluster_flags(redis_url, users_file, "--no-csrf"))
    leader = await wait_for_leader(redis_server.port, cluster)
    [follower] = [r for r in cluster if r is not leader]
    ports = [leader.port, follower.port]
    async with new_http() as http:
        alice = Desk(http, "alice")
        await alice.login(leader.port)
        await alice.subscribe(follower.port, "/v2/me/smssessions", "/v2/me/chats")
        await alice.rest(leader.port, "POST", "/api/v2/me", {"operationName": "StartContactCenterSession",
                                                             "channels": ["sms", "chat"]})
        await alice.rest(follower.port, "POST", "/api/v2/me/channels/sms", {"operationName": "Ready"})

        # An SMS arrives through one process, every step alternates between the two.
        sms = (await media(http, follower.port, "sms/interactions", {"nickname": "PersonP", "text": "Hello"}))["id"]
        await alice.next_event("/v2/me/smssessions", state_of("smssession", sms, "Invited"))
        refs = [await alice.operate(ports[0], "smssessions", sms, "Accept", nickname="Alice")]
        for n in range(4):
            port = ports[n % 2]
            refs.append(await alice.operate(port, "smssessions", sms, "SendMessage", text=f"agent {n}"))
            sent = await alice.next_event("/v2/me/smssessions", new_message(f"agent {n}"))
            assert sent["referenceId"] == refs[-1]
            await media(http, ports[(n + 1) % 2], f"sms/interactions/{sms}/messages", {"text": f"customer {n}"})
            await alice.next_event("/v2/me/smssessions", new_message(f"customer {n}"))
        assert refs == sorted(refs) and len(set(refs)) == len(refs)
        # A chat that waits in the queue (alice is not Ready for chat).
        queued = (await media(http, leader.port, "chat/interactions", {"nickname": "Queued", "text": "hi"}))["id"]
        transcript = (await media(http, leader.port, f"sms/interactions/{sms}/transcript", method="GET"))["messages"]
        texts = [m.get("text") for m in transcript if m.get("text")]
        assert texts == ["Hello"] + [t for n in range(4) for t in (f"agent {n}", f"customer {n}")]
        view = (await alice.rest(follower.port, "GET", f"/api/v2/me/smssessions/{sms}"))

        # SIGKILL the leader mid-conversation: no shutdown hook, the lease just runs out.
        leader.process.kill()
        await asyncio.to_thread(leader.process.wait, WAIT)
        started = time.monotonic()
        # The first request waits (bounded) for the successor instead of failing.
        after = await alice.rest(follower.port, "GET", f"/api/v2/me/smssessions/{sms}")
        assert time.monotonic() - started < TTL + 3
        assert after == view
        assert leader_pid(redis_server.port) == follower.process.pid
        assert "this process (pid" in follower.log() and "leads" in follower.log()

        # The conversation goes on: transcript complete, referenceIds still increasing, events still flow.
        assert (await media(http, follower.port, f"sms/interactions/{sms}/transcript",
                            method="GET"))["messages"] == transcript
        ref = await alice.operate(follower.port, "smssessions", sms, "SendMessage", text="after failover")
        assert ref > refs[-1]
        sent = await alice.next_event("/v2/me/smssessions", new_message("after failover"))
        assert sent["referenceId"] == ref and sent["messages"][0]["index"] == transcript[-1]["index"] + 1
        await media(http, follower.port, f"sms/interactions/{sms}/messages", {"text": "thanks"})
        await alice.next_event("/v2/me/smssessions", new_message("thanks"))
        # Her contact-center session and readiness were kept in Redis with the state (her desktop stayed
        # logged in): still Ready on sms, and Ready on chat needs no new StartContactCenterSession.
        me = await alice.rest(follower.port, "GET", "/api/v2/me?subresources=*")
        assert {c["channel"]: c["userState"]["state"] for c in me["user"]["channels"]} == {
            "sms": "Ready", "chat": "NotReady"}
        await alice.rest(follower.port, "POST", "/api/v2/me/channels/chat", {"operationName": "Ready"})
        await alice.next_event("/v2/me/chats", state_of("chat", queued, "Invited"))


async def test_without_redis_the_api_answers_503_envelopes_and_recovers(redis_server, redis_url, users_file,
                                                                        brokers):
    [only] = await start_cluster(brokers, 1, *cluster_flags(redis_url, users_file))
    await wait_for_leader(redis_server.port, [only])
    async with new_http() as http:
        alice = Desk(http, "alice")
        await alice.login(only.port)
        redis_server.kill()
        try:
            started = time.monotonic()
            for path in ("/api/v2/me", "/api/v2/me/smssessions"):
                status, reply = await alice.call(only.port, "GET", path)
                assert status == 503 and reply["statusCode"] == 4, reply
                assert "unavailable" in reply["statusMessage"] or "no contact-center leader" in reply["statusMessage"]
            async with http.put(f"http://127.0.0.1:{only.port}/agentgateway/resource/onlineagent/101",
                                json={"password": "x", "phonenum": "1"},
                                timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
                huawei = await response.json()
            assert response.status == 200 and huawei["retcode"] != "0", huawei  # Huawei: HTTP 200, retcode
            assert time.monotonic() - started < TTL + 6  # bounded, never a hang
            assert "Traceback" not in only.log()
        finally:
            redis_server.start()
        # Redis is back (empty: no persistence in this test): a leader is elected, logins work again.
        await wait_for_leader(redis_server.port, [only])
        await alice.login(only.port)


async def test_workers_serve_the_contact_center(redis_url, users_file):
    port = free_port()
    flags = cluster_flags(redis_url, users_file, "--no-csrf")
    with tempfile.NamedTemporaryFile(prefix="workers-", suffix=".log", delete=False) as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cometd_broker", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2", *flags],
            env={**os.environ, "COMETD_BROKER_EVENT_LOG": redis_url}, stdout=log_file, stderr=subprocess.STDOUT)
    running = RunningBroker(f"http://127.0.0.1:{port}/cometd", port, process, log_file.name)
    try:
        await asyncio.to_thread(wait_listening, running, 20)
        deadline = time.monotonic() + 20
        while "listening on" not in running.log():  # the supervisor's line: every worker is ready
            assert time.monotonic() < deadline and process.poll() is None, running.log()
            await asyncio.sleep(0.05)
        # REST on a new connection per request (spread over both workers by the kernel); CometD on one kept
        # connection, because a CometD session lives in one worker.
        rest_http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                          connector=aiohttp.TCPConnector(force_close=True))
        cometd_http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                            connector=aiohttp.TCPConnector(limit=1))
        try:
            alice, desktop = Desk(rest_http, "alice"), Desk(cometd_http, "alice")
            await alice.login(port)
            cometd_http.cookie_jar.update_cookies(rest_http.cookie_jar.filter_cookies(URL(f"http://127.0.0.1:{port}")))
            await desktop.subscribe(port, "/v2/me/channels")
            await alice.rest(port, "POST", "/api/v2/me", {"operationName": "StartContactCenterSession",
                                                          "channels": ["sms"]})
            await desktop.next_event("/v2/me/channels", sms_state("NotReady"))
            for n in range(6):
                state = "Ready" if n % 2 == 0 else "NotReady"
                await alice.rest(port, "POST", "/api/v2/me/channels/sms", {"operationName": state})
                await desktop.next_event("/v2/me/channels", sms_state(state))
                channels = (await alice.rest(port, "GET", "/api/v2/me?subresources=*"))["user"]["channels"]
                assert channels[0]["userState"]["state"] == state
        finally:
            await rest_http.close()
            await cometd_http.close()
        pids = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", running.log())]
        assert len(pids) == 2, running.log()
    finally:
        running.stop()
    assert running.process.returncode in (0, -signal.SIGTERM), running.log()


def test_demo_is_refused_with_redis(redis_url):
    result = subprocess.run([sys.executable, "-m", "cometd_broker", "serve", "--port", str(free_port()),
                             "--redis", redis_url, "--demo"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "COMETD_BROKER_EVENT_LOG": redis_url})
    assert result.returncode == 2 and "--demo runs in one process" in result.stderr, result.stderr


# ================================================================ the Redis building blocks, in process


@pytest.fixture
async def store_factory(redis_url):
    from channels.redis_store import RedisStateStore

    made = []

    def make(lease_value: str) -> RedisStateStore:
        store = RedisStateStore(redis_url, prefix=PREFIX, lease_key=LEASE, lease_value=lease_value)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


async def test_the_store_writes_atomically_and_only_for_the_lease_holder(redis_server, store_factory):
    from channels.redis_store import NotLeader

    assert raw_redis(redis_server.port, "SET", LEASE, "term-1").startswith(b"+OK")
    store = store_factory("term-1")
    await store.apply([("interaction", "a", {"n": 1}), ("interaction", "b", {"n": 2}),
                       ("counter", "referenceId", {"last": 7})])
    await store.apply([("interaction", "a", None), ("interaction", "b", {"n": 3})])
    assert await store.read("interaction") == {"b": {"n": 3}}
    assert await store.read("counter") == {"referenceId": {"last": 7}}
    assert await store.read("nothing") == {}

    # Another process took the lease: the old holder's writes are refused, none of them applied.
    assert raw_redis(redis_server.port, "SET", LEASE, "term-2").startswith(b"+OK")
    with pytest.raises(NotLeader, match="no longer holds"):
        await store.apply([("interaction", "c", {"n": 4}), ("counter", "referenceId", {"last": 8})])
    successor = store_factory("term-2")
    await successor.open()  # what a new leader restores from: every kind, read before the engine is built
    assert successor.load("counter") == {"referenceId": {"last": 7}}
    assert successor.load("interaction") == {"b": {"n": 3}} and successor.load("nothing") == {}
    assert "c" not in await store.read("interaction")


async def test_the_store_groups_concurrent_writes_in_order(redis_server, store_factory):
    assert raw_redis(redis_server.port, "SET", LEASE, "term-1").startswith(b"+OK")
    store = store_factory("term-1")
    await asyncio.gather(*(store.apply([("counter", "n", {"n": i}), ("interaction", str(i), {"i": i})])
                           for i in range(100)))
    assert store.writes == 100 and store.commits < 100  # writes queued during a script share the next one
    assert await store.read("counter") == {"n": {"n": 99}}  # the last write queued is the last applied
    assert len(await store.read("interaction")) == 100


async def test_the_store_holds_back_writers_while_redis_is_paused(redis_server, redis_url):
    """Redis pauses writes (CLIENT PAUSE) for half a second: 100 KB documents queue until the store holds
    its byte bound, then callers wait; once Redis answers again every write lands, in order."""
    from channels.redis_store import RedisStateStore

    assert raw_redis(redis_server.port, "SET", LEASE, "term-1").startswith(b"+OK")
    store = RedisStateStore(redis_url, prefix=PREFIX, lease_key=LEASE, lease_value="term-1",
                            timeout=5.0, max_pending_bytes=1_000_000)
    await store.apply([("counter", "warm", {})])  # the writer task is up
    assert raw_redis(redis_server.port, "CLIENT", "PAUSE", "500", "WRITE").startswith(b"+OK")
    queued: list[asyncio.Future[None]] = []

    async def write(n: int) -> None:
        queued.append(await store.submit([("interaction", f"doc{n}", {"text": "x" * 100_000, "n": n})]))

    writers = [asyncio.create_task(write(n)) for n in range(30)]
    await asyncio.sleep(0.2)
    assert 8 <= len(queued) <= 10, len(queued)  # about 1 MB of the 3 MB offered is held; the rest waits
    await asyncio.wait_for(asyncio.gather(*writers), 10)
    await asyncio.wait_for(asyncio.gather(*queued), 10)
    stored = await store.read("interaction")
    assert sorted(doc["n"] for doc in stored.values()) == list(range(30))
    await store.close()


async def test_the_store_fails_clearly_without_redis():
    from channels.redis_store import RedisStateStore, StoreUnavailable

    store = RedisStateStore(f"redis://127.0.0.1:{free_port()}/0", prefix=PREFIX, lease_key=LEASE,
                            lease_value="x", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unavailable"):
        await store.open()
    with pytest.raises(StoreUnavailable, match="unavailable"):
        await store.apply([("interaction", "a", {"n": 1})])
    assert time.monotonic() - started < 3
    await store.close()


async def test_shared_http_sessions(redis_url):
    from channels.redis_sessions import RedisHttpSessions

    user = User("alice", hash_password("pw", iterations=1), roles=frozenset({"agent", "supervisor"}))
    one = RedisHttpSessions(redis_url, prefix=PREFIX, idle_timeout=0.5, max_per_user=2)
    other = RedisHttpSessions(redis_url, prefix=PREFIX, idle_timeout=0.5, max_per_user=2)  # another process
    try:
        session = await one.create_session(user)
        found = await other.find_session(session.session_id)
        assert found is not None and (found.user_id, found.csrf_token, found.roles) == \
            ("alice", session.csrf_token, frozenset({"agent", "supervisor"}))
        assert await other.find_session("nonsense") is None
        # Use keeps a session alive past its idle timeout; idleness ends it.
        for _ in range(3):
            await asyncio.sleep(0.25)
            assert await one.find_session(session.session_id) is not None
        await asyncio.sleep(0.7)
        assert await other.find_session(session.session_id) is None
        # At most max_per_user per user: the least recently used goes.
        first, second = await one.create_session(user), await one.create_session(user)
        await asyncio.sleep(0.01)
        await one.find_session(first.session_id)
        third = await one.create_session(user)
        assert await other.find_session(second.session_id) is None
        assert await other.find_session(first.session_id) is not None
        assert await other.find_session(third.session_id) is not None
        await other.end_session(first.session_id)
        assert await one.find_session(first.session_id) is None
        await one.end_user("alice")
        assert await other.find_session(third.session_id) is None
    finally:
        await one.close()
        await other.close()


async def test_the_lease_is_exclusive_and_renewed_only_by_its_holder(redis_url):
    import redis.asyncio as aioredis

    from channels.cluster import LeaderLease, lease_url, lease_value

    client = aioredis.Redis.from_url(redis_url)
    try:
        lease = LeaderLease(client, LEASE, ttl=0.4)
        mine, theirs = lease_value("http://127.0.0.1:1"), lease_value("http://127.0.0.1:2")
        assert await lease.acquire(mine) is None
        assert await lease.acquire(theirs) == mine and lease_url(mine) == "http://127.0.0.1:1"
        assert await lease.renew(mine) and not await lease.renew(theirs)
        await lease.release(theirs)  # not theirs to release
        assert await lease.holder() == mine
        await asyncio.sleep(0.6)  # not renewed: it runs out
        assert await lease.holder() is None
        assert await lease.acquire(theirs) is None and not await lease.renew(mine)
        await lease.release(theirs)
        assert await lease.holder() is None
    finally:
        await client.aclose()
