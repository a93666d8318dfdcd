"""The durable record of published events: one small interface, several stores.

Like Faye's engines, the broker talks only to `EventLog`; `open_event_log`
picks the store from a URL so the choice is configuration, not code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .base import (
    KEEP_ALL,
    UNKNOWN_BOUNDS,
    Bounds,
    Event,
    EventLog,
    EventLogClosed,
    EventLogUnavailable,
    Retention,
    is_redis_url,
)
from .memory import MemoryEventLog
from .retention import RetentionTask
from .sqlite import SqliteEventLog

__all__ = [
    "KEEP_ALL",
    "UNKNOWN_BOUNDS",
    "Bounds",
    "Event",
    "EventLog",
    "EventLogClosed",
    "EventLogUnavailable",
    "MemoryEventLog",
    "Retention",
    "RetentionTask",
    "SqliteEventLog",
    "is_redis_url",
    "open_event_log",
]


def open_event_log(url_or_path: str | os.PathLike[str], retention: Retention = KEEP_ALL, *,
                   sqlite_options: Mapping[str, Any] | None = None, **options: Any) -> EventLog:
    """Open the store named by `url_or_path`.

    - "memory:" (or "memory://"): MemoryEventLog, lost on restart.
    - "sqlite:///abs/path.db", "sqlite:relative.db" or a plain file path: SqliteEventLog.
    - "redis://host:port/db" (or rediss://, unix://): RedisEventLog in Redis Streams, shared by a
      cluster; needs the `redis` extra (pip install 'cometd-broker[redis]').
    `options` go to the store's constructor, and `sqlite_options` too when the store is SQLite (the
    broker's WAL settings, which the other stores do not have).
    """
    target = os.fspath(url_or_path)
    if target in ("memory:", "memory://"):
        return MemoryEventLog(retention, **options)
    scheme, sep, rest = target.partition(":")
    if sep and scheme == "sqlite":
        # sqlite:///abs -> /abs, sqlite://rel -> rel, sqlite:rel -> rel (the SQLAlchemy-like forms).
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise ValueError(f"no file path in event log URL {target!r}")
        return SqliteEventLog(path, retention, **options, **(sqlite_options or {}))
    if is_redis_url(target):
        try:
            from .redis import RedisEventLog  # optional dependency: imported only when asked for
        except ImportError as exc:
            raise ValueError(f"event log {target!r} needs the redis package: pip install 'cometd-broker[redis]' "
                             f"({exc})") from None
        return RedisEventLog(target, retention, **options)
    if sep and len(scheme) > 1 and "/" not in scheme and rest.startswith("//"):
        # Any other URL (postgres://, ...): not a store we have. A bare path never matches
        # (a Windows drive letter is one character), so "C:\\x.db" still opens SQLite.
        raise ValueError(f"unsupported event log store {scheme!r} in {target!r}; "
                         "use 'memory:', a SQLite path or redis://")
    return SqliteEventLog(target, retention, **options, **(sqlite_options or {}))
