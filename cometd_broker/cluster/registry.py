"""A process's entries in the cluster's Redis registry: where the other processes relay requests to it.

Two kinds of entry use it: the session router's `{namespace}:route:{tag}` = the "host:port" of the
process's private port (routing.py), and the contact center's leader lease `{namespace}:cc:leader` =
the leader's term and address (channels). Both follow one style:
- the key is in the deployment's namespace (`redis_key`, redis_names.py);
- it lives `ttl` seconds unless its holder refreshes it, every `refresh_every` (ttl/3), so a process
  that dies without a word is named there only until the TTL ends;
- its holder removes it when it stops, only while it holds the holder's own value (compare-and-delete):
  an entry a successor wrote meanwhile is never removed.
`put` (re)writes an entry whatever it held (a key only this process writes: it reappears after a Redis
restart); `claim` writes it only if it is free and `renew` extends it only while it holds this value
(a key processes compete for). Every call returns or raises redis.RedisError / OSError, never hangs
(the client's socket timeouts).
"""

from __future__ import annotations

import redis.asyncio as aioredis

# Compare-and-extend / compare-and-delete: only the holder's own value may renew or remove the entry.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RegistryEntry:
    """One key of the registry, with its TTL."""

    def __init__(self, client: aioredis.Redis, key: str, ttl: float) -> None:
        self.key = key
        self.ttl_ms = max(1, int(ttl * 1000))
        self.refresh_every = ttl / 3  # two refreshes may fail before the entry runs out
        self._redis = client
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def put(self, value: str) -> None:
        await self._redis.set(self.key, value, px=self.ttl_ms)

    async def claim(self, value: str) -> str | None:
        """None if the entry is now ours, else the holder's value (SET NX GET: one atomic step)."""
        holder = await self._redis.set(self.key, value, nx=True, px=self.ttl_ms, get=True)
        return None if holder is None else holder.decode()

    async def renew(self, value: str) -> bool:
        return bool(await self._renew(keys=[self.key], args=[value, self.ttl_ms]))

    async def release(self, value: str) -> None:
        await self._release(keys=[self.key], args=[value])

    async def read(self) -> str | None:
        value = await self._redis.get(self.key)
        return None if value is None else value.decode()
