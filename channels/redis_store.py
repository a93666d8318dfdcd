"""Contact-center state in Redis: the `DocumentStore` of a cluster's leader.

Layout (every key starts with `prefix`): `{prefix}:state:{kind}` is a HASH of key -> JSON document.

A write is one Lua script, so a change is written whole or not at all, exactly like the SQLite
transaction of `StateStore`. The script is *fenced*: it first checks that the leader lease still holds
this process's value, so a leader that lost its lease (paused, partitioned, slow to notice) can never
overwrite what its successor wrote. A write that fails raises `StoreUnavailable`; the engine then keeps
the change pending and the caller gets a 503 envelope.

The client is redis.asyncio with short timeouts and no retries, so the loop never waits on the socket
(DESIGN.md rule 4). Writes go through one writer task in the order `submit` was called, and every write
queued while a script was in flight shares the next script (group commit): an awaited write implies
every earlier one is stored, which is what lets the engine publish right after its own write. A Redis
that stops answering fails the writes after `timeout` seconds; the leader steps down when it cannot
renew its lease.

Loading is async too: `open()` reads every kind before the engine is built (the cluster does that when
this process wins the lease, while the loop serves), and `load()` hands out what it read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterable

import orjson
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .store import MAX_BATCH, Change, Document, Row, StoreUnavailable, encode, stored_now
from .write_budget import MAX_PENDING, MAX_PENDING_BYTES, WriteBudget, size_of

# KEYS[1] the lease; ARGV[1] the lease value this leader holds. Then for i >= 2: KEYS[i] a kind's hash,
# ARGV[2i-2] the document key, ARGV[2i-1] its JSON ("" deletes it: a document is never empty JSON).
_APPLY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER this process no longer holds the contact-center leader lease')
end
for i = 2, #KEYS do
  local key, body = ARGV[2 * i - 2], ARGV[2 * i - 1]
  if body == '' then redis.call('HDEL', KEYS[i], key) else redis.call('HSET', KEYS[i], key, body) end
end
return #KEYS - 1
"""


class NotLeader(StoreUnavailable):
    """The fence refused a write: another process holds the lease now."""


def connect(url: str, timeout: float) -> aioredis.Redis:
    """An asyncio client that fails fast: one attempt, bounded connect and read times."""
    return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                   retry=Retry(NoBackoff(), 0), retry_on_timeout=False)


class RedisStateStore:
    """Documents by (kind, key) in Redis hashes; writes only while `lease_value` is in `lease_key`.
    Constructing it does no I/O; `open()` reads the state, the first `apply` starts the writer task."""

    def __init__(self, url: str, *, prefix: str, lease_key: str, lease_value: str, timeout: float = 1.0,
                 max_pending: int = MAX_PENDING, max_pending_bytes: int = MAX_PENDING_BYTES,
                 max_batch: int = MAX_BATCH) -> None:
        if max_pending < 1 or max_batch < 1 or max_pending_bytes < 1:
            raise ValueError("max_pending, max_pending_bytes and max_batch must be >= 1")
        self.prefix = prefix
        self._lease_key = lease_key
        self._lease_value = lease_value
        self._redis = connect(url, timeout)
        self._apply = self._redis.register_script(_APPLY)
        self._loaded: dict[str, dict[str, Document]] | None = None
        self._max_batch = max_batch
        self._budget = WriteBudget(max_pending, max_pending_bytes)
        self._pending: deque[tuple[list[Row], asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0  # scripts that wrote; writes / commits is the group-commit factor
        self.writes = 0

    def _key(self, kind: str) -> str:
        return f"{self.prefix}:state:{kind}"

    # ---- reads ------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Read every kind now, for `load` (the engine restores from it synchronously)."""
        loaded: dict[str, dict[str, Document]] = {}
        start = self._key("")
        async with self._unavailable():
            async for name in self._redis.scan_iter(match=_glob_escape(start) + "*", count=100):
                kind = name.decode()[len(start):]
                loaded[kind] = await self.read(kind)
        self._loaded = loaded

    async def read(self, kind: str) -> dict[str, Document]:
        """Every document of a kind as Redis holds it now."""
        async with self._unavailable():
            raw = await self._redis.hgetall(self._key(kind))
        return {key.decode(): orjson.loads(body) for key, body in raw.items()}

    def load(self, kind: str) -> dict[str, Document]:
        """Every document of a kind as `open()` read it."""
        if self._loaded is None:
            raise RuntimeError("RedisStateStore.load before open(): await store.open() first")
        return dict(self._loaded.get(kind, {}))

    # ---- writes -----------------------------------------------------------------------------------

    async def apply(self, changes: Iterable[Change]) -> None:
        future = await self.submit(changes)
        # A caller cancelled here does not cancel the write: the writer task owns it.
        await asyncio.shield(future)

    async def submit(self, changes: Iterable[Change]) -> asyncio.Future[None]:
        """Queue the write for the writer task; the future resolves once its script ran (see DocumentStore)."""
        rows = encode(changes)
        if not rows:
            return stored_now()
        self._check_open()
        size = size_of(rows)
        await self._budget.admit(size, self._check_open)
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._budget.release(size))
        self._pending.append((rows, future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_forever(),
                                                                  name="contact-center-state-writer")
        self._wake.set()
        return future

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))]
                failure: BaseException | None = None
                try:
                    await self._write([row for rows, _ in batch for row in rows])
                except Exception as exc:  # reported to each waiter; the task lives on for the next writes
                    failure = exc
                else:
                    self.commits += 1
                    self.writes += len(batch)
                for _, future in batch:
                    if not future.done():
                        if failure is None:
                            future.set_result(None)
                        else:
                            future.set_exception(failure)
            if self._closing:
                return

    async def _write(self, rows: list[Row]) -> None:
        keys, args = [self._lease_key], [self._lease_value]
        for kind, key, body in rows:
            keys.append(self._key(kind))
            args += [key, b"" if body is None else body]
        try:
            await self._apply(keys=keys, args=args)
        except redis.ResponseError as exc:
            if str(exc).startswith("NOTLEADER"):
                raise NotLeader(str(exc).removeprefix("NOTLEADER ")) from None
            raise StoreUnavailable(f"contact-center state store (Redis) refused the write: {exc}") from None
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"contact-center state store (Redis) unavailable: {exc}") from None

    def stats(self) -> dict[str, int]:
        """For /metrics: writes and commits so far (writes / commits is the group-commit factor), and what
        waits for the store now."""
        return {"writes": self.writes, "commits": self.commits, **self._budget.pending()}

    def reap(self) -> None:
        """Nothing is owed: writes are settled by the tasks that await Redis, on the loop."""

    def _check_open(self) -> None:
        if self._closing:
            raise StoreUnavailable("contact-center state store is closed")

    @contextlib.asynccontextmanager
    async def _unavailable(self) -> AsyncIterator[None]:
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"contact-center state store (Redis) unavailable: {exc}") from None

    async def close(self) -> None:
        """Finish the writes queued so far, then close the client."""
        if not self._closing:
            self._closing = True
            self._wake.set()
        if self._writer is not None:
            await asyncio.shield(self._writer)
        await self._redis.aclose()


def _glob_escape(text: str) -> str:
    """`text` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
