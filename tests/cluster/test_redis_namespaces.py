"""Deployments sharing one Redis server share nothing: not a key, not a pub/sub channel.

Staging and production on databases 0 and 1, or two tenants on one database with two
`--redis-prefix`es: Redis separates keys by database, but pub/sub channels are global to the server,
so every key and channel of a deployment starts with its namespace, `{prefix}:db{N}` (redis_names.py).
A real redis-server; the brokers in process, the contact center and the events tool as subprocesses.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis
from bayeux_helpers import broker_of, connect_message, events_in, handshake_message, reply_to, send
from conftest import USERS_OPTION, RunningBroker, start_broker

from channels.auth import User, UserDirectory, hash_password
from channels.cluster import ClusterOptions
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import ENDPOINT
from cometd_broker.config import resolve
from cometd_broker.redis_names import prefix_error, redis_database, redis_namespace

WAIT = 8.0  # seconds: the bound of every wait for a reply, a leader or a subprocess


@pytest.fixture
def redis_port(redis_server) -> int:
    """The shared server, running and empty (every database)."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    redis.Redis(port=redis_server.port).flushall()
    return redis_server.port


@dataclass
class Deployment:
    """One deployment's brokers (in process) on the shared Redis: its URL, prefix and namespace."""

    url: str
    prefix: str
    processes: list  # aiohttp TestClients

    @property
    def namespace(self) -> str:
        return f"{self.prefix}:db{redis_database(self.url)}"


# Two deployments, apart by their database or by their prefix on one database.
APART = [pytest.param((0, "cometd"), (1, "cometd"), id="two-databases"),
         pytest.param((0, "staging"), (0, "production"), id="one-database-two-prefixes")]


@pytest.fixture
def deploy(aiohttp_client, redis_port):
    async def start(db: int, prefix: str, processes: int = 1) -> Deployment:
        url = f"redis://127.0.0.1:{redis_port}/{db}"
        config = BrokerConfig(redis=url, redis_prefix=prefix, allow_anonymous=True, users=USERS_OPTION)
        jar = aiohttp.CookieJar(unsafe=True)  # one browser: it sends its cookie to whichever process it reaches
        return Deployment(url, prefix, [await aiohttp_client(create_app(config), cookie_jar=jar)
                                        for _ in range(processes)])

    return start


async def replay_session(client, channel: str, after: int = -1) -> str:
    """A session subscribed to `channel` with replay: new events (-1), or all retained ones (-2)."""
    [reply] = await send(client, handshake_message(ext={"replay": True}))
    client_id = reply["clientId"]
    await send(client, connect_message(client_id, timeout=0))
    [sub] = await send(client, {"channel": "/meta/subscribe", "clientId": client_id, "subscription": channel,
                                "ext": {"replay": {channel: after}}})
    assert sub["successful"] is True, sub
    return client_id


async def receive(client, client_id: str, count: int) -> list[dict]:
    """`count` events, then a short connect that must bring nothing more."""
    got: list[dict] = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            got += events_in(await send(client, connect_message(client_id, timeout=200)))
    assert events_in(await send(client, connect_message(client_id, timeout=300))) == []
    return got


def keys_of(port: int, db: int) -> list[str]:
    return sorted(key.decode() for key in redis.Redis(port=port, db=db).scan_iter(count=1000))


# ---- the broker: fan-out, event log, session routing ----------------------------------------------------


