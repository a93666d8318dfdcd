"""A cluster on Redis: broker processes share fan-out through Redis pub/sub and the event log in Redis
Streams, so events cross processes in order and a client resumes on any process, losing nothing.

A real redis-server (started here on a free loopback port, without persistence) and, for the
failure scenarios, real `python -m cometd_broker serve` subprocesses with raw Bayeux clients
(tests/crash_helpers.py). Every wait is bounded; each test stays well under 40 s.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import aiohttp
import orjson
import pytest
import redis
from bayeux_helpers import (
    HttpReply,
    both_http_servers,  # noqa: F401  (the routing tests run on both HTTP paths)
    broker_of,
    connect_message,
    events_in,
    get_raw,
    handshake_message,
    publish_message,
    reply_to,
    send,
    wait_parked,
)
from conftest import USERS_OPTION, LeanTestServer, RunningBroker, free_port, start_broker, wait_listening
from crash_helpers import BayeuxPublisher, Subscriber, Target, delivery_problems, seq_of, wait_for
from redis_helpers import running_redis

from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import ENDPOINT
from cometd_broker.cluster.routing import FORWARDED_BY
from cometd_broker.engine import Outgoing, Published

BUDGET = 30.0  # seconds for a whole subprocess scenario


@pytest.fixture
def redis_url(redis_server) -> str:
    """The shared server, running (a restart test may have restarted it) and empty."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=2) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(64).startswith(b"+OK")
    return redis_server.url


@pytest.fixture
async def two_brokers(aiohttp_client, redis_url):
    """Two in-process brokers on one Redis: (client of A, client of B)."""

    async def make():
        config = BrokerConfig(redis=redis_url, allow_anonymous=True, users=USERS_OPTION)
        return await aiohttp_client(create_app(config))

    return await make(), await make()


def cluster_flags(redis_url: str) -> list[str]:
    return ["--redis", redis_url, "--allow-anonymous", "--log-level", "INFO"]


def cluster_env(redis_url: str) -> dict[str, str]:
    # conftest sets COMETD_BROKER_EVENT_LOG=memory: for every subprocess; a cluster's log is Redis.
    return {"COMETD_BROKER_EVENT_LOG": redis_url}


async def replay_session(client, channel: str, after: int) -> str:
    [reply] = await send(client, handshake_message(ext={"replay": True}))
    assert reply["successful"] is True, reply
    client_id = reply["clientId"]
    await send(client, connect_message(client_id, timeout=0))
    [sub] = await send(client, {"channel": "/meta/subscribe", "clientId": client_id, "subscription": channel,
                                "ext": {"replay": {channel: after}}})
    assert sub["successful"] is True, sub
    return client_id


async def receive(client, client_id: str, count: int, timeout: float = 5.0) -> list[dict]:
    got: list[dict] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got += events_in(await send(client, connect_message(client_id, timeout=200)))
    return got


# ---- in-process: two brokers, one Redis ---------------------------------------------------------


async def test_events_published_on_one_process_reach_subscribers_on_another_in_order(two_brokers):
    a, b = two_brokers
    on_a, on_b = await replay_session(a, "/feed", -1), await replay_session(b, "/feed", -1)
    delivered = []
    for n in range(60):  # alternate publishers: one order for the whole cluster
        broker = broker_of(a if n % 2 else b)
        delivered.append(await broker.publish("/feed", {"n": n}))
    assert delivered == [1] * 60  # each publish reports its own process's one subscriber
    got_a, got_b = await receive(a, on_a, 60), await receive(b, on_b, 60)
    for got in (got_a, got_b):
        assert [e["data"]["n"] for e in got] == list(range(60))
        assert [e["ext"]["replayId"] for e in got] == list(range(1, 61))
    assert events_in(await send(b, connect_message(on_b, timeout=100))) == []  # nothing twice

    # Concurrent publishes from both processes: every process delivers the same order, the ids' order.
    await asyncio.gather(*(broker_of(a if n % 2 else b).publish("/feed", {"n": n}) for n in range(60, 160)))
    got_a, got_b = await receive(a, on_a, 100), await receive(b, on_b, 100)
    assert [e["ext"]["replayId"] for e in got_a] == list(range(61, 161))
    assert [(e["ext"]["replayId"], e["data"]["n"]) for e in got_a] == \
           [(e["ext"]["replayId"], e["data"]["n"]) for e in got_b]
    stats = broker_of(a).engine.stats()
    assert stats["connected"] and stats["received"] >= 160 and stats["fanout_lag_seconds"] >= 0


