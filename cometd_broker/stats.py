"""The broker's counters: plain attributes bumped on the hot paths, read by /metrics at scrape time.

No locks, no label lookups, no I/O: everything runs on the event loop, and an increment of a slot
attribute is the cheapest thing Python does. Gauges (sessions, queue depths ...) are not kept here at
all: metrics.py computes them from the broker's own structures when Prometheus asks.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence

_monotonic = time.monotonic

# Seconds. A delivery to a connected client usually takes well under a millisecond; a long-poll
# client that is between two connects waits up to its interval (seconds); a slow one, more.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)



class Disconnect:
    """Why sessions end: the `reason` label of cometd_disconnects_total."""

    CLIENT = "client"  # the client sent /meta/disconnect
    EXPIRED = "expired"  # no /meta/connect within interval + maxInterval
    SLOW_CONSUMER = "slow_consumer"  # its queue was full (queue_full = disconnect)
    SHUTDOWN = "shutdown"  # the broker stopped
    REASONS = (CLIENT, EXPIRED, SLOW_CONSUMER, SHUTDOWN)


class Histogram:
    """Fixed buckets; `observe` is one bisect and two additions. Bounds are inclusive upper bounds
    (Prometheus `le`); the last count is the +Inf bucket."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be a non-empty strictly increasing sequence")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(le, observations <= le) for every bound and +Inf, as Prometheus buckets are."""
        total = 0
        result = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            result.append((bound, total))
        return result


class BrokerStats:
    """Counters of one broker process since it started. Each is bumped by one line where it happens."""

    __slots__ = ("handshakes", "handshakes_denied", "unknown_sessions", "published", "publish_failures",
                 "publish_latency", "dispatched", "enqueued", "delivered", "delivery_latency", "disconnects",
                 "superseded_connects", "dropped_by_ended_sessions", "replay_hits", "replay_misses", "replayed",
                 "forwarded", "forward_failures", "started")

    def __init__(self) -> None:
        self.handshakes = 0  # sessions created
        self.handshakes_denied = 0  # authentication failed
        self.unknown_sessions = 0  # messages naming a session this process does not have (402)
        self.published = 0  # events this process published (server or client), recorded in the log
        self.publish_failures = 0  # client publishes refused because the engine was unavailable (503)
        self.publish_latency = Histogram()  # publish call -> event recorded and queued for local sessions
        self.dispatched = 0  # events routed to this process's sessions (with Redis: every process's)
        self.enqueued = 0  # copies of live events queued for sessions (replayed ones: `replayed`)
        self.delivered = 0  # messages handed to a transport to write (a resent unacknowledged one counts again)
        self.delivery_latency = Histogram()  # queued -> written, of the oldest message of each written batch
        self.disconnects = dict.fromkeys(Disconnect.REASONS, 0)
        self.superseded_connects = 0  # /meta/connects answered 409 because a newer one replaced them
        self.dropped_by_ended_sessions = 0  # drop-oldest losses of sessions that are gone (live ones: scraped)
        self.replay_hits = 0  # replayed subscriptions whose requested id the log still covered
        self.replay_misses = 0  # ... that asked for trimmed events (reply recovered: false)
        self.replayed = 0  # events queued from the log by catch-ups
        self.forwarded = 0  # long-polls relayed to the process owning their session (cluster/routing.py)
        self.forward_failures = 0  # ... whose owner was gone or failed: answered here (402) instead
        self.started = time.time()

    def ended(self, reason: str, count: int = 1) -> None:
        self.disconnects[reason] += count

    def replay(self, recovered: bool) -> None:
        if recovered:
            self.replay_hits += 1
        else:
            self.replay_misses += 1

    def published_one(self, seconds: float) -> None:
        self.published += 1
        self.publish_latency.observe(seconds)

    def delivered_batch(self, count: int, queued_since: float) -> None:
        """A transport took `count` queued messages to write; the oldest was queued at `queued_since`."""
        self.delivered += count
        waited = _monotonic() - queued_since
        histogram = self.delivery_latency  # Histogram.observe inlined: this runs once per written batch
        histogram.counts[bisect_left(histogram.bounds, waited)] += 1
        histogram.sum += waited
