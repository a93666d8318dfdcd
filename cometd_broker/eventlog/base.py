"""The event log interface: what every store (memory, SQLite, later Redis) promises.

The broker appends every published event before delivering it, and the replay
extension and the `events` tools read it back. Stores differ only in where the
bytes live; the semantics below are shared and tested against every store.

Ids
    Per stream, ids are 1, 2, 3 ... in append order, strictly increasing and
    never reused: not after trimming, not after trimming everything, and (for
    durable stores) not after a restart. Retained ids are always contiguous,
    because retention only ever drops a prefix of a stream (see timestamps).

Timestamps
    Epoch seconds taken from the store's clock at append, clamped so they never
    go backwards within a stream. That keeps "older than max_age" a prefix of
    the stream, so trimming by age cannot punch holes into the id sequence.

Bounds
    `bounds(stream)` returns `Bounds(oldest, latest)`:
    - `latest` is the last id ever assigned (0 if the stream was never written);
    - `oldest` is the id of the oldest retained event; if nothing is retained it
      is `latest + 1` (everything trimmed), or 0 for a never-written stream.
    So the retained events are exactly ids `oldest..latest`, and a reader that
    has seen everything up to `after` can resume without a gap iff
    `after >= oldest - 1` (`Bounds.covers(after)`), in every case above.

Epoch
    Every log has an epoch: a random token made when the log itself is made (a
    memory log at construction, a SQLite file when it is created, a Redis log
    when its epoch key is missing: a new or flushed Redis). Ids are only
    meaningful together with it: a log that starts over (a memory log after a
    restart, a deleted SQLite file, a flushed Redis) issues ids 1, 2, 3 again,
    and only its new epoch tells them from the old log's. The replay extension
    hands it to clients, as Centrifugo's stream positions carry {offset, epoch}.
    It survives restarts of a durable store; a store restored from a backup
    keeps the epoch the backup had.

Retention
    `max_count` is enforced on every append (a store never holds more than
    `max_count` events per stream); `max_age` is enforced by `trim(now)`,
    which a `RetentionTask` calls periodically. `trim` also re-applies
    `max_count`, which matters when a durable store is reopened with a smaller
    limit. `trim` returns how many events it dropped.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


class EventLogClosed(RuntimeError):
    """The log was closed (or its writer stopped); it accepts no more calls."""


class EventLogUnavailable(RuntimeError):
    """A networked store (Redis) cannot be reached right now: the call did nothing; retry later."""


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def is_redis_url(target: str) -> bool:
    """Whether an event log (or engine) target names a Redis server."""
    return target.startswith(REDIS_SCHEMES)


@dataclass(frozen=True, slots=True)
class Event:
    stream: str
    id: int
    timestamp: float  # epoch seconds, non-decreasing within a stream
    payload: bytes  # the serialized Bayeux message (orjson bytes), stored as given

    @property
    def sort_key(self) -> tuple[float, str, int]:
        """The order of `read_range`; pass it back as `after=` to page."""
        return (self.timestamp, self.stream, self.id)


class Bounds(NamedTuple):
    oldest: int
    latest: int

    @property
    def empty(self) -> bool:
        return self.latest == 0 or self.oldest > self.latest

    def covers(self, after: int) -> bool:
        """Whether every event with id > `after` is still retained (resume without a gap)."""
        return after >= self.oldest - 1


UNKNOWN_BOUNDS = Bounds(0, 0)


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of each stream to keep. None means no limit of that kind."""

    max_age: float | None = None  # seconds
    max_count: int | None = None  # events per stream

    def __post_init__(self) -> None:
        if self.max_age is not None and not self.max_age > 0:
            raise ValueError(f"max_age must be > 0 seconds or None, not {self.max_age!r}")
        if self.max_count is not None and (isinstance(self.max_count, bool) or self.max_count < 1):
            raise ValueError(f"max_count must be >= 1 or None, not {self.max_count!r}")


