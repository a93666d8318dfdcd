"""Which recorded events a debugging command or admin request is about, and how they are printed.

One `EventFilter` serves `events dump/tail/replay` and the admin API, so a filter means the same
thing on the command line and over HTTP. Streams are either a shared channel ("/chat/room") or one
user's per-user channel ("@alice/v2/me/chats", see `broker.user_stream`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from ..channel import Pattern, channel_error
from ..eventlog import Event


class FilterError(ValueError):
    """A filter value the user gave is malformed; the message says which and why."""


_RELATIVE = re.compile(r"-(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, *, name: str = "time", now: float | None = None) -> float:
    """Epoch seconds from `1718000000.5`, ISO 8601 (`2024-06-10T08:00:00Z`; no zone means UTC,
    since the log's clock is UTC epoch) or a relative `-10m` / `-2h` / `-30s` / `-1d`."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        return (time.time() if now is None else now) - float(relative[1]) * _UNITS[relative[2]]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(f"bad {name} {text!r}: expected epoch seconds, ISO 8601 "
                          "(2024-06-10T08:00:00Z) or relative (-10m, -2h)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def split_stream(stream: str) -> tuple[str | None, str]:
    """(user, channel) of a stream: ("alice", "/v2/me/chats") or (None, "/chat/room")."""
    if stream.startswith("@"):
        user, slash, rest = stream[1:].partition("/")
        return user, slash + rest
    return None, stream


@dataclass(frozen=True)
class EventFilter:
    """Streams, a time range, an id floor and an interaction id; every part is optional."""

    streams: tuple[str, ...] = ()
    user: str | None = None
    channel: str | None = None  # a channel or a pattern (/v2/me/**)
    interaction: str | None = None
    since: float | None = None
    until: float | None = None
    after_id: int | None = None
    _pattern: Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.channel is not None:
            problem = channel_error(self.channel)
            if problem:
                raise FilterError(f"bad channel {self.channel!r}: {problem}")
            object.__setattr__(self, "_pattern", Pattern.parse(self.channel))
        if self.user is not None and (not self.user or "/" in self.user):
            raise FilterError(f"bad user {self.user!r}: a user id is non-empty and has no '/'")
        if self.interaction is not None and not self.interaction:
            raise FilterError("bad interaction id: empty")
        if self.after_id is not None and self.after_id < 0:
            raise FilterError(f"bad after-id {self.after_id}: must be >= 0")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise FilterError("empty time range: until must be after since")

    @property
    def exact_streams(self) -> tuple[str, ...] | None:
        """The streams to read when they are known without listing the log (None: list it)."""
        if self.streams:
            return self.streams
        if self.user is not None and self.channel is not None and self._pattern is not None \
                and self._pattern.kind == "exact":
            return (f"@{self.user}{self.channel}",)
        return None

    def wants_stream(self, stream: str) -> bool:
        if self.streams and stream not in self.streams:
            return False
        user, channel = split_stream(stream)
        if self.user is not None and user != self.user:
            return False
        if self._pattern is not None:
            problem = channel_error(channel)
            if problem or not self._pattern.matches(channel):
                return False
        return True

    def select_streams(self, known: Iterable[str]) -> list[str] | None:
        """The streams to read, from every stream the log knows; None means all of them."""
        if self.exact_streams is not None:
            return list(self.exact_streams)
        if self.user is None and self.channel is None:
            return None
        return [stream for stream in known if self.wants_stream(stream)]

    def wants(self, event: Event, message: Any) -> bool:
        """Everything a store query could not check: stream predicates, the time range, the interaction."""
        if not self.wants_stream(event.stream):
            return False
        if self.since is not None and event.timestamp < self.since:
            return False
        if self.until is not None and event.timestamp >= self.until:
            return False
        if self.after_id is not None and event.id <= self.after_id:
            return False
        if self.interaction is not None:
            data = message.get("data") if isinstance(message, dict) else None
            return mentions(data, self.interaction)
        return True


_MAX_DEPTH = 32  # a pathological payload must not exhaust the stack of a debugging tool


def mentions(value: Any, ident: str, depth: int = 0) -> bool:
    """Whether `ident` appears anywhere in `value` as a whole string or a URI's last segment
    (data.interaction.id, data.smssession.id, data.chatUri = ".../chats/<id>")."""
    if depth > _MAX_DEPTH:
        return False
    if isinstance(value, str):
        return value == ident or value.endswith("/" + ident)
    if isinstance(value, dict):
        return any(mentions(v, ident, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(mentions(v, ident, depth + 1) for v in value)
    return False


def decode(event: Event) -> Any:
    """The stored Bayeux message, or the raw text when a payload is not JSON (never fail a dump)."""
    try:
        return orjson.loads(event.payload)
    except orjson.JSONDecodeError:
        return {"undecodable": event.payload.decode("utf-8", "replace")}


def event_record(event: Event, message: Any) -> dict[str, Any]:
    """The JSON-lines shape shared by `events dump`, `events tail` and the admin API."""
    return {"stream": event.stream, "id": event.id, "timestamp": event.timestamp, "time": iso_time(event.timestamp),
            "message": message}


def iso_time(timestamp: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds: 2026-12-07T03:12:00.123Z."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def record_line(event: Event, message: Any) -> bytes:
    return orjson.dumps(event_record(event, message)) + b"\n"


def from_params(streams: Sequence[str], user: str | None, channel: str | None, interaction: str | None,
                since: str | None, until: str | None, after_id: int | None) -> EventFilter:
    """Build a filter from text as typed (CLI flags, query parameters)."""
    return EventFilter(
        streams=tuple(streams), user=user, channel=channel, interaction=interaction,
        since=parse_time(since, name="since") if since is not None else None,
        until=parse_time(until, name="until") if until is not None else None,
        after_id=after_id)
