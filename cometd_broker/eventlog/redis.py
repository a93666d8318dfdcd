"""RedisEventLog: the event log in Redis Streams, shared by every broker process of a cluster.

Layout (every key starts with the deployment's namespace `{ns}`, "{prefix}:db{N}": the prefix given,
"cometd" unless told otherwise, and the URL's database, see redis_names.py):
    {ns}:streams             SET of stream names ever written (`streams()`)
    {ns}:epoch               STRING: the log's epoch, made (SET NX) by the first read that finds it
                             missing, so a new or flushed Redis has a new one
    {ns}:clock               STRING: the last timestamp given (epoch seconds): timestamps never go
                             back, whatever the publishing processes' clocks say. (Logs written by
                             versions before it kept one per stream in the HASH {ns}:ts; the first
                             append starts from the largest of those.)
    {ns}:log:{stream}        STREAM, one entry per event with the id "0-<id>" and the fields t
                             (epoch seconds, as text) and p (the payload bytes)
The Redis engine's fan-out channel is `{ns}:fanout` (pub/sub ignores databases: the namespace keeps
two deployments on one server apart).

Why ids "0-<id>": Redis hands out the next sequence number itself (XADD key 0-*), so an append
needs no counter of its own to read and write: per event it is one XADD. XRANGE pages by our
integer id directly ("0-<after+1>" .. "+"), the retained ids stay contiguous, which `trim` uses
to find the age cutoff by binary search, and a stream keeps its last id when trimmed empty
(XINFO's last-generated-id, what `bounds` reads).

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
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..redis_names import DEFAULT_PREFIX, redis_namespace
from .base import (
    KEEP_ALL,
    UNKNOWN_BOUNDS,
    Bounds,
    Event,
    EventLogClosed,
    EventLogUnavailable,
    Retention,
    T,
    as_payloads,
    check_limit,
    is_redis_url,
    new_epoch,
)

log = logging.getLogger("cometd_broker.eventlog")

try:
    from redis.maint_notifications import MaintNotificationsConfig  # redis-py >= 7
except ImportError:
    MaintNotificationsConfig = None

_SCAN_PAGE = 500  # entries per XRANGE when read_range scans a stream
MIN_REDIS = (7, 0)  # XADD with "<ms>-*" ids (and NOMKSTREAM, 6.2)

# ARGV: key prefix (the namespace), now (seconds as text), max_count ('' = no limit), fan-out channel ('' = none),
#       fan-out header, then per event: its stream's key, payload, and the explicit id to try first
#       ('' = none). Returns the events' ids, in order, as one string "<id>,<id>,...".
# The caller builds each event's key and explicit id (append_args): string work in Lua costs Redis
# more than in the broker, and Redis's CPU is the cluster's shared bottleneck. (Undeclared keys are
# fine on a single Redis; Redis Cluster would need every key of a call in one hash slot anyway.)
# One call appends a whole batch (one round trip, one PUBLISH however many events and streams).
# The explicit id is one above the id floor, which keeps ids increasing after Redis lost its data
# (restarted without persistence): a broker passes the newest id it has seen for the stream, and
# the event gets an id above both it and the stream's last. Normally the stream's last id is that
# floor, so the explicit id is simply the next one.
_APPEND = """
local prefix, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local clock, streams, name_at = prefix .. ':clock', prefix .. ':streams', #prefix + 6  -- after ':log:'
-- Timestamps never go back, across the cluster's clocks: each call's is at least the last one given.
-- One value for the whole log (not one per stream: a lookup and a write per call, not per stream).
local given = redis.call('GET', clock)
local missing = not given
if missing then  -- first call, or a log from before the clock key: start from its per-stream stamps
  local old = redis.call('HVALS', prefix .. ':ts')
  for i = 1, #old do
    if not given or tonumber(old[i]) > tonumber(given) then given = old[i] end
  end
end
local t = now
if given and tonumber(given) >= tonumber(now) then t = given end
if missing or t ~= given then redis.call('SET', clock, t) end
local xadd, xadd_existing  -- XADD; the same only to a stream that exists (nil if it does not)
if maxlen == '' then
  xadd = function(key, id, t, p) return redis.call('XADD', key, id, 't', t, 'p', p) end
  xadd_existing = function(key, id, t, p) return redis.pcall('XADD', key, 'NOMKSTREAM', id, 't', t, 'p', p) end