KEEP_ALL = Retention()  # no limits: the default, so retention is always an explicit choice


@runtime_checkable
class EventLog(Protocol):
    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[int]:
        """Append `payloads` to `stream` in order and return their ids.

        Durable stores return only once the events are committed. Appending an
        empty sequence returns [] and does not create the stream.
        """
        ...

    async def append_many(self, events: Sequence[tuple[str, bytes]]) -> list[int]:
        """Append (stream, payload) pairs, in order and to any streams, as one unit; return their ids.

        The same as appending each in turn, except that a durable store commits them together:
        all are recorded or, when the call raises, none is. The broker appends a batch's
        publishes this way (one commit, one wake-up of the caller, instead of one per publish).
        """
        ...

    async def append_many_then(self, events: Sequence[tuple[str, bytes]],
                               then: Callable[[list[int]], T]) -> T:
        """`append_many`, then `then(ids)` as soon as the events are recorded; returns its result.

        `then` runs on the loop before the caller resumes (a durable store runs it in the callback
        that learns of the commit, a loop turn before the awaiting task would), and runs even if
        the caller was cancelled meanwhile: the broker dispatches from it, so what is recorded is
        delivered, without waiting for the publishing task to be scheduled again.
        """
        ...

    def reap(self) -> None:
        """On the loop: run now what `append_many_then` owes for appends already recorded, instead of
        when the loop gets to it. The broker calls it as each batch of requests comes in; a store
        that records on the loop itself has nothing to do."""
        ...

    async def read(self, stream: str, after: int, limit: int) -> list[Event]:
        """Events of `stream` with id > `after`, ascending, at most `limit`.

        Page by asking again with the last id returned. If `after` is below the
        retained range the read starts at the oldest retained event; check
        `bounds(...).covers(after)` first to detect the gap.
        """
        ...

    async def bounds(self, stream: str) -> Bounds:
        """(oldest retained id, latest id); see the module docstring."""
        ...

    async def epoch(self) -> str:
        """This log's epoch (see the module docstring); never empty."""
        ...

    async def bounds_with_epoch(self, stream: str) -> tuple[str, Bounds]:
        """`epoch()` and `bounds(stream)` together: one snapshot, and one round trip for Redis."""
        ...

    async def streams(self) -> list[str]:
        """Every stream ever written (including fully trimmed ones), sorted."""
        ...

    async def read_range(
        self,
        *,
        streams: Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        after_id: int | None = None,
        after: tuple[float, str, int] | None = None,
        limit: int,
    ) -> list[Event]:
        """Events across streams ordered by (timestamp, stream, id), for the dump/replay tools.

        `streams`: only these (None: all). `since` <= timestamp < `until`.
        `after_id`: only ids > after_id in each stream (meant for one stream).
        `after`: only events whose `sort_key` is > this key: pass the last
        event's `sort_key` to fetch the next page.
        """
        ...

    async def trim(self, now: float) -> int:
        """Enforce retention at time `now` (epoch seconds); return how many events were dropped."""
        ...

    async def close(self) -> None:
        """Release resources; idempotent. Later calls raise EventLogClosed."""
        ...


def new_epoch() -> str:
    """A fresh epoch: 64 random bits as 16 hex digits, so two logs never share one."""
    return secrets.token_hex(8)


def as_payloads(payloads: Sequence[bytes]) -> list[bytes]:
    """Copy payloads to immutable bytes; refuse anything else (bytes(5) would silently store 5 zeros)."""
    if isinstance(payloads, bytes | bytearray | memoryview | str):
        raise TypeError("payloads must be a sequence of bytes, not a single value")
    result = []
    for payload in payloads:
        if type(payload) is not bytes:  # the usual case needs no copy and no isinstance
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise TypeError(f"an event payload must be bytes, not {type(payload).__name__}")
            payload = bytes(payload)
        result.append(payload)
    return result


def check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