async def test_a_client_publish_and_per_user_events_cross_processes(two_brokers):
    a, b = two_brokers
    subscriber = await replay_session(b, "/chat", -1)
    [reply] = await send(a, handshake_message())
    publisher = reply["clientId"]
    replies = await send(a, publish_message(publisher, "/chat", {"text": "hi"}))
    assert reply_to(replies, "/chat")["successful"] is True
    [event] = await receive(b, subscriber, 1)
    assert event["data"] == {"text": "hi"} and event["ext"]["replayId"] == 1

    # A per-user event published on A reaches that user's session on B (and only that user).
    [alice] = await send(b, handshake_message(ext={"authentication": {"user": "alice", "password": "alice-secret"}}))
    alice_id = alice["clientId"]
    await send(b, connect_message(alice_id, timeout=0))
    await send(b, {"channel": "/meta/subscribe", "clientId": alice_id, "subscription": "/v2/me/channels"})
    await broker_of(a).publish_to_user("bob", "/v2/me/channels", {"for": "bob"})
    await broker_of(a).publish_to_user("alice", "/v2/me/channels", {"for": "alice"})
    [event] = await receive(b, alice_id, 1)
    assert event["data"] == {"for": "alice"}


async def test_a_batch_of_publishes_is_one_script_call_with_every_reply_in_place(two_brokers):
    a, b = two_brokers
    on_b = await replay_session(b, "/x", -1)
    [sub] = await send(b, {"channel": "/meta/subscribe", "clientId": on_b, "subscription": "/y"})
    assert sub["successful"] is True, sub
    [reply] = await send(a, handshake_message())
    publisher = reply["clientId"]
    engine = broker_of(a).engine
    before = engine.stats()
    batch = [publish_message(publisher, "/x" if n % 3 else "/y", {"n": n}, id=f"p{n}") for n in range(12)]
    batch.insert(5, publish_message(None, "/x", {"n": -1}, id="bad"))  # no session: its error keeps its place
    replies = await send(a, batch)
    assert [r["id"] for r in replies] == [m["id"] for m in batch]
    assert [r["successful"] for r in replies] == [m["id"] != "bad" for m in batch]
    after = engine.stats()
    assert after["published"] - before["published"] == 12
    assert after["publish_calls"] - before["publish_calls"] == 1  # the whole batch: one script call ...
    got = await receive(b, on_b, 12)
    for channel in ("/x", "/y"):
        sent = [m["data"]["n"] for m in batch[:5] + batch[6:] if m["channel"] == channel]
        mine = [e for e in got if e["channel"] == channel]
        assert [e["data"]["n"] for e in mine] == sent  # publish order within each channel ...
        assert [e["ext"]["replayId"] for e in mine] == list(range(1, len(sent) + 1))  # ... and id order
    assert engine.stats()["fanout_messages"] - before["fanout_messages"] == 1  # ... and one fan-out message


async def test_a_batch_is_delivered_locally_before_its_replies_with_one_echo_wait(two_brokers):
    a, _ = two_brokers
    on_a = await replay_session(a, "/z", -1)
    [reply] = await send(a, handshake_message())
    publisher = reply["clientId"]
    broker = broker_of(a)
    before = broker.engine.stats()
    replies = await send(a, [publish_message(publisher, "/z", {"n": n}, id=f"p{n}") for n in range(5)])
    assert [r["successful"] for r in replies] == [True] * 5
    # The replies come after the echo: this process's subscriber has every event queued already.
    assert len(broker.sessions[on_a].queue) == 5
    after = broker.engine.stats()
    assert after["fanout_messages"] - before["fanout_messages"] == 1
    assert after["echo_timeouts"] == before["echo_timeouts"] and after["pending"] == 0


async def test_publish_many_gives_each_event_its_id_and_local_delivery(two_brokers):
    a, _ = two_brokers
    on_a = await replay_session(a, "/m", -1)
    engine = broker_of(a).engine
    events = [Outgoing("/m", "/m", None, orjson.dumps({"channel": "/m", "data": n}), False) for n in range(3)]
    events.append(Outgoing("/n", "/n", None, b'{"channel":"/n","data":0}', False))  # nobody here listens
    results = await engine.publish_many(events)
    assert results == [Published(1, 1), Published(2, 1), Published(3, 1), Published(1, 0)]
    assert [e["data"] for e in await receive(a, on_a, 3)] == [0, 1, 2]
    assert await engine.publish_many([]) == []


