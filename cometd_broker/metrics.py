"""Prometheus `/metrics` (text exposition format 0.0.4), `/health` and `/ready`.

Nothing here runs per message. The hot paths bump plain counters (`stats.BrokerStats`); the gauges
(sessions by transport, subscriptions, queue depths ...) are computed from the broker's own
structures when Prometheus scrapes, and so are the process families (CPU, memory, file descriptors,
garbage collection: process_metrics.py). Applications on the broker (the contact-center REST API) add
their own labelled families with `Metrics.counter` / `Metrics.histogram`.

The format is written here rather than with prometheus_client: it is a page of code, and the broker
keeps no runtime dependency it does not need.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .eventlog import EventLogClosed, EventLogUnavailable
from .http.bad_requests import BAD_REQUESTS
from .process_metrics import write_runtime_metrics
from .stats import LATENCY_BUCKETS, Disconnect, Histogram
from .tasks import cancel_and_wait
from .version import __version__
from .worker_metrics import SHARE_INTERVAL, SharedMetrics

if TYPE_CHECKING:
    from .broker import Broker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_PATH = "/metrics"
HEALTH_PATH = "/health"
READY_PATH = "/ready"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_KINDS = ("counter", "gauge", "histogram")

Labels = Sequence[tuple[str, str]]


# ---------------------------------------------------------------------------- the text format


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Exposition:
    """Builds one scrape's text: each family's HELP and TYPE lines, then its samples. `labels` go on
    every sample (a worker's index, with `serve --workers N`)."""

    def __init__(self, labels: Labels = ()) -> None:
        self._lines: list[str] = []
        self._families: set[str] = set()
        self._labels = tuple(labels)

    def family(self, name: str, kind: str, help_text: str) -> None:
        if not _NAME.match(name) or kind not in _KINDS:
            raise ValueError(f"invalid metric family {name!r} of type {kind!r}")
        if name in self._families:
            raise ValueError(f"metric family {name!r} written twice")
        self._families.add(name)
        self._lines.append(f"# HELP {name} {escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Labels = ()) -> None:
        if self._labels:
            labels = (*self._labels, *labels)
        if labels:
            pairs = ",".join(f'{key}="{escape_label(str(val))}"' for key, val in labels)
            self._lines.append(f"{name}{{{pairs}}} {format_value(value)}")
        else:
            self._lines.append(f"{name} {format_value(value)}")

    def histogram(self, name: str, histogram: Histogram, labels: Labels = ()) -> None:
        labels = tuple(labels)
        for bound, count in histogram.cumulative():
            self.sample(name + "_bucket", count, (*labels, ("le", format_value(bound))))
        self.sample(name + "_sum", histogram.sum, labels)
        self.sample(name + "_count", histogram.count, labels)

    def one(self, name: str, kind: str, help_text: str, value: float, labels: Labels = ()) -> None:
        """A family with a single sample."""
        self.family(name, kind, help_text)
        self.sample(name, value, labels)

    def text(self) -> bytes:
        return ("\n".join(self._lines) + "\n").encode()


# ---------------------------------------------------------------------------- labelled families


class _Family:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str]) -> None:
        bad = [label for label in labelnames if not _LABEL.match(label) or label.startswith("__") or label == "le"]
        if not _NAME.match(name) or bad:
            raise ValueError(f"invalid metric name {name!r} or label names {bad}")
        if self.kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def _check(self, labels: tuple[str, ...]) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels}")


