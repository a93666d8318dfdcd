"""Resume from an event id: a Salesforce-compatible replay extension, server side.

Every event published through the broker is appended to the event log first and gets an id in its
stream (a shared channel, or one user's per-user channel). Delivered events carry it as
`ext.replayId`. A client that handshakes with `ext.replay` (true, or a map) and subscribes with
`ext.replay: {"<channel>": <id>}` (or gave that map at handshake) first receives the retained events
after that id, in order, then live ones: -1 means new events only, -2 everything retained.

Ids are the event log's, and a log can start over (a memory log after a restart, a deleted SQLite
file, a flushed Redis) and issue 1, 2, 3 again. So the log has an epoch (see eventlog/base.py),
which the broker tells clients (the handshake reply's `ext.replayEpoch`, the subscribe reply's
`ext.replay.epoch`) and a client sends back as `ext.replayEpoch` with its ids. An id is resumed
from only if the current log issued it: same epoch (when the client sent one) and not above the
stream's newest id. Otherwise the reply says `recovered: false`, as when retention trimmed events
after the id, and the subscription gets what the log retains, from its oldest event.

While a subscription catches up, live events of its stream are not queued for it (they are in the
log and the catch-up reads them); once the catch-up has read up to the newest id the broker knows,
the subscription goes live, ignoring live events it has already read. So nothing is missing and
nothing is repeated, and catch-up is paged so a deep history never floods a session's queue.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..bayeux import REPLAY_ALL_RETAINED, REPLAY_NEW_ONLY

NEW_ONLY = REPLAY_NEW_ONLY
ALL_RETAINED = REPLAY_ALL_RETAINED


class ReplayMark:
    """Where one subscription of a session stands in its stream."""

    __slots__ = ("catching_up", "last_id")

    def __init__(self, last_id: int) -> None:
        self.catching_up = True
        self.last_id = last_id  # the newest id this session has been given (or skipped past)

    def admits(self, event_id: int) -> bool:
        """Whether a live event should be queued for the session."""
        return not self.catching_up and event_id > self.last_id


def requested(message: dict[str, Any]) -> bool:
    """Whether a handshake asks for replay (`ext.replay` true or a channel map)."""
    ext = message.get("ext")
    if not isinstance(ext, dict):
        return False
    value = ext.get("replay")
    return value is True or isinstance(value, dict)


def replay_map(message: dict[str, Any]) -> dict[str, int]:
    """The `ext.replay` channel -> id map of a message (valid entries only)."""
    ext = message.get("ext")
    value = ext.get("replay") if isinstance(ext, dict) else None
    if not isinstance(value, dict):
        return {}
    return {channel: int(ident) for channel, ident in value.items()
            if isinstance(channel, str) and isinstance(ident, int) and not isinstance(ident, bool)
            and ident >= ALL_RETAINED}


def epoch_of(message: dict[str, Any]) -> str | None:
    """The epoch a message says its replay ids belong to (`ext.replayEpoch`), or None."""
    ext = message.get("ext")
    value = ext.get("replayEpoch") if isinstance(ext, dict) else None
    return value if isinstance(value, str) else None


def with_replay_id(payload: bytes, event_id: int, has_ext: bool) -> bytes:
    """The delivered message with `ext.replayId`; spliced without re-serializing when it has no ext."""
    if not has_ext and payload.endswith(b"}"):
        return payload[:-1] + b',"ext":{"replayId":' + str(event_id).encode() + b"}}"
    message = orjson.loads(payload)
    ext = message.get("ext")
    message["ext"] = {**(ext if isinstance(ext, dict) else {}), "replayId": event_id}
    return orjson.dumps(message)
