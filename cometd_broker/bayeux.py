"""Bayeux 1.0 protocol rules as pure functions: no I/O, no asyncio, no aiohttp.

Decoding turns a parsed JSON body into a list of message dicts or a `BodyError`;
validation checks each message against the spec's field table and returns an
error string (never raises); the reply builders produce the exact reply fields
the spec requires. Error strings follow the spec grammar `code:args:message`
and reuse the CometD reference server's tokens so clients that log them see
familiar text.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

from .channel import channel_error, is_meta, is_wildcard

VERSION = "1.0"
MINIMUM_VERSION = "1.0"

HANDSHAKE = "/meta/handshake"
CONNECT = "/meta/connect"
SUBSCRIBE = "/meta/subscribe"
UNSUBSCRIBE = "/meta/unsubscribe"
DISCONNECT = "/meta/disconnect"
META_CHANNELS = frozenset({HANDSHAKE, CONNECT, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT})

# The channel used for replies to bodies that could not be read at all, where
# no request channel is known (CometD's clients treat it as a failure).
UNSUCCESSFUL = "/meta/unsuccessful"

# The replay extension's special event ids (extensions/replay.py): new events only, everything retained.
REPLAY_NEW_ONLY = -1
REPLAY_ALL_RETAINED = -2

RETRY = "retry"
HANDSHAKE_ADVICE = "handshake"
NONE = "none"

Message = dict[str, Any]


class BodyError(ValueError):
    """A request body that is not a Bayeux message list; `error` is the Bayeux error string."""

    def __init__(self, error: str, http_status: int = 400) -> None:
        super().__init__(error)
        self.error = error
        self.http_status = http_status


def error(code: int, message: str, *args: str) -> str:
    """Format a Bayeux error string: `code:arg1,arg2:message`.

    `%`, `:` and `,` inside an argument are percent-encoded so that splitting
    on the grammar's separators always finds the code, the args and the message.
    """
    escaped = (arg.replace("%", "%25").replace(":", "%3A").replace(",", "%2C") for arg in args)
    return f"{code}:{','.join(escaped)}:{message}"


# Error strings shared with the CometD reference server (clients key on advice,
# humans on these tokens).
SESSION_UNKNOWN = error(402, "session_unknown")
HANDSHAKE_DENIED = error(403, "handshake_denied")
CHANNEL_MISSING = error(400, "channel_missing")


def new_client_id() -> str:
    """A clientId with 160 random bits, alphanumeric as the spec requires."""
    return secrets.token_hex(20)


def decode_body(parsed: Any, max_batch: int | None = None) -> list[Message]:
    """Turn a parsed JSON body (array or single object) into a list of messages.

    An empty array is valid and yields no messages (Faye clients send `[]` as a
    keep-alive). Elements that are not objects make the whole body invalid,
    because a reply cannot be correlated with them. A body of more than
    `max_batch` messages is refused as a whole, before any of it is looked at:
    every message earns a reply, so a body of tiny messages would otherwise
    earn a reply many times its size.
    """
    if isinstance(parsed, dict):
        return [parsed]
    if not isinstance(parsed, list):
        raise BodyError(
            error(400, f"body must be a JSON array of messages or one message object, got {_json_type(parsed)}")
        )
    check_batch_size(len(parsed), max_batch)
    for index, item in enumerate(parsed):
        if not isinstance(item, dict):
            raise BodyError(
                error(400, f"message {index} must be a JSON object, got {_json_type(item)}")
            )
    return parsed


def check_batch_size(count: int, max_batch: int | None) -> None:
    """Raise the BodyError of a request carrying more than `max_batch` messages (None: no limit)."""
    if max_batch is not None and count > max_batch:
        raise BodyError(error(400, f"too_many_messages (this request carries {count} messages; "
                                   f"max_batch is {max_batch}: send them in smaller batches)"))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _wrong_type(name: str, expected: str, value: Any) -> str:
    """The error of a field present with the wrong JSON type (null included: present is not absent)."""
    return error(400, f"{name} must be {expected}, got {_json_type(value)}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_message(message: Message) -> str | None:
    """Check a request: the fields the spec requires, and the JSON type of every field the broker
    reads; return an error string or None.

    A required field that is absent keeps the CometD reference server's token (`channel_missing`,
    `clientId_missing` ...); a field present with the wrong JSON type, null included, gets
    `400::<field> must be <type>, got <type>`, so the client's log says which field is wrong.
    Once this returns None, every field the broker reads has the type it expects.
    """
    if "channel" not in message:
        return CHANNEL_MISSING
    channel = message["channel"]
    if not isinstance(channel, str):
        return _wrong_type("channel", "a string", channel)
    problem = _common_fields_error(message)
    if problem is not None:
        return problem
    if is_meta(channel):
        return _validate_meta(channel, message)
    if "clientId" in message and not isinstance(message["clientId"], str):
        return _wrong_type("clientId", "a string", message["clientId"])
    bad = channel_error(channel)
    if bad is not None:
        return error(405, f"channel_invalid ({bad})", channel)
    if is_wildcard(channel):
        return error(405, "channel_invalid (cannot publish to a wildcard channel)", channel)
    if "data" not in message:
        return error(400, "data_missing (a publish must carry data)", channel)
    return None


def _common_fields_error(message: Message) -> str | None:
    """`id`, `ext` and `advice`, which any message may carry."""
    if "id" in message:
        message_id = message["id"]
        if not isinstance(message_id, str) and not _is_integer(message_id):
            # The CometD reference server's token, with the reason.
            return error(400, f"message_id_invalid (id must be a string or an integer, got {_json_type(message_id)})")
    if "ext" in message and not isinstance(message["ext"], dict):
        return _wrong_type("ext", "an object", message["ext"])
    if "advice" in message:
        advice_ = message["advice"]
        if not isinstance(advice_, dict):
            return _wrong_type("advice", "an object", advice_)
        if "timeout" in advice_:
            timeout = advice_["timeout"]
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
                return _wrong_type("advice.timeout", "a number of milliseconds", timeout)
            if timeout < 0:
                return error(400, "advice.timeout must be >= 0 milliseconds")
    return None


def _validate_meta(channel: str, message: Message) -> str | None:
    if channel not in META_CHANNELS:
        return error(405, "channel_invalid (unknown meta channel)", channel)
    ext = message.get("ext") or {}
    if channel == HANDSHAKE:
        return _validate_handshake(message, ext)
    if "clientId" not in message or message["clientId"] == "":
        return error(401, "clientId_missing")
    if not isinstance(message["clientId"], str):
        return _wrong_type("clientId", "a string", message["clientId"])
    if channel == CONNECT:
        if "connectionType" not in message:
            return error(400, "connectionType_missing")
        if not isinstance(message["connectionType"], str):
            return _wrong_type("connectionType", "a string", message["connectionType"])
        if "ack" in ext and not _is_integer(ext["ack"]):
            # CometD's AckExtension sends the number of the last batch it received.
            return _wrong_type("ext.ack", "an integer (the last batch received) on a /meta/connect", ext["ack"])
    elif channel in (SUBSCRIBE, UNSUBSCRIBE):
        problem = _subscription_field_error(message)
        if problem is not None:
            return problem
        if channel == SUBSCRIBE:
            if "replay" in ext:
                problem = _replay_map_error(ext["replay"], "an object of channel: event id")
                if problem is not None:
                    return problem
            return _replay_epoch_error(ext)
    return None


def _validate_handshake(message: Message, ext: dict[str, Any]) -> str | None:
    # The handshake's clientId is not read (a new one is issued), so it is not checked.
    if "version" not in message:
        return error(400, "version_missing")
    for name in ("version", "minimumVersion"):
        if name in message and not isinstance(message[name], str):
            return _wrong_type(name, "a string", message[name])
    types = message.get("supportedConnectionTypes")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        return error(400, "supportedConnectionTypes must be a non-empty array of strings")
    if "ack" in ext and not isinstance(ext["ack"], bool):
        return _wrong_type("ext.ack", "true or false on a /meta/handshake", ext["ack"])
    if "replay" in ext and not isinstance(ext["replay"], bool):
        problem = _replay_map_error(ext["replay"], "true, false or an object of channel: event id")
        if problem is not None:
            return problem
    return _replay_epoch_error(ext)


def _replay_epoch_error(ext: dict[str, Any]) -> str | None:
    """Why an `ext.replayEpoch` (the event log's epoch the client's replay ids came from) is malformed."""
    if "replayEpoch" in ext and not isinstance(ext["replayEpoch"], str):
        return _wrong_type("ext.replayEpoch", "a string (the replay epoch the ids of ext.replay belong to)",
                           ext["replayEpoch"])
    return None


def _replay_map_error(value: Any, expected: str) -> str | None:
    """Why an `ext.replay` channel map is malformed (see extensions/replay.py), or None."""
    if not isinstance(value, dict):
        return _wrong_type("ext.replay", expected, value)
    for channel, event_id in value.items():
        if not _is_integer(event_id) or event_id < REPLAY_ALL_RETAINED:
            got = str(event_id) if _is_integer(event_id) else _json_type(event_id)
            return error(400, f"ext.replay of a channel must be an event id, {REPLAY_NEW_ONLY} (new events only) "
                              f"or {REPLAY_ALL_RETAINED} (all retained), got {got}", channel)
    return None


def _subscription_field_error(message: Message) -> str | None:
    """`subscription`: absent or an empty array is CometD's `subscription_missing`."""
    if "subscription" not in message or message["subscription"] == []:
        return error(403, "subscription_missing")
    subscription = message["subscription"]
    if subscriptions_of(message) is not None:
        return None
    expected = "a channel name or an array of channel names"
    if isinstance(subscription, list):
        odd = next(s for s in subscription if not isinstance(s, str))
        return error(400, f"subscription must be {expected}, got an array holding {_json_type(odd)}")
    return _wrong_type("subscription", expected, subscription)