else
  xadd = function(key, id, t, p) return redis.call('XADD', key, 'MAXLEN', maxlen, id, 't', t, 'p', p) end
  xadd_existing = function(key, id, t, p)
    return redis.pcall('XADD', key, 'NOMKSTREAM', 'MAXLEN', maxlen, id, 't', t, 'p', p)
  end
end
local ids, payloads = {}, {}
local n = 0
for a = 6, #ARGV, 3 do
  local key, payload, above = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local id
  if above ~= '' then
    id = xadd_existing(key, above, t, payload)
    if id == false then  -- the stream is gone (Redis lost its data): it starts again above the floor
      redis.call('SADD', streams, string.sub(key, name_at))
      id = xadd(key, above, t, payload)
    elseif type(id) == 'table' then  -- the stream is past the floor already
      id = nil
    end
  end
  if not id then
    id = xadd(key, '0-*', t, payload)
    if id == '0-1' then redis.call('SADD', streams, string.sub(key, name_at)) end  -- its first event
  end
  n = n + 1
  ids[n], payloads[n] = string.sub(id, 3), payload
end
local joined = table.concat(ids, ',')
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], joined .. '\\n' .. ARGV[5] .. '\\n' .. table.concat(payloads))
end
return joined
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
local function id_of(entry) return tonumber(string.match(entry[1], '^0%-(%d+)$')) end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 or ts_of(first[1]) >= cutoff then return dropped end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if ts_of(last[1]) < cutoff then
  return dropped + redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
end
local lo, hi = id_of(first[1]), id_of(last[1])
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  local entry = redis.call('XRANGE', KEYS[1], '0-' .. mid, '+', 'COUNT', 1)[1]
  if ts_of(entry) < cutoff then lo = id_of(entry) + 1 else hi = mid end
