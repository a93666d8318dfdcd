"""RedisEventLog: the event log in Redis Streams, shared by every broker process of a cluster.

Layout (every key starts with `prefix`, "cometd" unless told otherwise):
    {prefix}:streams         SET of stream names ever written (`streams()`)
    {prefix}:meta            HASH l:{stream} (the last id ever assigned to the stream) and
                             t:{stream} (the last timestamp given), for every stream
    {prefix}:log:{stream}    STREAM, one entry per event with the explicit id "<id>-0" and the
                             fields t (epoch seconds, as text) and p (the payload bytes)

Why explicit ids: XRANGE then pages by our integer id directly ("<after+1>-0" .. "+"), and the
retained ids stay contiguous, which `trim` uses to find the age cutoff by binary search.
Why the counters live in a hash: the stream forgets nothing it needs (a fully trimmed stream keeps
its last id), but `bounds` and the next append must agree on "latest" in one snapshot, and a hash
field read is cheaper than XINFO. Why one hash for all streams: an append of events to many
streams (a point-to-point batch) reads and writes every counter in one command each.

Every write is one Lua script, so an append (ids, timestamps, trimming, the stream-name set and,
for the Redis engine, the fan-out PUBLISH) is atomic: ids and fan-out order always agree. One
script call appends a whole batch of events, to any number of streams, in one round trip.

Redis errors that mean "unreachable" (connection refused or lost, timeouts, a server still
loading its data) become `EventLogUnavailable`, so callers can answer "retry later" instead of
crashing; commands are never retried here, because a retried append could record an event twice.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import (
    KEEP_ALL,
    UNKNOWN_BOUNDS,
    Bounds,
    Event,
    EventLogClosed,
    EventLogUnavailable,
    Retention,
    as_payloads,
    check_limit,
    is_redis_url,
)

log = logging.getLogger("cometd_broker.eventlog")

try:
    from redis.maint_notifications import MaintNotificationsConfig  # redis-py >= 7
except ImportError:
    MaintNotificationsConfig = None

_SCAN_PAGE = 500  # entries per XRANGE when read_range scans a stream

# ARGV: key prefix, now (seconds as text), max_count ('' = no limit), fan-out channel ('' = none),
#       fan-out header, then per event: stream name, payload, id floor. Returns the events' ids, in order.
# The script builds its keys from the prefix rather than receiving two per event: a third fewer
# arguments to encode and send. (Undeclared keys are fine on a single Redis; Redis Cluster would
# need every key of a call in one hash slot anyway.) The counters of every stream of the batch are
# read with one HMGET and written back with one HSET of the shared meta hash: per event only its
# XADD remains. One call appends a whole batch (one round trip, one PUBLISH however many events
# and streams). The id floor lets the Redis engine keep ids increasing after Redis lost its data
# (restarted without persistence): a broker passes the newest id it has seen, so ids are never
# handed out twice.
_APPEND = """
local prefix = ARGV[1]
local meta = prefix .. ':meta'
local streams, order, fields = {}, {}, {}  -- the batch's streams, first-seen order, their meta fields
local m = 0
for a = 6, #ARGV, 3 do
  local stream = ARGV[a]
  if not streams[stream] then
    streams[stream] = true
    m = m + 1
    order[m] = stream
    fields[2 * m - 1], fields[2 * m] = 'l:' .. stream, 't:' .. stream
  end
end
local state = redis.call('HMGET', meta, unpack(fields))
local now = ARGV[2]
for i = 1, m do
  local stream = order[i]
  local latest, ts = state[2 * i - 1], state[2 * i]
  if not latest then redis.call('SADD', prefix .. ':streams', stream) end  -- with its first event
  if not ts or tonumber(ts) < tonumber(now) then ts = now end  -- timestamps never go back in a stream
  streams[stream] = {tonumber(latest or '0'), ts, prefix .. ':log:' .. stream}
end
local ids, payloads = {}, {}
local n = 0
for a = 6, #ARGV, 3 do
  local s = streams[ARGV[a]]
  local floor = tonumber(ARGV[a + 2])
  if s[1] < floor then s[1] = floor end
  s[1] = s[1] + 1
  if ARGV[3] ~= '' then
    redis.call('XADD', s[3], 'MAXLEN', ARGV[3], s[1] .. '-0', 't', s[2], 'p', ARGV[a + 1])
  else
    redis.call('XADD', s[3], s[1] .. '-0', 't', s[2], 'p', ARGV[a + 1])
  end
  n = n + 1
  ids[n], payloads[n] = s[1], ARGV[a + 1]
end
local out = {}
for i = 1, m do
  local s = streams[order[i]]
  out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] = fields[2 * i - 1], s[1], fields[2 * i], s[2]