async def test_brokers_reach_redis_through_its_unix_socket(aiohttp_client):
    # Brokers on Redis's host may use its Unix socket (cheaper than loopback TCP): the engine's link
    # (script calls and the fan-out subscription) and the event log's pool (replay reads) both.
    socket_path = os.path.join(tempfile.mkdtemp(prefix="redis-sock-"), "redis.sock")
    with running_redis("--unixsocket", socket_path, "--unixsocketperm", "700"):
        url = f"unix://{socket_path}?db=2"
        config = BrokerConfig(redis=url, allow_anonymous=True, users=USERS_OPTION)
        a, b = await aiohttp_client(create_app(config)), await aiohttp_client(create_app(config))
        on_b = await replay_session(b, "/feed", -1)
        for n in range(20):
            await broker_of(a).publish("/feed", {"n": n})
        got = await receive(b, on_b, 20)
        assert [(e["ext"]["replayId"], e["data"]["n"]) for e in got] == [(n + 1, n) for n in range(20)]
        resumed = await replay_session(a, "/feed", 15)  # read back from the log, on the other process
        assert [e["data"]["n"] for e in await receive(a, resumed, 5)] == [15, 16, 17, 18, 19]
        assert broker_of(a).engine.stats()["connected"] and broker_of(b).engine.stats()["connected"]
        keys = redis.Redis(unix_socket_path=socket_path, db=2).keys("cometd:*:log:*")
        assert keys == [b"cometd:db2:log:/feed"]  # in the URL's database, and its namespace


async def test_a_client_whose_owner_is_gone_gets_402_and_resumes_there_by_replay(two_brokers, redis_url):
    a, b = two_brokers
    on_a = await replay_session(a, "/feed", -1)
    for n in range(5):
        await broker_of(a).publish("/feed", {"n": n})
    seen = await receive(a, on_a, 5)
    last_id = seen[-1]["ext"]["replayId"]
    router_a = a.app[ENDPOINT].router
    tag, dead_address = router_a.tag, router_a.address
    await a.close()  # A stops (its registration goes) ...
    # ... and, as after a SIGKILL, its registration is back, naming a port nobody listens on.
    redis.Redis.from_url(redis_url).set(router_a.key(tag), dead_address, px=10_000)
    for n in range(5, 10):  # published while the client is moving to B
        await broker_of(b).publish("/feed", {"n": n})

    replies = await send(b, connect_message(on_a, timeout=0))
    connect = reply_to(replies, "/meta/connect")
    assert connect["successful"] is False and connect["error"].startswith("402::")
    assert connect["advice"]["reconnect"] == "handshake"
    assert broker_of(b).stats.forward_failures == 1 and broker_of(b).stats.forwarded == 0

    on_b = await replay_session(b, "/feed", last_id)
    got = await receive(b, on_b, 5)
    assert [e["data"]["n"] for e in seen + got] == list(range(10))
    assert events_in(await send(b, connect_message(on_b, timeout=100))) == []


async def test_ids_of_another_redis_log_are_not_recovered_on_any_process(two_brokers, redis_url):
    a, b = two_brokers
    [hello] = await send(a, handshake_message(ext={"replay": True}))
    epoch = hello["ext"]["replayEpoch"]
    [hello_b] = await send(b, handshake_message(ext={"replay": True}))
    assert hello_b["ext"]["replayEpoch"] == epoch  # one log, one epoch, whichever process answers
    on_a = await replay_session(a, "/feed", -1)
    for n in range(5):
        await broker_of(a).publish("/feed", {"n": n})
    last_id = (await receive(a, on_a, 5))[-1]["ext"]["replayId"]

    # An id above the newest the log has issued: recovered false, on the other process too, with no epoch.
    for n in range(3):
        await broker_of(a).publish("/other", {"n": n})
    on_b = await replay_session(b, "/other", 5)
    assert broker_of(b).stats.replay_misses == 1
    assert [e["ext"]["replayId"] for e in await receive(b, on_b, 3)] == [1, 2, 3]

    # Redis loses its data (a restart without persistence): the log is a new one, with a new epoch.
    redis.Redis.from_url(redis_url).flushall()
    for n in range(5, 8):
        await broker_of(a).publish("/feed", {"n": n})
    [reply] = await send(b, handshake_message(ext={"replay": True}))
    client_id = reply["clientId"]
    assert reply["ext"]["replayEpoch"] != epoch
    await send(b, connect_message(client_id, timeout=0))
    [sub] = await send(b, {"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/feed",
                           "ext": {"replay": {"/feed": last_id}, "replayEpoch": epoch}})
    assert sub["ext"]["replay"]["recovered"] is False, sub
    assert sub["ext"]["replay"]["epoch"] == reply["ext"]["replayEpoch"]
    assert [e["data"]["n"] for e in await receive(b, client_id, 3)] == [5, 6, 7]  # what the new log has


# ---- session routing: a long-poll reaching a process that does not own its session is forwarded --------


@pytest.fixture
async def routed_brokers(aiohttp_client, http_server, redis_url):
    """Two in-process brokers on one Redis, on the HTTP path of `http_server` (lean and aiohttp). Their
    clients share one cookie jar: a client sees one origin, whichever process its connection reaches,
    and a session used with its browser cookie needs it on every request (http/browser.py)."""
    jar = aiohttp.CookieJar(unsafe=True)

    async def make():
        app = create_app(BrokerConfig(redis=redis_url, allow_anonymous=True, users=USERS_OPTION))
        return await aiohttp_client(LeanTestServer(app) if http_server == "lean" else app, cookie_jar=jar)

    return await make(), await make()


