"""/metrics, /health and /ready: the exposition parses, and real traffic moves the counters it should."""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import math
import os
import platform
import re
import resource
import time
from typing import Any

import aiohttp
import pytest
from bayeux_helpers import (
    broker_of,
    connect,
    connect_message,
    disconnect,
    events_in,
    handshake,
    handshake_id,
    open_session,
    post_raw,
    publish,
    reply_to,
    send,
    subscribe_message,
    wait_parked,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families
from ws_helpers import Browsers, ext_auth

from channels.app import ContactCenterConfig, install_contact_center
from channels.auth import User, UserDirectory, hash_password
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER
from cometd_broker.eventlog import SqliteEventLog
from cometd_broker.metrics import CounterFamily, Exposition, HistogramFamily, format_value
from cometd_broker.process_metrics import ProcessMetrics, write_runtime_metrics
from cometd_broker.stats import Histogram

ANON = {"allow_anonymous": True}
METRICS_TOKEN = "metrics-token-0123456789"


# ---------------------------------------------------------------------------- reading an exposition


class Scrape:
    """One parsed /metrics page: samples by name and labels, and the families' declared types."""

    def __init__(self, text: str) -> None:
        self.text = text
        check_well_formed(text)
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name}{labels} in:\n{self.text}"
        return self.samples[key]

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples


_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})? (\S+)\Z')


def check_well_formed(text: str) -> None:
    """The rules of text format 0.0.4 we rely on, stricter than prometheus_client's parser: HELP then
    TYPE before a family's samples, each family once, counters named *_total, cumulative buckets."""
    assert text.endswith("\n")
    declared: dict[str, str] = {}
    current = None
    buckets: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], float] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in declared, f"family {name} declared twice"
            assert lines[i + 1].startswith(f"# TYPE {name} "), f"HELP {name} not followed by its TYPE"
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            declared[name] = kind
            current = name
            if kind == "counter":
                assert name.endswith("_total"), name
            continue
        match = _SAMPLE.match(line)
        assert match, f"malformed sample line {line!r}"
        name, labels, value = match.groups()
        float(value.replace("+Inf", "inf"))
        assert current is not None
        kind = declared[current]
        if kind == "histogram":
            assert name in (current + "_bucket", current + "_sum", current + "_count"), (name, current)
            series = re.sub(r',?le="[^"]*"', "", labels or "")
            if name.endswith("_bucket"):
                buckets.setdefault((current, series), []).append(float(value.replace("+Inf", "inf")))
                assert 'le="' in labels
            elif name.endswith("_count"):
                counts[(current, series.replace("{}", ""))] = float(value)
        else:
            assert name == current, f"sample {name} under family {current}"
    for (family, series), values in buckets.items():
        assert values == sorted(values), f"{family}{series} buckets are not cumulative: {values}"
        assert counts[(family, series.replace("{}", ""))] == values[-1], f"{family}{series}: +Inf != _count"


async def scrape(client: Any, headers: dict[str, str] | None = None) -> Scrape:
    async with client.get("/metrics", headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return Scrape(await response.text())


async def get_json(client: Any, path: str) -> tuple[int, dict[str, Any]]:
    async with client.get(path) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


# ---------------------------------------------------------------------------- the format itself


def test_label_values_and_help_are_escaped_and_parse_back():
    out = Exposition()
    out.family("x_total", "counter", "help with \\ backslash\nand newline")
    out.sample("x_total", 3, (("path", 'a"b\\c\nd'),))
    text = out.text().decode()
    assert 'x_total{path="a\\"b\\\\c\\nd"} 3' in text
    assert "# HELP x_total help with \\\\ backslash\\nand newline" in text
    [family] = text_string_to_metric_families(text)
    assert family.documentation == "help with \\ backslash\nand newline"
    assert family.samples[0].labels == {"path": 'a"b\\c\nd'}


def test_values_are_written_as_prometheus_reads_them():
    assert [format_value(v) for v in (3, 2.5, True, math.inf, -math.inf)] == ["3", "2.5", "1", "+Inf", "-Inf"]
    assert format_value(math.nan) == "NaN"


def test_a_family_is_written_once_and_names_are_checked():
    out = Exposition()
    out.one("a", "gauge", "a gauge", 1)
    with pytest.raises(ValueError, match="twice"):
        out.family("a", "gauge", "again")
    with pytest.raises(ValueError):
        out.family("bad-name", "gauge", "x")
    with pytest.raises(ValueError, match="_total"):
        CounterFamily("requests", "no suffix", ())
    with pytest.raises(ValueError):
        CounterFamily("ok_total", "reserved label", ("le",))
    counter = CounterFamily("ok_total", "x", ("route",))
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(("a", "b"))
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc(("a",), -1)


def test_histogram_buckets_are_inclusive_upper_bounds():
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 4), (math.inf, 5)]
    assert histogram.count == 5 and histogram.sum == pytest.approx(8.65)
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))
    family = HistogramFamily("h_seconds", "x", ("route",), (0.1, 1.0))
    family.observe(("/a",), 0.5)
    out = Exposition()
    family.write(out)
    text = out.text().decode()
    check_well_formed(text)
    assert 'h_seconds_bucket{route="/a",le="1.0"} 1' in text and 'h_seconds_count{route="/a"} 1' in text