end
redis.call('HSET', meta, unpack(out))
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], table.concat(ids, ',') .. '\\n' .. ARGV[5] .. '\\n' .. table.concat(payloads))
end
return ids
"""

# KEYS: stream. ARGV: cutoff ('' = no age limit), max_count ('' = no count limit). Returns dropped.
# Timestamps never decrease within a stream and retained ids are contiguous, so the first event
# young enough is found by binary search over ids: O(log n) lookups, never a scan inside Redis.
_TRIM = """
local dropped = 0
if ARGV[2] ~= '' then
  dropped = dropped + redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[2])
end
if ARGV[1] == '' then return dropped end
local cutoff = tonumber(ARGV[1])
local function ts_of(entry) return tonumber(entry[2][2]) end
local function id_of(entry) return tonumber(string.match(entry[1], '^(%d+)')) end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 or ts_of(first[1]) >= cutoff then return dropped end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if ts_of(last[1]) < cutoff then
  return dropped + redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
end
local lo, hi = id_of(first[1]), id_of(last[1])
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  local entry = redis.call('XRANGE', KEYS[1], mid .. '-0', '+', 'COUNT', 1)[1]
  if ts_of(entry) < cutoff then lo = id_of(entry) + 1 else hi = mid end
end
return dropped + redis.call('XTRIM', KEYS[1], 'MINID', lo .. '-0')
"""


class RedisEventLog:
    """The Redis Streams store. Opening does no I/O: the first command connects."""

    def __init__(
        self,
        url: str,
        retention: Retention = KEEP_ALL,
        *,
        prefix: str = "cometd",
        clock: Callable[[], float] = time.time,
        socket_timeout: float = 5.0,  # a command that takes longer is reported as unavailable
        connect_timeout: float = 2.0,
        max_connections: int = 64,  # commands in flight at once; more wait for a connection
    ) -> None:
        if not is_redis_url(url):
            raise ValueError(f"not a Redis URL: {url!r} (use redis://, rediss:// or unix://)")
        self.url = url
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self.retention = retention
        self.prefix = prefix
        self._clock = clock
        # Every connection says whose it is in CLIENT LIST (operators; tests kill one broker's).
        self.client_name = f"cometd-broker-{os.getpid()}-{secrets.token_hex(3)}"
        # No retries (see the module docstring). The blocking pool bounds connections; stale ones
        # are detected by redis-py before use, so a restarted Redis costs no failed command. (That
        # check is skipped while redis-py's maintenance notifications are on, its default since 7:
        # they are for Redis Enterprise's failovers, which this log does not follow anyway.)
        options: dict[str, Any] = {}
        if MaintNotificationsConfig is not None:
            options["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=connect_timeout + socket_timeout,
            socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 0),
            client_name=self.client_name, **options)
        self._client = aioredis.Redis(connection_pool=pool)
        self._append = self._client.register_script(_APPEND)
        self._trim = self._client.register_script(_TRIM)
        self._streams_key = f"{prefix}:streams"
        self._max_count = "" if retention.max_count is None else str(retention.max_count)
        self._closed = False
        # For logs and metrics: whether the last command reached Redis, and how often that changed.
        self.connected = True  # nothing failed yet
        self.disconnects = 0
        self.reconnects = 0
        self.pending_appends = 0  # events sent to Redis and not yet confirmed
        self._down_since = 0.0

    # ---- keys --------------------------------------------------------------------------------

    def _meta(self) -> str:
        return f"{self.prefix}:meta"

    def _log(self, stream: str) -> str:
        return f"{self.prefix}:log:{stream}"

    # ---- writes ------------------------------------------------------------------------------

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[int]:
        self._check_open()
        payloads = as_payloads(payloads)
        if not payloads:
            return []
        return await self._run_append([(stream, payload, 0) for payload in payloads])

    # The Redis engine calls the append script itself, on its own connection (see RedisLink):
    @property
    def append_script(self) -> str:
        return _APPEND

    @property
    def append_sha(self) -> str:
        return self._append.sha

    def append_args(self, events: Sequence[tuple[str, bytes, int]], *, channel: str, header: bytes) -> list[Any]:
        """The append script's arguments for `events` (stream, payload, id floor), in order and to any
        streams, PUBLISHing "<id>,<id>,...\\n<header>\\n<payload><payload>..." on `channel`.

        It returns their ids. For the Redis engine: every subscriber sees the events of a stream in
        id order, a whole batch in one message (the header tells it where each payload ends)."""
        args: list[Any] = [self.prefix, repr(float(self._clock())), self._max_count, channel, header]
        for event in events:
            args += event  # stream, payload, floor
        return args

    async def _run_append(self, events: Sequence[tuple[str, bytes, int]]) -> list[int]:
        args = self.append_args(events, channel="", header=b"")
        self.pending_appends += len(events)
        try:
            with self._unavailable():
                return await self._append(args=args)  # Lua numbers: hiredis gives ints already
        finally:
            self.pending_appends -= len(events)

    async def trim(self, now: float) -> int:
        self._check_open()
        max_age = self.retention.max_age
        if max_age is None and self.retention.max_count is None:
            return 0
        cutoff = "" if max_age is None else repr(float(now - max_age))
        dropped = 0
        for stream in await self.streams():
            with self._unavailable():
                dropped += int(await self._trim(keys=[self._log(stream)], args=[cutoff, self._max_count]))
        return dropped

    # ---- reads -------------------------------------------------------------------------------

    async def read(self, stream: str, after: int, limit: int) -> list[Event]:
        self._check_open()
        check_limit(limit)
        if limit == 0:
            return []
        with self._unavailable():
            entries = await self._client.xrange(self._log(stream), _start(after), "+", count=limit)
        return [_event(stream, entry) for entry in entries]

    async def bounds(self, stream: str) -> Bounds:
        self._check_open()
        # One transaction, one snapshot: latest and oldest agree even while others append.
        with self._unavailable():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(self._meta(), f"l:{stream}")
                pipe.xrange(self._log(stream), "-", "+", count=1)
                latest_text, first = await pipe.execute()
        if latest_text is None:
            return UNKNOWN_BOUNDS
        latest = int(latest_text)
        return Bounds(_id_of(first[0][0]) if first else latest + 1, latest)

    async def streams(self) -> list[str]:
        self._check_open()
        with self._unavailable():
            names = await self._client.smembers(self._streams_key)
        return sorted(name.decode() for name in names)

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
        self._check_open()
        check_limit(limit)
        known = await self.streams()
        names = known if streams is None else sorted(set(streams) & set(known))
        if limit == 0 or not names:
            return []
        # Within a stream events are already in sort_key order, so the first `limit` matching
        # events of each stream are enough for the merged page.
        per_stream = [await self._matching(name, since, until, after_id, after, limit) for name in names]
        merged: Iterator[Event] = heapq.merge(*per_stream, key=lambda event: event.sort_key)
        return list(itertools.islice(merged, limit))

    async def _matching(self, stream: str, since: float | None, until: float | None, after_id: int | None,
                        after: tuple[float, str, int] | None, limit: int) -> list[Event]:
        found: list[Event] = []
        start = _start(after_id if after_id is not None else -1)
        while len(found) < limit:
            with self._unavailable():
                entries = await self._client.xrange(self._log(stream), start, "+", count=_SCAN_PAGE)
            for entry in entries:
                event = _event(stream, entry)
                if until is not None and event.timestamp >= until:
                    return found  # timestamps never decrease within a stream
                if since is not None and event.timestamp < since:
                    continue
                if after is not None and event.sort_key <= after:
                    continue
                found.append(event)
                if len(found) == limit:
                    break
            if len(entries) < _SCAN_PAGE:
                break
            start = _start(_id_of(entries[-1][0]))
        return found

    # ---- for the Redis engine ----------------------------------------------------------------

    async def ping(self) -> None:
        """A round trip, for readiness probes: raises EventLogUnavailable when Redis does not answer."""
        self._check_open()
        with self._unavailable():
            await self._client.ping()

    # ---- lifetime ----------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.aclose(close_connection_pool=True)

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogClosed("event log is closed")

    def stats(self) -> dict[str, Any]:
        """For metrics and readiness: whether Redis answered the last command, reconnects, lag."""
        problem = "event log is closed" if self._closed else None
        if problem is None and not self.connected:
            problem = f"redis at {self.url} is unavailable (for {time.monotonic() - self._down_since:.1f} s)"
        return {"store": "redis", "up": problem is None, "problem": problem, "connected": self.connected,
                "disconnects": self.disconnects, "reconnects": self.reconnects, "pending": self.pending_appends,
                "oldest_pending_seconds": 0.0}

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # BusyLoadingError (a restarted Redis reading its data) is a ConnectionError too.
            reason = f"redis at {self.url} is unavailable: {exc or type(exc).__name__}"
            if self.connected:
                self.connected, self._down_since = False, time.monotonic()
                self.disconnects += 1
                log.warning("event log: %s; commands fail until it is back", reason)
            raise EventLogUnavailable(reason) from exc
        if not self.connected:
            self.connected = True
            self.reconnects += 1
            log.info("event log: redis at %s reconnected after %.1f s (reconnect #%d)",
                     self.url, time.monotonic() - self._down_since, self.reconnects)


def _start(after: int) -> str:
    """The XRANGE start for "ids greater than `after`"."""
    return f"{after + 1}-0" if after >= 0 else "-"


def _id_of(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


def _event(stream: str, entry: tuple[bytes, dict[bytes, bytes]]) -> Event:
    entry_id, fields = entry
    return Event(stream, _id_of(entry_id), float(fields[b"t"]), fields[b"p"])