end
return dropped + redis.call('XTRIM', KEYS[1], 'MINID', '0-' .. lo)
"""


class RedisEventLog:
    """The Redis Streams store. Opening does no I/O: the first command connects."""

    def __init__(
        self,
        url: str,
        retention: Retention = KEEP_ALL,
        *,
        prefix: str = DEFAULT_PREFIX,  # the deployment's (--redis-prefix); the keys' namespace adds the database
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
        # How every key starts (the script's ARGV[1]): the deployment's namespace, not the bare prefix.
        self.prefix = prefix = redis_namespace(url, prefix)
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
        self._epoch_key = f"{prefix}:epoch"
        self._log_prefix = f"{prefix}:log:"  # the script finds a stream's name after it (name_at)
        self._max_count = "" if retention.max_count is None else str(retention.max_count)
        self._version_checked = False  # Redis's version, checked before the first append
        self._closed = False
        # For logs and metrics: whether the last command reached Redis, and how often that changed.
        self.connected = True  # nothing failed yet
        self.disconnects = 0
        self.reconnects = 0
        self.pending_appends = 0  # events sent to Redis and not yet confirmed
        self._down_since = 0.0

    # ---- keys --------------------------------------------------------------------------------

    def _log(self, stream: str) -> str:
        return self._log_prefix + stream

    # ---- writes ------------------------------------------------------------------------------

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[int]:
        self._check_open()
        payloads = as_payloads(payloads)
        if not payloads:
            return []
        return await self._run_append([(stream, payload, 0) for payload in payloads])

    async def append_many(self, events: Sequence[tuple[str, bytes]]) -> list[int]:
        self._check_open()
        payloads = as_payloads([payload for _, payload in events])
        if not payloads:
            return []
        return await self._run_append([(stream, payload, 0) for (stream, _), payload in zip(events, payloads,
                                                                                          strict=True)])

    async def append_many_then(self, events: Sequence[tuple[str, bytes]], then: Callable[[list[int]], T]) -> T:
        return then(await self.append_many(events))  # the Redis engine publishes through its own script

    def reap(self) -> None:
        """Nothing is owed: `then` runs in the appending task (the engine delivers from Redis's fan-out)."""

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

        It returns their ids as "<id>,<id>,..." (`parse_ids`). For the Redis engine: every subscriber
        sees the events of a stream in id order, a whole batch in one message (the header tells it
        where each payload ends)."""
        args: list[Any] = [self.prefix, repr(float(self._clock())), self._max_count, channel, header]
        log_prefix = self._log_prefix
        for stream, payload, floor in events:
            args += (log_prefix + stream, payload, f"0-{floor + 1}" if floor else "")
        return args

    @staticmethod
    def parse_ids(reply: bytes) -> list[int]:
        """The ids the append script returned."""
        return [int(text) for text in reply.split(b",")]

    async def _run_append(self, events: Sequence[tuple[str, bytes, int]]) -> list[int]:
        args = self.append_args(events, channel="", header=b"")
        self.pending_appends += len(events)
        try:
            with self._unavailable():
                if not self._version_checked:
                    await self._check_version()
                return self.parse_ids(await self._append(args=args))
        finally:
            self.pending_appends -= len(events)

    async def _check_version(self) -> None:
        """Once, before the first append: an older Redis would refuse every one with a cryptic error."""
        version_text = str((await self._client.info("server")).get("redis_version", "0"))
        require_version(self.url, parse_version(version_text), "the event log")
        self._version_checked = True

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
        # One command, one snapshot: latest and oldest agree even while others append.
        with self._unavailable():
            try:
                info = await self._client.xinfo_stream(self._log(stream))
            except ResponseError as exc:
                if "no such key" in str(exc).lower():
                    return UNKNOWN_BOUNDS
                raise
        return _bounds_of(info)

    async def epoch(self) -> str:
        self._check_open()
        candidate = new_epoch()
        with self._unavailable():
            stored = await self._client.set(self._epoch_key, candidate, nx=True, get=True)
        return _epoch_from(stored, candidate)

    async def bounds_with_epoch(self, stream: str) -> tuple[str, Bounds]:
        self._check_open()
        candidate = new_epoch()
        # One transaction, one round trip: the epoch and the bounds of the same log, even if Redis is
        # flushed meanwhile (a flushed Redis has no epoch key: the first to ask makes a new one).
        with self._unavailable():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._epoch_key, candidate, nx=True, get=True)
                pipe.xinfo_stream(self._log(stream))
                stored, info = await pipe.execute(raise_on_error=False)
        if isinstance(info, ResponseError) and "no such key" in str(info).lower():
            return _epoch_from(stored, candidate), UNKNOWN_BOUNDS
        for result in (stored, info):
            if isinstance(result, Exception):
                raise result
        return _epoch_from(stored, candidate), _bounds_of(info)

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
            reason = f"redis at {self.url} is unavailable: {str(exc).rstrip('.') or type(exc).__name__}"
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


def parse_version(text: bytes | str) -> tuple[int, ...]:
    """(7, 0, 15) from "7.0.15"; a part that is not a number counts as 0."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return tuple(int(part) if part.isdigit() else 0 for part in text.split("."))


def require_version(url: str, version: tuple[int, ...], needed_by: str) -> None:
    """Raise EventLogUnavailable, saying why, when the Redis at `url` is older than MIN_REDIS."""
    if version < MIN_REDIS:
        raise EventLogUnavailable(f"redis at {url} is {'.'.join(map(str, version))}: {needed_by} needs Redis "
                                  f"{'.'.join(map(str, MIN_REDIS))} or newer")


def _bounds_of(info: dict[Any, Any]) -> Bounds:
    """The bounds of a stream from its XINFO STREAM reply."""
    latest = _id_of(info["last-generated-id"])
    first = info.get("first-entry")
    return Bounds(_id_of(first[0]) if first else latest + 1, latest)


def _epoch_from(stored: bytes | None, candidate: str) -> str:
    """The epoch after SET NX GET with `candidate`: the one stored before, or else the candidate."""
    return candidate if stored is None else stored.decode()


def _start(after: int) -> str:
    """The XRANGE start for "ids greater than `after`"."""
    return f"0-{after + 1}" if after >= 0 else "-"


def _id_of(entry_id: bytes | str) -> int:
    """Our id of a stream entry "0-<id>"."""
    return int(entry_id[2:])


def _event(stream: str, entry: tuple[bytes, dict[bytes, bytes]]) -> Event:
    entry_id, fields = entry
    return Event(stream, _id_of(entry_id), float(fields[b"t"]), fields[b"p"])