# ---------------------------------------------------------------------------- health and readiness


async def test_health_and_ready_answer_200_and_metrics_lists_every_broker_family(make_client):
    client = await make_client(**ANON)
    assert await get_json(client, "/health") == (200, {"status": "ok", "uptime": pytest.approx(0, abs=60)})
    assert await get_json(client, "/ready") == (200, {"status": "ready"})
    page = await scrape(client)
    for name, kind in [("cometd_sessions", "gauge"), ("cometd_subscriptions", "gauge"),
                       ("cometd_queue_depth", "gauge"), ("cometd_parked_connects", "gauge"),
                       ("cometd_published", "counter"), ("cometd_delivered", "counter"),
                       ("cometd_delivery_latency_seconds", "histogram"),
                       ("cometd_publish_duration_seconds", "histogram"), ("cometd_disconnects", "counter"),
                       ("cometd_replay_subscriptions", "counter"), ("cometd_eventlog_pending_events", "gauge"),
                       ("cometd_eventlog_up", "gauge"), ("cometd_ready", "gauge")]:
        assert page.types.get(name) == kind, (name, page.types.get(name))
    assert page.value("cometd_info", version="0.1.0", engine="local", event_log="memory") == 1
    assert page.value("cometd_ready") == 1
    assert not page.has("cometd_redis_up", component="engine")  # no Redis, no Redis metrics


async def test_metrics_health_and_ready_are_served_even_when_the_bayeux_mount_is_root(make_client):
    client = await make_client(mount="/", **ANON)
    assert (await get_json(client, "/ready"))[0] == 200
    assert (await scrape(client)).value("cometd_ready") == 1
    assert reply_to(await handshake(client, path="/"), "/meta/handshake")["successful"] is True


async def test_ready_is_503_with_the_reason_once_the_event_log_is_closed(make_client):
    client = await make_client(**ANON)
    await broker_of(client).event_log.close()
    status, body = await get_json(client, "/ready")
    assert status == 503
    assert body["status"] == "unavailable" and body["reason"] == "event log is closed"
    assert (await get_json(client, "/health"))[0] == 200  # alive all the same
    page = await scrape(client)
    assert page.value("cometd_ready") == 0 and page.value("cometd_eventlog_up") == 0


async def test_ready_is_503_while_the_app_shuts_down(make_client):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    await client.app.shutdown()  # what aiohttp runs first on SIGTERM: the server still answers
    status, body = await get_json(client, "/ready")
    assert status == 503 and "shutting down" in body["reason"]
    page = await scrape(client)
    assert page.value("cometd_disconnects_total", reason="shutdown") == 1
    assert page.value("cometd_sessions", transport="long-polling") == 0
    assert broker_of(client).session(client_id) is None


