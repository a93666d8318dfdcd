"""Logging setup: text or JSON lines, with the session's clientId and user on every line about one.

A line is "about a session" when the code that logs it either passes the ids explicitly
(`log.info(..., extra=session_fields(client_id, user))`, for code that handles many sessions, such
as the broker's fan-out) or runs inside `bound(...)`, which sets them for everything logged in the
current asyncio task (a REST request, a service handler, a listener). Explicit fields win.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import Context, ContextVar, copy_context
from typing import Any, TextIO

import orjson

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# The record attributes that identify what a line is about, in output order. `clientId` is the
# Bayeux session, `user` the authenticated principal (also set for REST calls, which have no clientId).
CONTEXT_FIELDS = ("clientId", "user")

_client_id: ContextVar[str | None] = ContextVar("log_client_id", default=None)
_user: ContextVar[str | None] = ContextVar("log_user", default=None)


class LineBudget:
    """At most `burst` lines per `period` seconds (a token bucket), for lines any client can cause:
    `take()` says whether to log one now, and `held_back()` how many were skipped since the last."""

    def __init__(self, burst: int = 10, period: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.period, self.clock = burst, period, clock
        self.tokens = float(burst)
        self.stamp = clock()
        self.skipped = 0

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.burst / self.period)
        self.stamp = now
        if self.tokens < 1:
            self.skipped += 1
            return False
        self.tokens -= 1
        return True

    def held_back(self) -> str:
        """" (N more since the last line)" once, after lines were skipped; "" otherwise."""
        more = f" ({self.skipped} more since the last line)" if self.skipped else ""
        self.skipped = 0
        return more


def session_fields(client_id: str | None = None, user: str | None = None) -> dict[str, str | None]:
    """`extra=` for a log call about one session, made outside `bound` (e.g. during a fan-out)."""
    return {"clientId": client_id, "user": user}


@contextmanager
def bound(client_id: str | None = None, user: str | None = None) -> Iterator[None]:
    """Every line logged inside the block (in this task) carries these ids."""
    client_token = _client_id.set(client_id)
    user_token = _user.set(user)
    try:
        yield
    finally:
        _user.reset(user_token)
        _client_id.reset(client_token)


def bind_user(user: str | None) -> None:
    """Tag the rest of the current task with `user` (an HTTP request: aiohttp runs each in its own
    task, so the tag ends with the request and also reaches outer middlewares that log its errors)."""
    _user.set(user)


def unbound_context() -> Context:
    """The current context without the ids, for a background task started while handling one
    session's request (`create_task(..., context=unbound_context())`): the task outlives the
    request and acts for others, so it must not log under the requester's name."""
    context = copy_context()
    context.run(_client_id.set, None)
    context.run(_user.set, None)
    return context


class ContextFilter(logging.Filter):
    """Give every record `clientId` and `user` attributes: explicit extras first, then the task's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "clientId", None) is None:
            record.clientId = _client_id.get()
        if getattr(record, "user", None) is None:
            record.user = _user.get()
        return True


def _context(record: logging.LogRecord) -> list[tuple[str, str]]:
    return [(name, value) for name in CONTEXT_FIELDS if (value := getattr(record, name, None)) is not None]


class TextFormatter(logging.Formatter):
    """`2024-06-10 08:00:00,123 INFO cometd_broker: message clientId=... user=...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context(record)
        if not context:
            return line
        head, sep, tail = line.partition("\n")  # ids on the message line, before any traceback
        return head + "".join(f" {name}={value}" for name, value in context) + sep + tail


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601, ms), level, logger, msg, the context ids
    when known, and `exc` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_context(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def _iso_utc(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


def configure(level: str = "INFO", log_format: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records to `stream` (stderr) in `log_format`; replaces earlier handlers."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())  # on the handler: it sees records of every logger
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
