"""Fan-out between broker processes, behind one small interface (Faye's engine split).

- LocalEngine: one process; the event log assigns ids and the broker dispatches at once.
- RedisEngine: a cluster; one Lua script appends to the Redis Streams log and publishes on a
  pub/sub channel, and every process dispatches what it receives, in that order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..eventlog import EventLog, is_redis_url
from .base import Dispatch, Engine, EngineUnavailable, Outgoing, Published
from .local import LocalEngine

__all__ = ["Dispatch", "Engine", "EngineUnavailable", "LocalEngine", "Outgoing", "Published", "open_engine"]


def open_engine(redis_url: str, event_log: EventLog, dispatch: Dispatch, *,
                on_lost: Callable[[], None] | None = None,
                on_restored: Callable[[], Awaitable[None]] | None = None) -> Engine:
    """The engine for a broker: local without `redis_url`, else Redis (whose log `event_log` must be).

    `on_lost` is called (synchronously) when fan-out messages may start being missed, `on_restored`
    (awaited) once the engine receives them again, before it dispatches any newer one."""
    if not redis_url:
        return LocalEngine(event_log, dispatch)
    if not is_redis_url(redis_url):
        raise ValueError(f"redis must be a redis://, rediss:// or unix:// URL, not {redis_url!r}")
    from ..eventlog.redis import RedisEventLog  # the redis package is needed only for a cluster

    try:
        from .redis import RedisEngine
    except ImportError as exc:
        raise ValueError(f"the Redis engine needs redis-py and hiredis >= 3.0: pip install 'cometd-broker[redis]' "
                         f"({exc})") from None

    if not isinstance(event_log, RedisEventLog):
        raise ValueError("the Redis engine needs the event log in the same Redis (event_log = the redis URL)")
    return RedisEngine(event_log, dispatch, on_lost=on_lost, on_restored=on_restored)