async def test_a_long_poll_client_straddling_two_processes_gets_every_message_once_without_rehandshake(
        routed_brokers):
    a, b = routed_brokers
    client_id = await replay_session(a, "/chat", -1)  # the session lives on A
    assert client_id[:8] == a.app[ENDPOINT].router.tag != b.app[ENDPOINT].router.tag

    async def hold_on_b() -> list[dict]:  # the held connect on the other connection, reaching B
        return await send(b, connect_message(client_id, timeout=5000))

    got: list[dict] = []
    for n in range(6):
        held = asyncio.create_task(hold_on_b())
        await wait_parked(broker_of(a), client_id)  # held on A, through B
        publisher = a if n % 2 else b  # the client's own publishes, to A or B
        [ack] = await send(publisher, publish_message(client_id, "/chat", {"n": n}))
        assert ack["successful"] is True, ack
        replies = await asyncio.wait_for(held, 5)
        assert reply_to(replies, "/meta/connect")["successful"] is True
        got += events_in(replies)
    got += events_in(await send(b, connect_message(client_id, timeout=0)))
    assert [e["data"]["n"] for e in got] == list(range(6))
    assert broker_of(a).stats.handshakes == 1 and broker_of(b).stats.handshakes == 0
    assert broker_of(a).stats.unknown_sessions == broker_of(b).stats.unknown_sessions == 0
    assert broker_of(b).stats.forwarded == 10 and broker_of(b).stats.forward_failures == 0
    async with b.get("/metrics") as response:
        assert 'cometd_forwarded_requests_total{result="forwarded"} 10\n' in await response.text()


async def test_a_callback_polling_client_straddling_two_processes_is_relayed_with_its_jsonp_wrapping(
        routed_brokers):
    a, b = routed_brokers
    cp = "callback-polling"

    async def jsonp(client, message: dict, callback: str = "cb") -> tuple[HttpReply, list[dict]]:
        reply = await get_raw(client, {"message": orjson.dumps([message]).decode(), "jsonp": callback})
        assert reply.status == 200, reply.text
        return reply, reply.jsonp(callback)

    direct, [handshake] = await jsonp(a, handshake_message(connection_types=[cp], ext={"replay": True}))
    client_id = handshake["clientId"]  # the session lives on A
    assert client_id[:8] == a.app[ENDPOINT].router.tag
    await jsonp(a, connect_message(client_id, connection_type=cp, timeout=0))
    _, [sub] = await jsonp(b, {"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/chat",
                               "ext": {"replay": {"/chat": -1}}})  # through B
    assert sub["successful"] is True, sub

    got: list[dict] = []
    for n in range(6):  # the held connect reaches B, the client's publishes A or B
        held = asyncio.create_task(jsonp(b, connect_message(client_id, connection_type=cp, timeout=5000),
                                         callback=f"jQuery_{n}"))
        await wait_parked(broker_of(a), client_id)  # held on A, through B
        _, [ack] = await jsonp(a if n % 2 else b, publish_message(client_id, "/chat", {"n": n}))
        assert ack["successful"] is True, ack
        relayed, replies = await asyncio.wait_for(held, 5)  # unwrapped with its own callback name
        assert reply_to(replies, "/meta/connect")["successful"] is True
        assert relayed.headers["Content-Type"] == direct.headers["Content-Type"]
        got += events_in(replies)
    assert [e["data"]["n"] for e in got] == list(range(6))
    assert broker_of(a).stats.handshakes == 1 and broker_of(b).stats.handshakes == 0
    assert broker_of(a).stats.unknown_sessions == broker_of(b).stats.unknown_sessions == 0
    assert broker_of(b).stats.forwarded == 10 and broker_of(b).stats.forward_failures == 0
    # A handshake reaching B is answered there, never relayed.
    _, [other] = await jsonp(b, handshake_message(connection_types=[cp]))
    assert other["clientId"][:8] == b.app[ENDPOINT].router.tag and broker_of(b).stats.forwarded == 10


async def test_a_relayed_long_poll_from_a_listed_origin_carries_cors_headers_once(make_client, redis_url):
    crm = "https://crm.example.com"
    a, b = (await make_client(redis=redis_url, allow_anonymous=True, allowed_origins=crm),
            await make_client(redis=redis_url, allow_anonymous=True, allowed_origins=crm))
    client_id = await replay_session(a, "/chat", -1)  # the session lives on A
    for message in (connect_message(client_id, timeout=0), publish_message(client_id, "/chat", {"n": 1})):
        async with b.post("/cometd", data=orjson.dumps([message]),
                          headers={"Origin": crm, "Content-Type": "application/json"}) as response:
            assert response.status == 200
            assert response.headers.getall("Access-Control-Allow-Origin") == [crm]
            assert response.headers.getall("Access-Control-Allow-Credentials") == ["true"]
            assert response.headers.getall("Vary") == ["Origin"]
    assert broker_of(b).stats.forwarded == 2
    async with b.post("/cometd", data=orjson.dumps([connect_message(client_id, timeout=0)]),
                      headers={"Origin": "https://evil.example", "Content-Type": "application/json"}) as response:
        assert response.status == 403  # refused where it arrived, never relayed
    assert broker_of(b).stats.forwarded == 2