async def test_metrics_token_guards_metrics_only(make_client):
    client = await make_client(metrics_token=METRICS_TOKEN, **ANON)
    for headers, problem in [(None, "missing metrics token"), ({"Authorization": "Bearer wrong"}, "wrong"),
                             ({"Authorization": f"Basic {METRICS_TOKEN}"}, "wrong")]:
        async with client.get("/metrics", headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert problem in (await response.json())["error"]
    await scrape(client, {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert (await get_json(client, "/ready"))[0] == 200
    assert (await get_json(client, "/health"))[0] == 200
    with pytest.raises(ValueError, match="metrics_token must be at least 16 characters"):
        BrokerConfig(metrics_token="short").validate()


# ---------------------------------------------------------------------------- process and runtime families

RUNTIME_FAMILIES = {  # as the parser names them (a counter without _total), with their labels
    "process_cpu_seconds": ("counter", ()), "process_resident_memory_bytes": ("gauge", ()),
    "process_virtual_memory_bytes": ("gauge", ()), "process_open_fds": ("gauge", ()),
    "process_max_fds": ("gauge", ()), "process_start_time_seconds": ("gauge", ()),
    "python_gc_objects_collected": ("counter", ("generation",)),
    "python_gc_objects_uncollectable": ("counter", ("generation",)),
    "python_gc_collections": ("counter", ("generation",)),
    "python_info": ("gauge", ("implementation", "major", "minor", "patchlevel", "version")),
}


def families_of(text: str) -> dict[str, tuple[str, str, tuple[str, ...], list[Any]]]:
    """name -> (type, HELP text, label names, samples), as Prometheus's parser reads them."""
    found = {}
    for family in text_string_to_metric_families(text):
        labels = sorted({name for sample in family.samples for name in sample.labels} - {"worker"})
        found[family.name] = (family.type, family.documentation, tuple(labels), family.samples)
    return found


def prometheus_client_runtime_page() -> str:
    """What prometheus_client's own process, GC and platform collectors write for this process."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return generate_latest(registry).decode()


def vm_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def burn_cpu(seconds: float) -> None:
    until = time.process_time() + seconds
    while time.process_time() < until:
        sum(range(1000))


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the process families come from Linux's /proc")
async def test_process_and_runtime_families_are_those_of_prometheus_client(make_client):
    client = await make_client(**ANON)
    ours = families_of((await scrape(client)).text)
    reference = families_of(prometheus_client_runtime_page())
    assert {name: (kind, labels) for name, (kind, _, labels, _) in ours.items() if name in RUNTIME_FAMILIES} \
        == RUNTIME_FAMILIES
    for name, (kind, help_text, labels, _) in reference.items():  # every family it writes, described alike
        assert ours[name][:3] == (kind, help_text, labels), name
    page = Scrape(prometheus_client_runtime_page())
    ours_page = await scrape(client)
    # The same readings: what never changes is equal, what does is close.
    for name in ("process_start_time_seconds", "process_max_fds"):
        assert ours_page.value(name) == pytest.approx(page.value(name), abs=0.01), name
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes"):
        assert 0.5 < ours_page.value(name) / page.value(name) < 2, name
    assert ours_page.value("process_cpu_seconds_total") == pytest.approx(page.value("process_cpu_seconds_total"),
                                                                         abs=0.5)
    info = {"implementation": platform.python_implementation(), "version": platform.python_version(),
            **dict(zip(("major", "minor", "patchlevel"), platform.python_version_tuple(), strict=True))}
    assert ours_page.value("python_info", **info) == 1


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the process families come from Linux's /proc")
async def test_process_metrics_are_this_process_now(make_client):
    client = await make_client(**ANON)
    page = await scrape(client)
    assert 0.5 < page.value("process_resident_memory_bytes") / vm_rss_bytes() < 2
    assert page.value("process_virtual_memory_bytes") >= page.value("process_resident_memory_bytes")
    assert 3 <= page.value("process_open_fds") <= page.value("process_max_fds")
    assert page.value("process_max_fds") == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    # The process started before this broker did, and not before the machine booted.
    assert page.value("process_start_time_seconds") <= page.value("cometd_start_time_seconds") + 0.01
    with open("/proc/stat") as stat:
        booted = next(float(line.split()[1]) for line in stat if line.startswith("btime "))
    assert booted < page.value("process_start_time_seconds") < time.time()
    for generation in ("0", "1", "2"):
        assert page.value("python_gc_collections_total", generation=generation) >= 0
        assert page.value("python_gc_objects_uncollectable_total", generation=generation) >= 0

    before = page.value("process_cpu_seconds_total")
    burn_cpu(0.3)  # the test server runs in this process
    after = (await scrape(client)).value("process_cpu_seconds_total")
    assert after - before >= 0.2, (before, after)
    collections = page.value("python_gc_collections_total", generation="2")
    gc.collect()
    assert (await scrape(client)).value("python_gc_collections_total", generation="2") >= collections + 1

    # Opening files shows in the count of descriptors.
    opened = [open(os.devnull) for _ in range(20)]  # noqa: SIM115
    try:
        assert (await scrape(client)).value("process_open_fds") >= page.value("process_open_fds") + 20
    finally:
        for handle in opened:
            handle.close()


def test_without_proc_only_the_portable_families_are_written(tmp_path):
    out = Exposition()
    write_runtime_metrics(out, ProcessMetrics(proc=str(tmp_path / "no-proc")))
    found = families_of(out.text().decode())
    assert "process_resident_memory_bytes" not in found and "process_open_fds" not in found
    assert "process_start_time_seconds" not in found and "process_virtual_memory_bytes" not in found
    cpu = found["process_cpu_seconds"][3][0].value  # from os.times()
    assert cpu == pytest.approx(sum(os.times()[:2]), abs=0.5) and cpu > 0
    assert found["process_max_fds"][3][0].value == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert {"python_info", "python_gc_collections"} <= set(found)


# ---------------------------------------------------------------------------- counters under real traffic


async def test_long_polling_traffic_moves_sessions_publishes_and_deliveries(make_client):
    client = await make_client()
    broker = broker_of(client)
    alice = await open_session(client, subscriptions=["/news", "/news/*"], ext=ext_auth("alice"))
    bob = await open_session(client, subscriptions=["/news"], ext=ext_auth("bob"))
    denied = await handshake(client, ext={"authentication": {"user": "alice", "password": "wrong"}})
    assert reply_to(denied, "/meta/handshake")["successful"] is False
    for n in range(3):
        assert reply_to(await publish(client, alice, "/news", n), "/news")["successful"] is True
    await broker.publish("/news/sport", "goal")

    page = await scrape(client)
    assert page.value("cometd_sessions", transport="long-polling") == 2
    assert page.value("cometd_sessions", transport="websocket") == 0
    assert page.value("cometd_subscriptions") == 3
    assert page.value("cometd_handshakes_total", result="accepted") == 2
    assert page.value("cometd_handshakes_total", result="denied") == 1
    assert page.value("cometd_published_total") == 4
    assert page.value("cometd_publish_duration_seconds_count") == 4
    assert page.value("cometd_dispatched_total") == 4
    assert page.value("cometd_enqueued_total") == 7  # 3 x 2 sessions + the sport event for alice
    assert page.value("cometd_queue_depth") == 7 and page.value("cometd_queue_depth_max") == 4
    assert page.value("cometd_queue_bytes") > 0
    assert page.value("cometd_delivered_total") == 0

    assert len(events_in(await connect(client, alice, timeout=0))) == 4
    page = await scrape(client)
    assert page.value("cometd_delivered_total") == 4
    assert page.value("cometd_delivery_latency_seconds_count") == 1  # one batch
    assert 0 < page.value("cometd_delivery_latency_seconds_sum") < 5
    assert page.value("cometd_queue_depth") == 3

    reply_to(await disconnect(client, bob), "/meta/disconnect")
    reply_to(await connect(client, bob, timeout=0), "/meta/connect")  # the session is gone now
    page = await scrape(client)
    assert page.value("cometd_disconnects_total", reason="client") == 1
    assert page.value("cometd_unknown_session_total") == 1
    assert page.value("cometd_sessions", transport="long-polling") == 1
    assert page.value("cometd_queue_depth") == 0


async def test_websocket_sessions_and_pushed_deliveries_are_counted(make_client):
    client = await make_client(**ANON)
    browsers = Browsers()
    try:
        peer = await browsers.open(client).websocket()
        await peer.handshake()
        assert (await peer.connect())["successful"] is True
        assert (await peer.subscribe("/ws"))["successful"] is True
        await broker_of(client).publish("/ws", "pushed")
        assert [e["data"] for e in await peer.events(1)] == ["pushed"]
        page = await scrape(client)
        assert page.value("cometd_sessions", transport="websocket") == 1
        assert page.value("cometd_delivered_total") == 1
        assert page.value("cometd_delivery_latency_seconds_count") == 1
    finally:
        await browsers.close()


async def test_parked_and_superseded_connects(make_client):
    client = await make_client(**ANON)
    broker = broker_of(client)
    client_id = await open_session(client)
    async with asyncio.timeout(10):
        first = asyncio.create_task(post_raw(client, [connect_message(client_id)]))
        await wait_parked(broker, client_id)
        assert (await scrape(client)).value("cometd_parked_connects") == 1
        second = asyncio.create_task(post_raw(client, [connect_message(client_id, timeout=0)]))
        assert (await first).status == 500
        await second
    assert (await scrape(client)).value("cometd_superseded_connects_total") == 1


async def test_expired_and_slow_consumer_sessions_are_counted_by_reason(make_client):
    client = await make_client(max_queue=2, **ANON)
    broker = broker_of(client)
    await open_session(client)  # never connects again: expires
    await open_session(client, subscriptions=["/flood"])
    for n in range(3):
        await broker.publish("/flood", n)  # the third overflows the slow session's queue
    broker.sweep(float("inf"))
    page = await scrape(client)
    assert page.value("cometd_disconnects_total", reason="slow_consumer") == 1
    assert page.value("cometd_disconnects_total", reason="expired") == 1
    assert page.value("cometd_disconnects_total", reason="client") == 0


async def test_drop_oldest_losses_stay_counted_after_the_session_ends(make_client):
    client = await make_client(max_queue=2, queue_full="drop-oldest", **ANON)
    broker = broker_of(client)
    client_id = await open_session(client, subscriptions=["/feed"])
    for n in range(5):
        await broker.publish("/feed", n)
    assert (await scrape(client)).value("cometd_queue_dropped_total") == 3
    reply_to(await disconnect(client, client_id), "/meta/disconnect")
    assert (await scrape(client)).value("cometd_queue_dropped_total") == 3


async def test_replay_hits_misses_and_replayed_events(make_client):
    client = await make_client(retention_count=5, **ANON)
    broker = broker_of(client)
    for n in range(10):
        await broker.publish("/feed", n)
    client_id = await handshake_id(client, ext={"replay": True})
    reply_to(await connect(client, client_id), "/meta/connect")

    async def subscribe_from(channel: str, after: int) -> dict[str, Any]:
        message = subscribe_message(client_id, channel, ext={"replay": {channel: after}})
        return reply_to(await send(client, message), "/meta/subscribe")

    assert (await subscribe_from("/feed", 2))["ext"]["replay"]["recovered"] is False  # 3..5 were trimmed
    await broker.publish("/other", "x")
    assert (await subscribe_from("/other", 0))["ext"]["replay"]["recovered"] is True
    await wait_until(lambda: broker.session(client_id).catch_up is None, what="the catch-up to finish")
    page = await scrape(client)
    assert page.value("cometd_replay_subscriptions_total", result="miss") == 1
    assert page.value("cometd_replay_subscriptions_total", result="hit") == 1
    assert page.value("cometd_replayed_events_total") == 6  # /feed 6..10 and /other 1
    assert page.value("cometd_enqueued_total") == 0  # replayed, not live


async def test_sqlite_event_log_lag_and_commits(make_client, tmp_path):
    log = SqliteEventLog(tmp_path / "lag.db")
    try:
        append = asyncio.create_task(log.append("/s", [b"1", b"2", b"3"]))
        await asyncio.sleep(0)  # the append is queued for the writer; its answer cannot have arrived yet
        stats = log.stats()
        assert stats["pending"] == 3 and stats["oldest_pending_seconds"] >= 0 and stats["up"] is True
        assert await append == [1, 2, 3]
        stats = log.stats()
        assert stats["pending"] == 0 and stats["oldest_pending_seconds"] == 0 and stats["commits"] == 1
    finally:
        await log.close()
    assert log.stats()["up"] is False and log.stats()["problem"] == "event log is closed"

    client = await make_client(event_log=str(tmp_path / "broker.db"), **ANON)
    await broker_of(client).publish("/feed", 1)
    page = await scrape(client)
    assert page.value("cometd_info", version="0.1.0", engine="local", event_log="sqlite") == 1
    assert page.value("cometd_eventlog_commits_total") >= 1  # the append (and maybe a retention trim)
    assert page.value("cometd_eventlog_pending_events") == 0
    assert page.value("cometd_eventlog_unindexed_events") in (0, 1)  # 0 once a retention trim indexed it


# ---------------------------------------------------------------------------- REST operations


PASSWORDS = {"alice": "alice-pw"}


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()}


async def test_rest_operations_are_counted_by_route_operation_and_status(aiohttp_client):
    users = UserDirectory(User(name, hash_password(pw, iterations=1), first_name=name.capitalize(), agent_id="101")
                          for name, pw in PASSWORDS.items())
    app = create_app(BrokerConfig())
    install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=False), users=users)
    client = await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())  # every call authenticates itself

    async def call(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> int:
        async with client.request(method, path, json=body, headers=headers) as response:
            return (await response.json())["statusCode"]

    assert await call("GET", "/api/v2/me", headers=basic("alice")) == 0
    start = {"operationName": "StartContactCenterSession", "channels": ["chat"]}
    assert await call("POST", "/api/v2/me", start, basic("alice")) == 0
    assert await call("POST", "/api/v2/me", {"operationName": "Dance"}, basic("alice")) == 10
    assert await call("POST", "/api/v2/me/channels/chat", {"operationName": "Ready"}, basic("alice")) == 0
    assert await call("POST", "/api/v2/me/channels/chat", {"operationName": "Ready"}, basic("alice")) == 0
    assert await call("GET", "/api/v2/me") == 20  # no credentials
    assert await call("GET", "/api/v2/nowhere", headers=basic("alice")) == 6

    page = await scrape(client)
    assert page.types["gws_requests"] == "counter"
    assert page.value("gws_requests_total", method="GET", route="/api/v2/me", operation="", status_code="0",
                      http_status="200") == 1
    assert page.value("gws_requests_total", method="POST", route="/api/v2/me", operation="StartContactCenterSession",
                      status_code="0", http_status="200") == 1
    # An unknown operationName is not a label value (it would let clients create series): empty, status 10.
    assert page.value("gws_requests_total", method="POST", route="/api/v2/me", operation="", status_code="10",
                      http_status="400") == 1
    assert page.value("gws_requests_total", method="POST", route="/api/v2/me/channels/{channel}",
                      operation="Ready", status_code="0", http_status="200") == 2
    assert page.value("gws_requests_total", method="GET", route="/api/v2/me", operation="", status_code="20",
                      http_status="401") == 1
    assert page.value("gws_requests_total", method="GET", route="unmatched", operation="", status_code="6",
                      http_status="404") == 1
    assert page.value("gws_request_duration_seconds_count", method="POST", route="/api/v2/me/channels/{channel}") == 2
    # The Bayeux endpoint under /api/v2/notifications is the broker's, not a REST operation.
    await handshake(client, path="/api/v2/notifications", expect_status=None)
    page = await scrape(client)
    assert not any(dict(labels).get("route", "").startswith("/api/v2/notifications")
                   for name, labels in page.samples if name == "gws_requests_total")


async def test_the_state_store_shows_its_writes_commits_and_what_waits(aiohttp_client, tmp_path):
    app = create_app(BrokerConfig())
    config = ContactCenterConfig(csrf=False, state_db=str(tmp_path / "state.db"), media_token="media-token")
    install_contact_center(app, app[BROKER], config, users=UserDirectory())
    client = await aiohttp_client(app)
    page = await scrape(client)
    assert page.types["gws_state_writes"] == "counter" and page.types["gws_state_commits"] == "counter"
    written = page.value("gws_state_writes_total")  # the start-up run may have written already
    for n in range(3):  # three customers: three operations, each with a write
        async with client.post("/api/v2/media/sms/interactions", json={"nickname": f"P{n}", "text": "hi"},
                               headers={"Authorization": "Bearer media-token"}) as response:
            assert (await response.json())["statusCode"] == 0
    page = await scrape(client)
    assert page.value("gws_state_writes_total") >= written + 3
    assert 1 <= page.value("gws_state_commits_total") <= page.value("gws_state_writes_total")
    assert page.types["gws_state_pending_bytes"] == "gauge"
    assert page.value("gws_state_pending_writes") == 0 and page.value("gws_state_pending_bytes") == 0
    assert page.value("gws_state_waiting_writes") == 0


async def test_huawei_gateway_requests_are_counted_by_route_and_retcode(aiohttp_client):
    users = UserDirectory(User(name, hash_password(pw, iterations=1), agent_id="101")
                          for name, pw in PASSWORDS.items())
    app = create_app(BrokerConfig())
    install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=False), users=users)
    client = await aiohttp_client(app)

    async def call(method: str, path: str, body: Any = None) -> str:
        async with client.request(method, "/agentgateway/resource" + path, json=body) as response:
            return (await response.json())["retcode"]

    assert await call("PUT", "/onlineagent/101", {"password": "alice-pw"}) == "0"
    assert await call("PUT", "/onlineagent/101", {"password": "alice-pw"}) == "100-002"  # signed in already
    assert await call("PUT", "/onlineagent/7", {"password": "x"}) == "000-002"  # not an agent id

    page = await scrape(client)
    assert page.types["agentgateway_requests"] == "counter"
    route = "/agentgateway/resource/onlineagent/{agentid}"  # the template: no series per agent
    assert page.value("agentgateway_requests_total", method="PUT", route=route, retcode="0") == 1
    assert page.value("agentgateway_requests_total", method="PUT", route=route, retcode="100-002") == 1
    assert page.value("agentgateway_requests_total", method="PUT", route=route, retcode="000-002") == 1
    assert page.value("agentgateway_request_duration_seconds_count", method="PUT", route=route) == 3
    assert not any(name.startswith("gws_request") for name, _ in page.samples)  # not a GWS REST operation


# ---------------------------------------------------------------------------- Redis restarts


async def test_redis_restart_shows_in_metrics_readiness_and_logs(aiohttp_client, caplog):
    from redis_helpers import RedisServer, require_redis

    server = RedisServer(require_redis())
    server.start()
    try:
        client = await aiohttp_client(create_app(BrokerConfig(redis=server.url, **ANON)))
        broker = broker_of(client)
        page = await scrape(client)
        assert page.value("cometd_redis_up", component="engine") == 1
        assert page.value("cometd_redis_up", component="eventlog") == 1
        assert page.value("cometd_info", version="0.1.0", engine="redis", event_log="redis") == 1

        caplog.set_level(logging.INFO, logger="cometd_broker")
        server.kill()
        engine_down = lambda: not broker.engine.connected  # noqa: E731
        await wait_until(engine_down, timeout=10, what="the engine to notice Redis is gone")
        status, body = await get_json(client, "/ready")  # probes the event log: Redis is down
        assert status == 503
        assert "redis engine is not connected" in body["reason"], body
        page = await scrape(client)
        assert page.value("cometd_redis_up", component="engine") == 0
        assert page.value("cometd_ready") == 0
        assert page.value("cometd_redis_disconnects_total", component="engine") == 1

        with pytest.raises(Exception, match="unavailable"):
            await broker.event_log.bounds("/feed")  # a command that fails marks the log down
        assert (await scrape(client)).value("cometd_redis_up", component="eventlog") == 0

        server.start()
        await wait_until(lambda: broker.engine.connected, timeout=15, what="the engine to reconnect")
        status, body = await get_json(client, "/ready")
        assert (status, body) == (200, {"status": "ready"}), body  # its PING brings the log back
        page = await scrape(client)
        assert page.value("cometd_redis_up", component="engine") == 1
        assert page.value("cometd_redis_up", component="eventlog") == 1
        assert page.value("cometd_redis_reconnects_total", component="engine") == 1
        assert page.value("cometd_redis_reconnects_total", component="eventlog") == 1
        assert await broker.publish("/feed", "after the restart") == 0
        logs = caplog.text
        assert "redis connection lost" in logs and "redis reconnected" in logs
        assert "event log: redis at" in logs and "reconnected after" in logs
    finally:
        server.stop()