class CounterFamily(_Family):
    """A counter with labels, for code that is not on a hot path (one dict update per increment)."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, help_text, labelnames)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        if labels not in self.values:
            self._check(labels)
        self.values[labels] = self.values.get(labels, 0) + amount

    def write(self, out: Exposition) -> None:
        out.family(self.name, self.kind, self.help)
        for labels, value in sorted(self.values.items()):
            out.sample(self.name, value, tuple(zip(self.labelnames, labels, strict=True)))


class HistogramFamily(_Family):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str],
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text, labelnames)
        Histogram(buckets)  # validates the buckets
        self.buckets = tuple(buckets)
        self.children: dict[tuple[str, ...], Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        child = self.children.get(labels)
        if child is None:
            self._check(labels)
            child = self.children[labels] = Histogram(self.buckets)
        child.observe(value)

    def write(self, out: Exposition) -> None:
        out.family(self.name, self.kind, self.help)
        for labels, child in sorted(self.children.items()):
            out.histogram(self.name, child, tuple(zip(self.labelnames, labels, strict=True)))


# ---------------------------------------------------------------------------- the registry


class Metrics:
    """One app's metrics: the broker's, computed at scrape time, and families others register."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.families: dict[str, CounterFamily | HistogramFamily] = {}
        self.collectors: list[Callable[[Exposition], None]] = []  # other components' scrape-time families
        self.stopping = False  # set when the app starts shutting down: /ready says so
        self.shared: SharedMetrics | None = None  # with `serve --workers N`: the workers' pages

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> CounterFamily:
        """The counter family `name`, created on first use."""
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = CounterFamily(name, help_text, labelnames)
        if not isinstance(family, CounterFamily) or family.labelnames != tuple(labelnames):
            raise ValueError(f"metric {name!r} is already registered with another type or labels")
        return family

    def histogram(self, name: str, help_text: str, labelnames: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> HistogramFamily:
        """The histogram family `name`, created on first use."""
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = HistogramFamily(name, help_text, labelnames, buckets)
        if not isinstance(family, HistogramFamily) or family.labelnames != tuple(labelnames):
            raise ValueError(f"metric {name!r} is already registered with another type or labels")
        return family

    def add_collector(self, collect: Callable[[Exposition], None]) -> None:
        """`collect(out)` writes its families on every scrape, from values read at that moment (gauges
        and totals a component keeps itself, like the event log's)."""
        self.collectors.append(collect)

    def render(self, ready: bool, labels: Labels = ()) -> bytes:
        out = Exposition(labels)
        write_broker_metrics(out, self.broker, ready)
        for name in sorted(self.families):
            self.families[name].write(out)
        for collect in self.collectors:
            collect(out)
        write_runtime_metrics(out)  # process_* and python_*, as every Prometheus exporter has them
        return out.text()

    def page(self, labels: Labels = ()) -> bytes:
        """This process's page now. Readiness as /ready would say without probing: a scrape must not
        wait on a dead Redis."""
        return self.render(not self.problems(), labels)

    def scrape(self) -> bytes:
        """What /metrics answers: this process's page, or with `--workers N` every worker's."""
        if self.shared is None:
            return self.page()
        return self.shared.combined(self.page(self.shared.labels))

    async def readiness(self, probe: bool = True) -> list[str]:
        """Why the broker does not accept work now (empty: ready). `probe`: ask an event log that
        is down whether it is back (a Redis PING, bounded by its connect timeout)."""
        event_log = self.broker.event_log
        if probe and not component_stats(event_log).get("up", True) and hasattr(event_log, "ping") \
                and not self.stopping:
            # A networked log learns that it is back only from a command: ask it one.
            try:
                await event_log.ping()
            except (EventLogUnavailable, EventLogClosed):
                pass  # still down: stats() says why
        return self.problems()

    def problems(self) -> list[str]:
        """`readiness` as the components last saw it, without asking them."""
        broker = self.broker
        problems = []
        if self.stopping:
            problems.append("the broker is shutting down")
        log_stats = component_stats(broker.event_log)
        if not log_stats.get("up", True):
            problems.append(log_stats.get("problem") or "the event log is not available")
        engine_stats = component_stats(broker.engine)
        if not engine_stats.get("connected", True):
            problems.append("the redis engine is not connected: publishes fail until it reconnects")
        return problems


METRICS = web.AppKey("metrics", Metrics)


def route_label(request: web.Request) -> str:
    """A request's route for a metric label: the route's template, never the raw path (ids in paths
    would make a series per interaction or agent); "unmatched" when no route matched."""
    resource = request.match_info.route.resource
    return _canonical(resource) if resource is not None else "unmatched"


@functools.lru_cache(maxsize=4096)
def _canonical(resource: web.AbstractResource) -> str:
    """A resource's template, fixed once its router is frozen: aiohttp builds the string anew each time."""
    return resource.canonical


def component_stats(component: object) -> dict[str, Any]:
    """An engine's or event log's `stats()` (a plain dict), or {} for one without."""
    stats = getattr(component, "stats", None)
    return stats() if callable(stats) else {}


# ---------------------------------------------------------------------------- the broker's metrics


def write_broker_metrics(out: Exposition, broker: Broker, ready: bool) -> None:
    stats = broker.stats
    log_stats = component_stats(broker.event_log)
    engine_stats = component_stats(broker.engine)
    out.one("cometd_info", "gauge", "Always 1; the labels say which version, engine and event log store run",
            1, (("version", __version__), ("engine", engine_stats.get("engine", type(broker.engine).__name__)),
                ("event_log", log_stats.get("store", type(broker.event_log).__name__))))
    out.one("cometd_start_time_seconds", "gauge", "When this broker process started (Unix time)", stats.started)
    out.one("cometd_ready", "gauge", "1 when /ready answers 200: the broker accepts work", int(ready))
    _write_session_gauges(out, broker)

    out.family("cometd_handshakes_total", "counter", "Handshakes, by result (accepted: a session was created)")
    out.sample("cometd_handshakes_total", stats.handshakes, (("result", "accepted"),))
    out.sample("cometd_handshakes_total", stats.handshakes_denied, (("result", "denied"),))
    _write_logins(out, broker)
    out.one("cometd_unknown_session_total", "counter",
            "Messages naming a session this process does not have (402 session_unknown: re-handshake)",
            stats.unknown_sessions)
    out.one("cometd_http_bad_requests_total", "counter",
            "HTTP requests refused with 400 because they could not be parsed (both HTTP paths)", BAD_REQUESTS.total)
    out.family("cometd_forwarded_requests_total", "counter",
               "Long-polls relayed to the cluster process owning their session, by result (failed: the owner "
               "was gone or dropped it, answered here with 402 so the client resumes here)")
    out.sample("cometd_forwarded_requests_total", stats.forwarded, (("result", "forwarded"),))
    out.sample("cometd_forwarded_requests_total", stats.forward_failures, (("result", "failed"),))
    out.family("cometd_disconnects_total", "counter", "Sessions ended, by reason")
    for reason in Disconnect.REASONS:
        out.sample("cometd_disconnects_total", stats.disconnects[reason], (("reason", reason),))
    out.one("cometd_superseded_connects_total", "counter",
            "/meta/connect requests answered 409 connect_superseded because a newer one of the session replaced them",
            stats.superseded_connects)

    out.one("cometd_published_total", "counter", "Events this process published (server or client) and recorded",
            stats.published)
    out.one("cometd_publish_failures_total", "counter",
            "Client publishes refused with 503 because the engine was unavailable", stats.publish_failures)
    out.family("cometd_publish_duration_seconds", "histogram",
               "From a publish call to its event recorded in the event log and queued for local sessions")
    out.histogram("cometd_publish_duration_seconds", stats.publish_latency)
    out.one("cometd_dispatched_total", "counter",
            "Events routed to this process's sessions (with Redis: every process's events)", stats.dispatched)
    out.one("cometd_enqueued_total", "counter", "Copies of live events queued for sessions", stats.enqueued)
    out.one("cometd_delivered_total", "counter",
            "Messages handed to a transport to write (a resent unacknowledged message counts again)", stats.delivered)
    out.family("cometd_delivery_latency_seconds", "histogram",
               "From queued for a session to written to its client, for the oldest message of each written batch")
    out.histogram("cometd_delivery_latency_seconds", stats.delivery_latency)
    dropped = stats.dropped_by_ended_sessions + sum(s.queue.dropped for s in broker.sessions.values())
    out.one("cometd_queue_dropped_total", "counter",
            "Events dropped from full queues under queue_full = drop-oldest", dropped)

    out.family("cometd_replay_subscriptions_total", "counter",
               "Replayed subscriptions, by result: hit (the log covered the requested id) or miss (recovered: false)")
    out.sample("cometd_replay_subscriptions_total", stats.replay_hits, (("result", "hit"),))
    out.sample("cometd_replay_subscriptions_total", stats.replay_misses, (("result", "miss"),))
    out.one("cometd_replayed_events_total", "counter", "Events queued from the event log by catch-ups",
            stats.replayed)
    _write_event_log(out, log_stats)
    _write_redis(out, engine_stats, log_stats)


def _write_session_gauges(out: Exposition, broker: Broker) -> None:
    by_transport = dict.fromkeys(broker.transports, 0)
    parked = subscriptions = depth = size = deepest = unacked = catching_up = 0
    for session in broker.sessions.values():
        by_transport[session.transport] = by_transport.get(session.transport, 0) + 1
        queue = session.queue
        queued = len(queue)
        depth += queued
        size += queue.size_bytes
        deepest = max(deepest, queued)
        subscriptions += len(session.subscriptions)
        parked += session.parked is not None
        catching_up += session.catch_up is not None
        if session.ack is not None:
            unacked += sum(len(events) for _, events in session.ack.unacked)
    out.family("cometd_sessions", "gauge", "Sessions, by the transport of their latest request")
    for transport, count in sorted(by_transport.items()):
        out.sample("cometd_sessions", count, (("transport", transport),))
    out.one("cometd_parked_connects", "gauge", "/meta/connect requests held open waiting for events", parked)
    out.one("cometd_subscriptions", "gauge", "Subscriptions of all sessions (channels and patterns)", subscriptions)
    out.one("cometd_queue_depth", "gauge", "Events queued for all sessions, not yet written", depth)
    out.one("cometd_queue_bytes", "gauge", "Bytes queued for all sessions, not yet written", size)
    out.one("cometd_queue_depth_max", "gauge", "Events queued for the session with the longest queue", deepest)
    out.one("cometd_unacked_events", "gauge", "Events written but not yet acknowledged (ack extension)", unacked)
    out.one("cometd_catching_up_sessions", "gauge", "Sessions reading replayed events from the log", catching_up)


LOGIN_VIAS = ("handshake", "rest")  # always written, so a rate() has a series before the first failure


def _write_logins(out: Exposition, broker: Broker) -> None:
    throttle = broker.login_throttle
    vias = sorted({*LOGIN_VIAS, *throttle.failures, *throttle.throttled})
    out.family("cometd_login_failures_total", "counter",
               "Logins refused for wrong credentials (a WARNING log line each), by where: handshake or rest")
    for via in vias:
        out.sample("cometd_login_failures_total", throttle.failures.get(via, 0), (("via", via),))
    out.family("cometd_login_throttled_total", "counter",
               "Login attempts refused (429) because their user or address was locked out, by where")
    for via in vias:
        out.sample("cometd_login_throttled_total", throttle.throttled.get(via, 0), (("via", via),))
    out.family("cometd_login_lockouts_total", "counter",
               "Lockouts started, by what was locked: a user name or a client address")
    for kind, count in sorted(throttle.lockouts.items()):
        out.sample("cometd_login_lockouts_total", count, (("key", kind),))
    out.one("cometd_login_tracked_keys", "gauge",
            "Users and addresses whose failed logins are remembered now (bounded by --login-tracked-keys)",
            len(throttle))


def _write_event_log(out: Exposition, log_stats: dict[str, Any]) -> None:
    out.one("cometd_eventlog_up", "gauge", "1 when the event log accepts appends", int(log_stats.get("up", True)))
    out.one("cometd_eventlog_pending_events", "gauge",
            "Events appended to the event log and not yet committed (the event-log lag)", log_stats.get("pending", 0))
    out.one("cometd_eventlog_oldest_pending_seconds", "gauge",
            "How long the oldest uncommitted event-log write has waited (SQLite)",
            log_stats.get("oldest_pending_seconds", 0.0))
    if "commits" in log_stats:
        out.one("cometd_eventlog_commits_total", "counter",
                "Event-log write transactions (SQLite group commit: appends share them)", log_stats["commits"])
    if "unindexed" in log_stats:
        out.one("cometd_eventlog_unindexed_events", "gauge",
                "SQLite event-log events not yet in the per-stream index (at most one batch unless indexing fails)",
                log_stats["unindexed"])


def _write_redis(out: Exposition, engine_stats: dict[str, Any], log_stats: dict[str, Any]) -> None:
    components = []
    if engine_stats.get("engine") == "redis":
        components.append(("engine", engine_stats))
    if log_stats.get("store") == "redis":
        components.append(("eventlog", log_stats))
    if not components:
        return
    out.family("cometd_redis_up", "gauge",
               "1 when the component's Redis connection works (engine: fan-out subscription; eventlog: last command)")
    for name, values in components:
        out.sample("cometd_redis_up", int(bool(values.get("connected"))), (("component", name),))
    out.family("cometd_redis_disconnects_total", "counter", "Redis connections lost, by component")
    for name, values in components:
        out.sample("cometd_redis_disconnects_total", values.get("disconnects", 0), (("component", name),))
    out.family("cometd_redis_reconnects_total", "counter", "Redis connections restored after a loss, by component")
    for name, values in components:
        out.sample("cometd_redis_reconnects_total", values.get("reconnects", 0), (("component", name),))
    if engine_stats.get("engine") == "redis":
        out.one("cometd_redis_fanout_received_total", "counter", "Fan-out messages received from Redis",
                engine_stats.get("received", 0))
        out.one("cometd_redis_fanout_lag_seconds", "gauge",
                "Publish (publisher's clock) to dispatch here, of the latest fan-out message",
                engine_stats.get("fanout_lag_seconds", 0.0))
        out.one("cometd_redis_fanout_lag_max_seconds", "gauge", "The largest fan-out lag seen since start",
                engine_stats.get("fanout_lag_max_seconds", 0.0))
        out.one("cometd_redis_pending_publishes", "gauge", "Publishes waiting for their own fan-out message",
                engine_stats.get("pending", 0))
        out.one("cometd_redis_echo_timeouts_total", "counter",
                "Publishes whose fan-out message did not come back in time (reported as delivered to 0)",
                engine_stats.get("echo_timeouts", 0))


# ---------------------------------------------------------------------------- the HTTP endpoints


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


class MetricsEndpoints:
    def __init__(self, metrics: Metrics, token: str = "") -> None:
        self.metrics = metrics
        self._token = token.encode()

    async def metrics_page(self, request: web.Request) -> web.Response:
        if self._token:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            # compare_digest: the time taken must not tell how much of a guessed token was right.
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self._token):
                problem = "missing metrics token" if not presented else "wrong metrics token"
                response = _json({"error": f"{problem}: send Authorization: Bearer <metrics token>",
                                  "status": 401}, 401)
                response.headers["WWW-Authenticate"] = 'Bearer realm="cometd-broker metrics"'
                return response
        return web.Response(body=self.metrics.scrape(), headers={"Content-Type": CONTENT_TYPE,
                                                                 "Cache-Control": "no-store"})

    async def health(self, _: web.Request) -> web.Response:
        """Liveness: answering at all proves the event loop runs."""
        return _json({"status": "ok", "uptime": round(time.time() - self.metrics.broker.stats.started, 3)})

    async def ready(self, _: web.Request) -> web.Response:
        problems = await self.metrics.readiness()
        if problems:
            return _json({"status": "unavailable", "reason": "; ".join(problems), "reasons": problems}, 503)
        return _json({"status": "ready"})


def add_metrics(app: web.Application, broker: Broker, token: str = "") -> Metrics:
    """Serve /metrics, /health and /ready on `app`. Register before a Bayeux mount of "/", which
    would otherwise take these paths too."""
    metrics = app[METRICS] = Metrics(broker)
    endpoints = MetricsEndpoints(metrics, token)
    app.router.add_get(METRICS_PATH, endpoints.metrics_page)
    app.router.add_get(HEALTH_PATH, endpoints.health)
    app.router.add_get(READY_PATH, endpoints.ready)

    async def stopping(_: web.Application) -> None:
        metrics.stopping = True

    app.on_shutdown.append(stopping)
    return metrics


def share_worker_metrics(app: web.Application, directory: str, index: int,
                         interval: float = SHARE_INTERVAL) -> None:
    """With `serve --workers N`: this worker keeps its page in `directory` (rewritten every `interval`
    seconds) and answers a scrape for every worker there (worker_metrics.py)."""
    metrics = app[METRICS]
    shared = metrics.shared = SharedMetrics(directory, index, lambda: metrics.page(shared.labels),
                                            interval=interval)

    async def sharing(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(shared.run(), name="worker-metrics")
        yield
        await cancel_and_wait(task)

    app.cleanup_ctx.append(sharing)
