"""HTTP sessions (JSESSIONID -> user, CSRF token) in Redis, shared by every process of a cluster.

A desktop logs in over REST (served by the leader) and then handshakes CometD on whichever process the
kernel hands its connection to, which authenticates the handshake with the same cookie: so the session
must be readable everywhere, and survive the leader's death. Layout (keys start with `prefix`):

    {prefix}:httpsession:{id}        STRING, the session as JSON; expires after `idle_timeout` without use
    {prefix}:httpsessions:{user}     ZSET of the user's session ids scored by last use (ms), for the
                                     per-user limit and `end_user`

Each operation is one Lua script (one round trip, atomic): `find` refreshes the idle expiry as it reads.
Redis errors become `StoreUnavailable` (a 503 envelope on REST, a denied handshake on CometD).
"""

from __future__ import annotations

import secrets
import time

import orjson
import redis
import redis.asyncio as aioredis

from .auth import HttpSession, User
from .redis_store import StoreUnavailable

# KEYS[1] the session; ARGV[1] idle ms, ARGV[2] now ms, ARGV[3] the session id, ARGV[4] prefix of user keys.
# The user's zset is named from the session's own JSON (one round trip; a single Redis, not Redis Cluster).
_FIND = """
local body = redis.call('GET', KEYS[1])
if not body then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local users = ARGV[4] .. cjson.decode(body)['userId']
redis.call('ZADD', users, 'XX', ARGV[2], ARGV[3])
redis.call('PEXPIRE', users, ARGV[1])
return body
"""

# KEYS[1] new session, KEYS[2] the user's zset; ARGV[1] idle ms, ARGV[2] now ms, ARGV[3] body,
# ARGV[4] the session id, ARGV[5] max sessions per user, ARGV[6] prefix of session keys
_CREATE = """
local idle, now, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - idle)
local extra = redis.call('ZCARD', KEYS[2]) - limit + 1
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
    redis.call('DEL', ARGV[6] .. old)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', idle)
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('PEXPIRE', KEYS[2], idle)
return 1
"""

class RedisHttpSessions:
    """A `channels.auth.SessionStore` in Redis: the same sessions on every process."""

    COOKIE = "JSESSIONID"

    def __init__(self, url: str, *, prefix: str, idle_timeout: float = 1800.0, max_per_user: int = 100,
                 timeout: float = 1.0) -> None:
        if idle_timeout <= 0 or max_per_user < 1:
            raise ValueError("idle_timeout must be positive and max_per_user at least 1")
        self.idle_timeout = idle_timeout
        self.max_per_user = max_per_user
        self.prefix = prefix
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._find = self._redis.register_script(_FIND)
        self._create = self._redis.register_script(_CREATE)

    def _session_key(self, session_id: str) -> str:
        return f"{self.prefix}:httpsession:{session_id}"

    def _user_key(self, user_id: str) -> str:
        return f"{self.prefix}:httpsessions:{user_id}"

    @property
    def _idle_ms(self) -> int:
        return max(1, int(self.idle_timeout * 1000))

    async def create_session(self, user: User) -> HttpSession:
        now = time.time()
        session = HttpSession(secrets.token_urlsafe(32), user.user_id, secrets.token_urlsafe(32), now, now,
                              user.roles)
        body = orjson.dumps({"userId": session.user_id, "csrf": session.csrf_token, "created": now,
                             "roles": sorted(session.roles)})
        keys = [self._session_key(session.session_id), self._user_key(user.user_id)]
        args = [self._idle_ms, int(now * 1000), body, session.session_id, self.max_per_user,
                self._session_key("")]
        await self._call(self._create, keys, args)
        return session

    async def find_session(self, session_id: str) -> HttpSession | None:
        key = self._session_key(session_id)
        now = time.time()
        body = await self._call(self._find, [key], [self._idle_ms, int(now * 1000), session_id,
                                                     self._user_key("")])
        if body is None:
            return None
        doc = orjson.loads(body)
        return HttpSession(session_id, doc["userId"], doc["csrf"], doc["created"], now, frozenset(doc["roles"]))

    async def end_session(self, session_id: str) -> None:
        key = self._session_key(session_id)
        try:
            body = await self._redis.getdel(key)
            if body is not None:
                await self._redis.zrem(self._user_key(orjson.loads(body)["userId"]), session_id)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"session store (Redis) unavailable: {exc}") from None

    async def end_user(self, user_id: str) -> None:
        """End every session of the user, on every process."""
        try:
            ids = await self._redis.zrange(self._user_key(user_id), 0, -1)
            keys = [self._session_key(i.decode()) for i in ids] + [self._user_key(user_id)]
            await self._redis.delete(*keys)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"session store (Redis) unavailable: {exc}") from None

    async def _call(self, script: object, keys: list[str], args: list[object]) -> bytes | None:
        try:
            return await script(keys=keys, args=args)  # type: ignore[operator]
        except redis.RedisError as exc:
            raise StoreUnavailable(f"session store (Redis) unavailable: {exc}") from None

    async def close(self) -> None:
        await self._redis.aclose()