async def test_a_forwarding_header_from_a_client_grants_nothing(routed_brokers):
    a, b = routed_brokers
    router_a, router_b = a.app[ENDPOINT].router, b.app[ENDPOINT].router
    client_id = await replay_session(a, "/chat", -1)
    # On the public port the header is ignored: the request is forwarded to A as any other ...
    for spoofed in (router_b.tag, router_a.tag, "x"):
        replies = await send(b, connect_message(client_id, timeout=0), headers={FORWARDED_BY: spoofed})
        assert reply_to(replies, "/meta/connect")["successful"] is True
    assert broker_of(b).stats.forwarded == 3
    # ... and a clientId of no live process is answered 402 however the request is labelled.
    stranger = "0badc0de" + "0" * 40
    replies = await send(b, connect_message(stranger, timeout=0), headers={FORWARDED_BY: router_b.tag})
    assert reply_to(replies, "/meta/connect")["error"].startswith("402::")

    # The private port serves only forwarded long-polls, and never forwards them again.
    private = f"http://{router_a.address}/cometd"
    async with aiohttp.ClientSession() as http:
        async with http.post(private, json=[connect_message(client_id, timeout=0)]) as response:
            assert response.status == 400  # no forwarding header: not from a broker process
        async with http.get(private) as response:
            assert response.status == 400
        b_session = await replay_session(b, "/chat", -1)
        async with http.post(private, json=[connect_message(b_session, timeout=0)],
                             headers={FORWARDED_BY: router_b.tag}) as response:
            [connect] = await response.json()
            assert connect["error"].startswith("402::")  # answered by A itself: no forwarding loop
    assert broker_of(a).stats.forwarded == 0


async def test_a_burst_of_long_polls_for_one_owner_costs_one_lookup_and_a_failed_lookup_costs_no_402(
        routed_brokers):
    a, b = routed_brokers
    router_b = b.app[ENDPOINT].router
    client_ids = [await replay_session(a, "/feed", -1) for _ in range(40)]
    lookups = 0
    real_get = router_b._redis.get

    async def counted_get(key):
        nonlocal lookups
        lookups += 1
        await asyncio.sleep(0.05)  # a Redis slow under load: the burst arrives while it looks up
        return await real_get(key)

    router_b._redis.get = counted_get
    # Forty sessions of A reach B at once (as after a restart of B, or a refresh falling due).
    replies = await asyncio.gather(*(send(b, connect_message(c, timeout=0)) for c in client_ids))
    assert all(reply_to(r, "/meta/connect")["successful"] for r in replies)
    assert lookups == 1 and broker_of(b).stats.forwarded == 40

    # A's registration falls due for a refresh while Redis fails: B keeps routing to A, no 402.
    async def failing_get(key):
        nonlocal lookups
        lookups += 1
        raise redis.ConnectionError("redis is busy")

    router_b._redis.get = failing_get
    router_b._owners = {tag: (address, 0.0) for tag, (address, _) in router_b._owners.items()}
    replies = await asyncio.gather(*(send(b, connect_message(c, timeout=0)) for c in client_ids))
    assert all(reply_to(r, "/meta/connect")["successful"] for r in replies), replies
    assert broker_of(b).stats.forward_failures == 0 and lookups == 2  # one refresh, in the background
    router_b._redis.get = real_get


async def test_without_redis_reachable_publishes_fail_clearly(aiohttp_client):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    broker_config = BrokerConfig(redis=url, allow_anonymous=True)
    client = await aiohttp_client(create_app(broker_config))  # starts anyway, retrying in the background
    [reply] = await send(client, handshake_message())
    replies = await send(client, publish_message(reply["clientId"], "/chat", {"text": "hi"}))
    failed = reply_to(replies, "/chat")
    assert failed["successful"] is False and failed["error"].startswith("503:"), failed
    assert "redis" in failed["error"]
    batch = [publish_message(reply["clientId"], "/chat", {"n": n}, id=f"p{n}") for n in range(3)]
    replies = await send(client, batch)  # a batch fails publish by publish, each reply in its place
    assert [(r["id"], r["successful"], r["error"][:4]) for r in replies] == [(f"p{n}", False, "503:") for n in range(3)]


# ---- subprocesses: SIGKILL a process, restart Redis, --workers -----------------------------------