def subscriptions_of(message: Message) -> list[str] | None:
    """The subscription field as a list of names, or None when missing or malformed."""
    subscription = message.get("subscription")
    if isinstance(subscription, str):
        return [subscription]
    if isinstance(subscription, list) and subscription and all(isinstance(s, str) for s in subscription):
        return subscription
    return None


def subscription_error(name: str) -> str | None:
    """Why a client may not subscribe to `name`, or None."""
    bad = channel_error(name)
    if bad is not None:
        return error(405, f"channel_invalid ({bad})", name)
    if is_meta(name):
        return error(403, "subscription_invalid (meta channels cannot be subscribed)", name)
    return None


def common_transports(requested: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """Transports offered by both sides, in the server's order of preference."""
    wanted = set(requested)
    return [t for t in allowed if t in wanted]


def advice(reconnect: str, interval: int, timeout: int | None = None, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"reconnect": reconnect, "interval": interval}
    if timeout is not None:
        result["timeout"] = timeout
    result.update(extra)
    return result


def reply_to(message: Message, successful: bool = True) -> Message:
    """Start a reply with the request's channel, `successful`, and its `id` echoed."""
    reply: Message = {"channel": message.get("channel") if isinstance(message.get("channel"), str) else UNSUCCESSFUL,
                      "successful": successful}
    message_id = message.get("id")
    if message_id is not None:
        reply["id"] = message_id
    return reply


def error_reply(message: Message, error_string: str, advice_: dict[str, Any] | None = None) -> Message:
    reply = reply_to(message, successful=False)
    reply["error"] = error_string
    client_id = message.get("clientId")
    if isinstance(client_id, str):
        reply["clientId"] = client_id
    if message.get("channel") in (SUBSCRIBE, UNSUBSCRIBE) and "subscription" in message:
        reply["subscription"] = message["subscription"]
    if advice_ is not None:
        reply["advice"] = advice_
    return reply


def unknown_session_reply(message: Message, detail: str | None = None) -> Message:
    """The reply for an unknown or expired clientId: re-handshake at once."""
    text = SESSION_UNKNOWN if detail is None else error(402, f"session_unknown ({detail})")
    return error_reply(message, text, advice(HANDSHAKE_ADVICE, 0))


def handshake_reply(message: Message, client_id: str, transports: list[str],
                    advice_: dict[str, Any]) -> Message:
    reply = reply_to(message)
    reply.update(
        version=VERSION,
        minimumVersion=MINIMUM_VERSION,
        supportedConnectionTypes=transports,
        clientId=client_id,
        advice=advice_,
    )
    return reply


def body_error_reply(error_string: str) -> list[Message]:
    """The reply array for a body that could not be decoded into messages."""
    return [{"channel": UNSUCCESSFUL, "successful": False, "error": error_string,
             "advice": advice(RETRY, 0)}]


def delivered(channel: str, data: Any, message_id: Any = None, ext: dict[str, Any] | None = None) -> Message:
    """The message as subscribers receive it: never carries the publisher's clientId."""
    message: Message = {"channel": channel, "data": data}
    if message_id is not None:
        message["id"] = message_id
    if ext:
        message["ext"] = ext
    return message
