"""Reading the event log for the debugging tools: bounded pages of a range, and following new events.

Everything goes through `EventLog.read_range`, ordered by (timestamp, stream, id), so the same code
reads a SQLite file another process is writing (WAL) and the broker's own log (admin API).
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..eventlog import Event, EventLog
from .filters import EventFilter, FilterError, decode

Key = tuple[float, str, int]  # Event.sort_key
PAGE = 500  # events per store query: large enough to be cheap, small enough to bound memory


def encode_cursor(state: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode("ascii").rstrip("=")


def decode_cursor(token: str) -> Any:
    try:
        return orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise FilterError(f"bad cursor {token[:40]!r}: pass back the 'next' value of an earlier answer") from None


def key_from(value: Any) -> Key:
    if (isinstance(value, list) and len(value) == 3 and isinstance(value[0], int | float)
            and isinstance(value[1], str) and isinstance(value[2], int) and math.isfinite(value[0])):
        return float(value[0]), value[1], value[2]
    raise FilterError("bad cursor: pass back the 'next' value of an earlier answer")


async def _streams(log: EventLog, filt: EventFilter) -> list[str] | None:
    if filt.exact_streams is not None or (filt.user is None and filt.channel is None):
        return filt.select_streams(())
    return filt.select_streams(await log.streams())


async def _query(log: EventLog, filt: EventFilter, streams: list[str] | None, after: Key | None,
                 limit: int, *, since: float | None = None, until: float | None = None) -> list[Event]:
    return await log.read_range(streams=streams, since=filt.since if since is None else since,
                                until=filt.until if until is None else until, after_id=filt.after_id,
                                after=after, limit=limit)


async def scan(log: EventLog, filt: EventFilter, *, page: int = PAGE) -> AsyncIterator[tuple[Event, Any]]:
    """Every matching event of the range, oldest first, read a page at a time."""
    streams = await _streams(log, filt)
    if streams == []:
        return
    after: Key | None = None
    while True:
        events = await _query(log, filt, streams, after, page)
        for event in events:
            message = decode(event)
            if filt.wants(event, message):
                yield event, message
        if len(events) < page:
            return
        after = events[-1].sort_key


async def count(log: EventLog, filt: EventFilter) -> int:
    """How many events `scan` yields (a first pass, so long runs can show done / total)."""
    total = 0
    async for _ in scan(log, filt):
        total += 1
    return total


@dataclass
class Page:
    records: list[tuple[Event, Any]]
    next: str | None  # a cursor for the following page; None when the range is exhausted


async def read_page(log: EventLog, filt: EventFilter, *, cursor: str | None, limit: int,
                    max_scan: int = 10 * PAGE) -> Page:
    """Up to `limit` matching events after `cursor`. At most `max_scan` events are examined, so a
    selective filter (an interaction id) answers quickly with a cursor instead of reading everything."""
    after = key_from(decode_cursor(cursor)) if cursor else None
    streams = await _streams(log, filt)
    records: list[tuple[Event, Any]] = []
    if streams == []:
        return Page(records, None)
    scanned = 0
    while scanned < max_scan:
        want = min(PAGE, max_scan - scanned)
        events = await _query(log, filt, streams, after, want)
        scanned += len(events)
        for event in events:
            after = event.sort_key
            message = decode(event)
            if filt.wants(event, message):
                records.append((event, message))
                if len(records) == limit:
                    return Page(records, encode_cursor(list(after)))
        if len(events) < want:
            return Page(records, None)
    return Page(records, encode_cursor(list(after)) if after else None)


@dataclass
class Follower:
    """New events as they are committed, for `events tail`.

    The main query reads after the last key seen, so it always makes progress. Commits are ordered
    by timestamp (one writer, one clock), but two commits can share a timestamp on a coarse clock:
    an event committed later with the same timestamp and a smaller (stream, id) would sort before
    the last key. So every poll also re-reads the events at exactly the newest timestamp and keeps
    what it has not seen (ids grow within a stream, so the newest id per stream is enough).
    """

    filt: EventFilter
    last: Key
    seen: dict[str, int] = field(default_factory=dict)  # stream -> newest id seen at timestamp last[0]

    @classmethod
    def start(cls, filt: EventFilter, cursor: str | None = None, now: float | None = None) -> Follower:
        if cursor:
            state = decode_cursor(cursor)
            if not isinstance(state, dict) or not isinstance(state.get("s", {}), dict):
                raise FilterError("bad cursor: pass back the 'next' value of an earlier answer")
            seen = {k: v for k, v in state.get("s", {}).items() if isinstance(k, str) and isinstance(v, int)}
            return cls(filt, key_from(state.get("k")), seen)
        # From now on (or from --since): what was committed before the tail started is not "new".
        origin = filt.since if filt.since is not None else (time.time() if now is None else now)
        return cls(filt, (origin, "", 0))

    @property
    def cursor(self) -> str:
        return encode_cursor({"k": list(self.last), "s": self.seen})

    async def poll(self, log: EventLog, max_events: int = 1000) -> list[tuple[Event, Any]]:
        """Matching events committed since the last poll, oldest first (at most about `max_events`)."""
        streams = await _streams(log, self.filt)
        if streams == []:
            return []
        found: list[Event] = []
        if self.seen:  # stragglers at the newest timestamp (see the class docstring)
            ts = self.last[0]
            same = await _query(log, self.filt, streams, None, PAGE, since=ts, until=math.nextafter(ts, math.inf))
            for event in same:
                if event.id > self.seen.get(event.stream, 0) and event.sort_key < self.last:
                    self.seen[event.stream] = event.id
                    found.append(event)
        scanned = 0
        while scanned < max_events:
            events = await _query(log, self.filt, streams, self.last, min(PAGE, max_events - scanned))
            scanned += len(events)
            for event in events:
                self._advance(event)
            found.extend(events)
            if len(events) < PAGE:
                break
        records = []
        for event in found:
            message = decode(event)
            if self.filt.wants(event, message):
                records.append((event, message))
        return records

    def _advance(self, event: Event) -> None:
        if event.timestamp > self.last[0]:
            self.seen = {}  # only events at the newest timestamp can have stragglers
        self.seen[event.stream] = max(self.seen.get(event.stream, 0), event.id)
        self.last = max(self.last, event.sort_key)