def start_cluster_broker(redis_url: str) -> RunningBroker:
    return start_broker(*cluster_flags(redis_url), env=cluster_env(redis_url))


class Scenario:
    """Two publishers (one per process, each on its own channel) and subscribers on both processes
    for both channels: every event crosses processes and every subscriber must get each exactly once."""

    def __init__(self, url_a: str, url_b: str, seqs: int) -> None:
        deadline = time.monotonic() + BUDGET
        self.targets = {"a": Target(url_a, deadline), "b": Target(url_b, deadline)}
        self.publishers = {name: BayeuxPublisher(target, seqs, channel=f"/feed-{name}")
                           for name, target in self.targets.items()}
        self.subscribers = [Subscriber(f"{where}:/feed-{channel}-{i}", self.targets[where], f"/feed-{channel}")
                            for where in "ab" for channel in "ab" for i in range(2)]
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(s.run(), name=s.name) for s in self.subscribers]
        await wait_for(lambda: all(s.client_id for s in self.subscribers), 10, "every subscriber to subscribe")
        self.publishing = [asyncio.create_task(p.run(), name=f"publish-{n}") for n, p in self.publishers.items()]
        self.tasks += self.publishing

    def acked(self) -> int:
        return min(len(p.acked) for p in self.publishers.values())

    async def finish(self) -> list[str]:
        deadline = self.targets["a"].deadline
        try:
            for task in self.publishing:
                await asyncio.wait_for(task, timeout=max(1.0, deadline - time.monotonic()))
            for name, publisher in self.publishers.items():
                assert publisher.acked == list(range(publisher.count)), f"publisher {name} ran out of time"
            last = {s.name: self.publishers[s.channel[-1]].count - 1 for s in self.subscribers}
            await wait_for(lambda: all(last[s.name] in {seq_of(e) for e in s.events} for s in self.subscribers),
                           max(1.0, deadline - time.monotonic()), "every subscriber to receive the last seq")
            await asyncio.sleep(0.3)  # anything that would arrive twice arrives now
        finally:
            for s in self.subscribers:
                s.stopping = True
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        return [p for s in self.subscribers for p in delivery_problems(s, self.publishers[s.channel[-1]])]


async def test_sigkill_one_process_under_load_every_client_resumes_on_the_other(redis_url):
    a, b = await asyncio.gather(asyncio.to_thread(start_cluster_broker, redis_url),
                                asyncio.to_thread(start_cluster_broker, redis_url))
    try:
        scenario = Scenario(a.url, b.url, seqs=200)
        await scenario.start()
        await wait_for(lambda: scenario.acked() >= 70, 15, "70 acknowledged publishes on each process")
        a.process.kill()  # SIGKILL: parked connects break, in-flight publishes are ambiguous
        a.process.wait(timeout=5)
        scenario.targets["a"].url = b.url  # the load balancer sends A's clients to B from now on
        problems = await scenario.finish()
        assert problems == [], "\n".join(problems) + "\n--- B's log:\n" + b.log()[-3000:]
        moved = [s for s in scenario.subscribers if s.name.startswith("a:")]
        assert all(s.handshakes >= 2 for s in moved), [(s.name, s.handshakes) for s in moved]
        # Resumed from the shared log: every resume was covered (nothing trimmed).
        assert all(r.get("recovered") is True for s in moved for r in s.replay_replies[1:])
    finally:
        a.stop()
        b.stop()


async def test_sigkill_of_the_owner_during_a_forwarded_connect_gets_402_and_the_client_resumes_by_replay(redis_url):
    a, b = await asyncio.gather(asyncio.to_thread(start_cluster_broker, redis_url),
                                asyncio.to_thread(start_cluster_broker, redis_url))
    try:
        async with aiohttp.ClientSession() as http:
            async def post(url: str, body: list[dict]) -> list[dict]:
                async with asyncio.timeout(8), http.post(url, json=body) as response:
                    return await response.json()

            async def session_on(url: str, after: int) -> str:
                [reply] = await post(url, [handshake_message(ext={"replay": True})])
                client_id = reply["clientId"]
                await post(b.url, [connect_message(client_id, timeout=0)])  # through B, wherever it lives
                [sub] = await post(url, [{"channel": "/meta/subscribe", "clientId": client_id,
                                          "subscription": "/feed", "ext": {"replay": {"/feed": after}}}])
                assert sub["successful"] is True, sub
                return client_id

            [publisher] = await post(b.url, [handshake_message()])

            async def publish(n: int) -> None:
                [ack] = await post(b.url, [publish_message(publisher["clientId"], "/feed", {"n": n})])
                assert ack["successful"] is True, ack

            on_a = await session_on(a.url, -1)  # its connects reach B and are forwarded to A
            got: list[dict] = []
            for n in range(5):
                await publish(n)
            while len(got) < 5:
                replies = await post(b.url, [connect_message(on_a, timeout=1000)])
                assert reply_to(replies, "/meta/connect")["successful"] is True, replies
                got += events_in(replies)
            held = asyncio.create_task(post(b.url, [connect_message(on_a, timeout=5000)]))
            await asyncio.sleep(0.5)  # held on A, through B
            a.process.kill()
            a.process.wait(timeout=5)
            started = time.monotonic()
            connect = reply_to(await held, "/meta/connect")  # the owner dropped it: B answers, at once
            assert connect["error"].startswith("402::") and connect["advice"]["reconnect"] == "handshake"
            assert time.monotonic() - started < 2.0
            for n in range(5, 10):
                await publish(n)

            on_b = await session_on(b.url, got[-1]["ext"]["replayId"])  # resumes on B by replay
            async with asyncio.timeout(5):
                while len(got) < 10:
                    got += events_in(await post(b.url, [connect_message(on_b, timeout=500)]))
            got += events_in(await post(b.url, [connect_message(on_b, timeout=300)]))
            assert [e["data"]["n"] for e in got] == list(range(10))
            assert "session router: forwarding to" in b.log(), b.log()[-2000:]
    finally:
        a.stop()
        b.stop()