@pytest.mark.parametrize(("first", "second"), APART)
async def test_a_subscriber_receives_nothing_published_by_the_other_deployment(deploy, redis_port, first, second):
    one, other = await deploy(*first, processes=2), await deploy(*second)
    assert one.namespace != other.namespace
    on_one = [await replay_session(process, "/feed") for process in one.processes]
    on_other = await replay_session(other.processes[0], "/feed")
    for n in range(3):
        await broker_of(one.processes[n % 2]).publish("/feed", {"from": "one", "n": n})
    for n in range(2):
        await broker_of(other.processes[0]).publish("/feed", {"from": "other", "n": n})

    # Each deployment's subscribers (on every process of it) see its events only, its ids from 1.
    for process, client_id in zip(one.processes, on_one, strict=True):
        got = await receive(process, client_id, 3)
        assert [(e["data"]["from"], e["ext"]["replayId"]) for e in got] == [("one", 1), ("one", 2), ("one", 3)]
    got = await receive(other.processes[0], on_other, 2)
    assert [(e["data"]["from"], e["ext"]["replayId"]) for e in got] == [("other", 1), ("other", 2)]

    # The event logs are apart: a replay from the start reads its own deployment's events only.
    late = await replay_session(other.processes[0], "/feed", -2)
    assert [e["data"] for e in await receive(other.processes[0], late, 2)] == [
        {"from": "other", "n": 0}, {"from": "other", "n": 1}]
    assert (await broker_of(one.processes[0]).event_log.bounds("/feed")).latest == 3
    assert (await broker_of(other.processes[0]).event_log.bounds("/feed")).latest == 2
    assert broker_of(other.processes[0]).engine.stats()["received"] == 2  # never even handed the others'

    # Every key a deployment wrote starts with its namespace; its fan-out channel too.
    tags = {d.namespace: [p.app[ENDPOINT].router.tag for p in d.processes] for d in (one, other)}
    for deployment, db in ((one, first[0]), (other, second[0])):
        ns = deployment.namespace
        # The log's epoch key is made by the first replay read, so a deployment may have it or not.
        mine = [key for key in keys_of(redis_port, db) if key.startswith(ns + ":") and key != f"{ns}:epoch"]
        assert sorted(mine) == sorted([f"{ns}:log:/feed", f"{ns}:streams", f"{ns}:clock",
                                       *(f"{ns}:route:{tag}" for tag in tags[ns])])
    every_key = [key for key in keys_of(redis_port, 0) + keys_of(redis_port, 1)
                 if key not in (f"{one.namespace}:epoch", f"{other.namespace}:epoch")]
    assert len(every_key) == 3 + 2 + 3 + 1  # nothing outside the two namespaces
    channels = sorted(c.decode() for c in redis.Redis(port=redis_port).pubsub_channels())
    assert channels == sorted([f"{one.namespace}:fanout", f"{other.namespace}:fanout"])


@pytest.mark.parametrize(("first", "second"), APART)
async def test_a_session_of_one_deployment_is_not_relayed_by_the_other(deploy, first, second):
    one, other = await deploy(*first, processes=2), await deploy(*second)
    [reply] = await send(one.processes[0], handshake_message())
    client_id = reply["clientId"]
    await send(one.processes[0], connect_message(client_id, timeout=0))

    # Within the deployment, the other process relays the long-poll to the session's owner ...
    connect = reply_to(await send(one.processes[1], connect_message(client_id, timeout=0)), "/meta/connect")
    assert connect["successful"] is True and broker_of(one.processes[1]).stats.forwarded == 1
    # ... the other deployment does not know the owner's tag: its registry is its own.
    connect = reply_to(await send(other.processes[0], connect_message(client_id, timeout=0)), "/meta/connect")
    assert connect["successful"] is False and connect["error"].startswith("402::")
    stats = broker_of(other.processes[0]).stats
    assert stats.forwarded == 0 and stats.forward_failures == 1  # the owner is unknown there


# ---- the events tool reads the deployment it is told of ------------------------------------------------


async def run_events(*args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "cometd_broker", "events", *args],
                                   capture_output=True, text=True, timeout=60)


async def test_events_dump_reads_the_log_of_the_url_database_and_prefix(deploy):
    one, other = await deploy(1, "staging"), await deploy(1, "production")
    await broker_of(one.processes[0]).publish("/feed", {"from": "staging"})
    await broker_of(other.processes[0]).publish("/feed", {"from": "production"})
    await broker_of(other.processes[0]).publish("/feed", {"from": "production"})

    done = await run_events("dump", "--event-log", other.url, "--redis-prefix", "production")
    assert done.returncode == 0, done.stderr
    records = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [(r["stream"], r["id"], r["message"]["data"]) for r in records] == [
        ("/feed", 1, {"from": "production"}), ("/feed", 2, {"from": "production"})]

    # Another prefix or database is no log at all, not an empty one.
    for url, prefix in ((other.url, "nobody"), (other.url.rpartition("/")[0] + "/2", "production")):
        failed = await run_events("dump", "--event-log", url, "--redis-prefix", prefix)
        assert failed.returncode == 2 and "no event log" in failed.stderr and f"{prefix}:db" in failed.stderr
    failed = await run_events("dump", "--event-log", other.url, "--redis-prefix", "a b")
    assert failed.returncode == 2 and "redis_prefix must be" in failed.stderr


async def test_events_dump_finds_a_clusters_log_from_the_environment_as_serve_does(deploy):
    """COMETD_BROKER_REDIS and COMETD_BROKER_REDIS_PREFIX, set for the brokers, are enough for the tool."""
    other = await deploy(1, "production")
    await broker_of(other.processes[0]).publish("/feed", {"from": "production"})
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("COMETD_BROKER_")},
           "COMETD_BROKER_REDIS": other.url, "COMETD_BROKER_REDIS_PREFIX": "production"}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "cometd_broker", "events", "dump"],
                                   capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert [orjson.loads(line)["message"]["data"] for line in done.stdout.splitlines()] == [{"from": "production"}]


