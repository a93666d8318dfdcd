"""Contact-center state in Redis: the `DocumentStore` of a cluster's leader.

Layout (every key starts with `prefix`): `{prefix}:state:{kind}` is a HASH of key -> JSON document.

`apply()` is one Lua script, so a change is written whole or not at all, exactly like the SQLite
transaction of `StateStore`. The script is *fenced*: it first checks that the leader lease still holds
this process's value, so a leader that lost its lease (paused, partitioned, slow to notice) can never
overwrite what its successor wrote. A write that fails raises `StoreUnavailable`; the engine then keeps
the change pending and the caller gets a 503 envelope.

The client is redis-py's synchronous one, with short timeouts and no retries: the engine writes inside
its locked run, between applying a change and publishing it (as it does with SQLite), and a loopback
round trip costs about what a SQLite commit does. A Redis that stops answering blocks the process for at
most `timeout` seconds per call, and the leader steps down when it cannot renew its lease.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .store import Change, Document, StoreUnavailable

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


def connect(url: str, timeout: float) -> redis.Redis:
    """A synchronous client that fails fast: one attempt, bounded connect and read times."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False)


class RedisStateStore:
    """Documents by (kind, key) in Redis hashes; writes only while `lease_value` is in `lease_key`."""

    def __init__(self, url: str, *, prefix: str, lease_key: str, lease_value: str, timeout: float = 1.0) -> None:
        self.prefix = prefix
        self._lease_key = lease_key
        self._lease_value = lease_value
        self._redis = connect(url, timeout)
        self._apply = self._redis.register_script(_APPLY)

    def _key(self, kind: str) -> str:
        return f"{self.prefix}:state:{kind}"

    def load(self, kind: str) -> dict[str, Document]:
        try:
            raw = self._redis.hgetall(self._key(kind))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"contact-center state store (Redis) unavailable: {exc}") from None
        return {key.decode(): orjson.loads(body) for key, body in raw.items()}

    def apply(self, changes: Iterable[Change]) -> None:
        keys, args = [self._lease_key], [self._lease_value]
        for kind, key, doc in changes:
            keys.append(self._key(kind))
            args += [key, b"" if doc is None else orjson.dumps(doc)]
        if len(keys) == 1:
            return
        try:
            self._apply(keys=keys, args=args)
        except redis.ResponseError as exc:
            if str(exc).startswith("NOTLEADER"):
                raise NotLeader(str(exc).removeprefix("NOTLEADER ")) from None
            raise StoreUnavailable(f"contact-center state store (Redis) refused the write: {exc}") from None
        except redis.RedisError as exc:
            raise StoreUnavailable(f"contact-center state store (Redis) unavailable: {exc}") from None

    def put(self, kind: str, key: str, document: Document) -> None:
        self.apply([(kind, key, document)])

    def delete(self, kind: str, key: str) -> None:
        self.apply([(kind, key, None)])

    def close(self) -> None:
        self._redis.close()