async def test_redis_restarted_brokers_reconnect_say_so_and_delivery_continues(redis_server, redis_url):
    a, b = await asyncio.gather(asyncio.to_thread(start_cluster_broker, redis_url),
                                asyncio.to_thread(start_cluster_broker, redis_url))
    try:
        scenario = Scenario(a.url, b.url, seqs=150)
        await scenario.start()
        await wait_for(lambda: scenario.acked() >= 50, 15, "50 acknowledged publishes on each process")
        redis_server.kill()
        await wait_for(lambda: all("redis connection lost" in broker.log() for broker in (a, b)), 5,
                       "both brokers to log the lost connection")
        failures = {name: p.failures for name, p in scenario.publishers.items()}
        await asyncio.sleep(0.5)
        assert all(p.failures > failures[name] for name, p in scenario.publishers.items()), \
            "publishes kept succeeding while Redis was down"
        await asyncio.to_thread(redis_server.start)  # same port, empty: it lost its data
        await wait_for(lambda: all("redis reconnected" in broker.log() for broker in (a, b)), 10,
                       "both brokers to log that they reconnected")
        problems = await scenario.finish()
        assert problems == [], "\n".join(problems) + "\n--- A's log:\n" + a.log()[-3000:]
        for broker in (a, b):
            log = broker.log()
            assert re.search(r"WARNING cometd_broker\.engine: redis connection lost .*reconnecting", log), log
            assert re.search(r"INFO cometd_broker\.engine: redis reconnected after", log), log
    finally:
        a.stop()
        b.stop()


def test_workers_need_redis(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cometd_broker", "serve", "--workers", "2",
                             "--port", str(free_port())], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "workers > 1 needs redis" in result.stderr