# ---- the contact center: lease, HTTP sessions and state per deployment --------------------------------


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    directory = UserDirectory([User("alice", hash_password("alice-pw", iterations=1), first_name="Alice")])
    path = tmp_path / "users.json"
    directory.save(path)
    return path


@pytest.fixture
async def brokers() -> AsyncIterator[list[RunningBroker]]:
    started: list[RunningBroker] = []
    yield started
    for running in started:
        await asyncio.to_thread(running.stop)


async def wait_for_lease(port: int, key: str, pid: int) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        value = redis.Redis(port=port).get(key)
        if value is not None and orjson.loads(value)["pid"] == pid:
            return
        assert time.monotonic() < deadline, f"{pid} never held {key} (it holds {value!r})"
        await asyncio.sleep(0.05)


async def test_two_contact_centers_on_one_database_each_lead_their_own(redis_port, users_file, brokers):
    url = f"redis://127.0.0.1:{redis_port}/0"
    deployments = {}
    for prefix in ("tenant-a", "tenant-b"):
        flags = ("--redis", url, "--redis-prefix", prefix, "--users-file", str(users_file),
                 "--cluster-lease-ttl", "1.5", "--base-url", "http://gws.example")
        running = await asyncio.to_thread(start_broker, *flags, env={"COMETD_BROKER_EVENT_LOG": url})
        brokers.append(running)
        deployments[prefix] = running
    for prefix, running in deployments.items():  # each is the leader of its own deployment
        await wait_for_lease(redis_port, f"{prefix}:db0:cc:leader", running.process.pid)

    a, b = deployments["tenant-a"], deployments["tenant-b"]
    auth = "Basic " + base64.b64encode(b"alice:alice-pw").decode()
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout) as http:
        async with http.get(f"http://127.0.0.1:{a.port}/api/v2/me", headers={"Authorization": auth}) as response:
            assert response.status == 200, await response.text()
            cookie = f"JSESSIONID={response.cookies['JSESSIONID'].value}"
        async with http.get(f"http://127.0.0.1:{a.port}/api/v2/me", headers={"Cookie": cookie}) as response:
            assert response.status == 200  # the HTTP session, in tenant A's Redis keys
        async with http.get(f"http://127.0.0.1:{b.port}/api/v2/me", headers={"Cookie": cookie}) as response:
            assert response.status == 401  # tenant B has no such session

    stray = [key for key in keys_of(redis_port, 0) if not key.startswith(("tenant-a:db0:", "tenant-b:db0:"))]
    assert stray == []
    assert any(key.startswith("tenant-a:db0:cc:httpsession:") for key in keys_of(redis_port, 0))
    assert not any(key.startswith("tenant-b:db0:cc:httpsession") for key in keys_of(redis_port, 0))


# ---- the names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "namespace"), [
    ("redis://127.0.0.1:6379/0", "cometd:db0"),
    ("redis://127.0.0.1:6379/1", "cometd:db1"),
    ("redis://127.0.0.1:6379", "cometd:db0"),
    ("rediss://:secret@redis.example:6380/7", "cometd:db7"),
    ("redis://127.0.0.1:6379?db=4", "cometd:db4"),
    ("unix:///run/redis/redis.sock?db=2", "cometd:db2"),
    ("unix:///run/redis/redis.sock", "cometd:db0"),
])
def test_the_namespace_is_the_prefix_and_the_database_the_client_selects(url, namespace):
    assert redis_namespace(url) == namespace
    assert redis_namespace(url, "tenant-a.v2") == namespace.replace("cometd", "tenant-a.v2")


@pytest.mark.parametrize("prefix", ["", "a b", "a:b", "{a}", "a*", "a?", "[a]", "-a", "é", "a" * 65])
def test_a_prefix_that_is_not_a_plain_name_is_refused(prefix):
    assert prefix_error(prefix)
    with pytest.raises(ValueError, match="redis_prefix"):
        redis_namespace("redis://127.0.0.1:6379/0", prefix)
    with pytest.raises(ValueError, match="redis_prefix"):
        resolve({"COMETD_BROKER_REDIS_PREFIX": prefix})


def test_the_option_reaches_every_user_of_the_namespace():
    config, sources = resolve({"COMETD_BROKER_REDIS_PREFIX": "prod"}, flags={"redis": "redis://h:6379/3"})
    assert sources["redis_prefix"] == "env" and config.redis_namespace == "prod:db3"
    assert BrokerConfig(redis="redis://h:6379/0").redis_namespace == "cometd:db0"  # the default prefix
    options = ClusterOptions(config.redis, config.redis_namespace)
    assert options.prefix == "prod:db3:cc" and options.lease_key == "prod:db3:cc:leader"