async def test_workers_share_the_port_and_events_cross_them(redis_url):
    port = free_port()
    with tempfile.NamedTemporaryFile(prefix="workers-", suffix=".log", delete=False) as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cometd_broker", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2", *cluster_flags(redis_url)],
            env={**os.environ, **cluster_env(redis_url)}, stdout=log_file, stderr=subprocess.STDOUT)
    running = RunningBroker(f"http://127.0.0.1:{port}/cometd", port, process, log_file.name)
    try:
        await asyncio.to_thread(wait_listening, running, 20)
        await wait_for(lambda: "listening on" in running.log(), 20, "the supervisor's listening line")
        pids = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", running.log())]
        assert len(pids) == 2 and running.log().count("listening on") == 1, running.log()
        with open(f"/proc/{pids[0]}/cmdline", "rb") as handle:
            argv = handle.read().decode().split("\0")
        metrics_dir = argv[argv.index("--worker-metrics-dir") + 1]  # the supervisor's, shared by the workers
        assert sorted(os.listdir(metrics_dir)) == ["1.prom", "2.prom"]

        # One keep-alive connection per client, so each client stays on the worker it reached.
        # Two keep-alive connections per client, as browsers use: the kernel puts each on a worker of
        # its choice, so many clients hold their connect on one worker and publish on the other.
        def connection() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, force_close=False),
                                         cookie_jar=aiohttp.DummyCookieJar())

        sessions = [connection() for _ in range(12)]  # handshake, subscribe, publish
        holders = [connection() for _ in range(12)]  # the held /meta/connect
        try:
            async def post(http: aiohttp.ClientSession, body: list[dict]) -> list[dict]:
                async with asyncio.timeout(5), http.post(running.url, json=body) as response:
                    return await response.json()

            client_ids = []
            for http, holder in zip(sessions, holders, strict=True):
                [reply] = await post(http, [handshake_message(ext={"replay": True})])
                client_ids.append(reply["clientId"])
                await post(holder, [connect_message(reply["clientId"], timeout=0)])
                await post(http, [{"channel": "/meta/subscribe", "clientId": reply["clientId"],
                                   "subscription": "/feed", "ext": {"replay": {"/feed": -1}}}])
            # Which worker holds which session: each worker's clientIds start with its own tag.
            tags = sorted({client_id[:8] for client_id in client_ids})
            assert len(tags) == 2, "every connection reached the same worker: the port is not shared"

            publisher = next(i for i, c in enumerate(client_ids) if c[:8] != client_ids[0][:8])
            await post(sessions[publisher], [publish_message(client_ids[publisher], "/feed", {"n": 1})])
            for i, holder in enumerate(holders):
                replies: list[dict] = []
                async with asyncio.timeout(5):
                    while not events_in(replies):
                        replies = await post(holder, [connect_message(client_ids[i], timeout=500)])
                        assert reply_to(replies, "/meta/connect")["successful"] is True, (i, replies)
                assert [e["data"] for e in events_in(replies)] == [{"n": 1}], (i, replies)
            # Some requests reached the worker that does not own their session and were relayed.
            await _worker_metric(running.port, 'cometd_forwarded_requests_total{result="forwarded"}',
                                 until=lambda values: sum(values) > 0)
            handshakes = await _worker_metric(running.port, 'cometd_handshakes_total{result="accepted"}',
                                              until=lambda values: sum(values) == 12)
            assert all(count > 0 for count in handshakes), handshakes  # both workers took sessions
        finally:
            for http in sessions + holders:
                await http.close()

        process.send_signal(signal.SIGTERM)  # the supervisor forwards it and waits for its workers
        assert await asyncio.to_thread(process.wait, 15) == 0, running.log()
        log = running.log()
        assert "cometd-broker: stopping 2 workers on SIGTERM" in log, log
        assert re.search(r"worker 1: stopping on SIGTERM: \d+ client\(s\) connected", log), log
        assert re.search(r"worker 2: stopped in \d+\.\d\d s", log), log
        assert re.search(r"\ncometd-broker: stopped in \d+\.\d\d s\n", log), log
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), f"worker {pid} outlived the supervisor"
        assert not os.path.exists(metrics_dir)
    finally:
        running.stop()


async def _worker_metric(port: int, sample: str, until=lambda values: True) -> list[float]:
    """`sample`'s value in each worker, from one scrape of the shared port, which answers for every
    worker (labelled worker="1", "2"). A sibling's page is up to 2 s old: scrape until `until` holds."""
    name, _, labels = sample.partition("{")
    async with asyncio.timeout(10):
        while True:
            # A new connection each time: the kernel hands it to either worker.
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            assert text.count(f"# TYPE {name} ") == 1, text  # one family, every worker's samples in it
            values = {}
            for line in text.splitlines():
                found = re.fullmatch(r'(\w+)\{worker="(\d+)",?(.*) (\S+)', line)
                if found and found[1] == name and found[3] == labels:
                    values[found[2]] = float(found[4])
            if sorted(values) == ["1", "2"] and until(list(values.values())):
                return [values["1"], values["2"]]
            await asyncio.sleep(0.2)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


async def test_a_process_that_missed_fan_out_messages_catches_up_from_the_log(two_brokers, redis_url):
    """B's subscription alone drops (a network blip, or Redis dropping a slow subscriber) while A
    keeps publishing: B's replayed sessions get the events it missed from the log, in order, once."""
    a, b = two_brokers
    broker_a, broker_b = broker_of(a), broker_of(b)
    on_b = await replay_session(b, "/feed", -1)
    for n in range(10):
        await broker_a.publish("/feed", {"n": n})
    engine_b = broker_b.engine
    engine_b._backoff = (1.0, 1.0)  # stay unsubscribed long enough for A to publish meanwhile

    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(redis_url)
    try:
        clients = await admin.client_list(_type="pubsub")
        [mine] = [c for c in clients if c["name"] == broker_b.event_log.client_name]
        await admin.client_kill_filter(_id=mine["id"])
    finally:
        await admin.aclose()
    await wait_for(lambda: not engine_b.connected, 5, "B to notice its lost subscription")
    for n in range(10, 40):
        await broker_a.publish("/feed", {"n": n})  # B is not subscribed: it misses these live
    await wait_for(lambda: engine_b.connected, 5, "B to resubscribe")
    for n in range(40, 50):
        await broker_a.publish("/feed", {"n": n})
    got = await receive(b, on_b, 50)
    assert [e["data"]["n"] for e in got] == list(range(50))
    assert [e["ext"]["replayId"] for e in got] == list(range(1, 51))
    assert events_in(await send(b, connect_message(on_b, timeout=100))) == []
    assert engine_b.reconnects == 1 and engine_b.disconnects == 1
