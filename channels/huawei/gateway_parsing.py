"""The agent gateway's request bodies and path parameters: parsed, or refused with retcode 000-002.

Pure functions, no I/O: each takes what the request carried and returns what the domain needs
(`SignInOptions`, a `BatchAdd` of `Participant`s, addresses to remove), or raises a `GatewayError` whose
message names the field (and its index in `addresses`) and the rule it broke. The limits are the Huawei
pages' (seed 003 for batchaddparticipant, cec_07_1202 for sign-in, cec_07_1293 for batch removal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..gateway_conferences import AGENT_ADDRESS, MAX_PARTICIPANTS, Address, Participant
from ..gateway_sessions import SignInOptions
from .gateway_envelope import invalid

Json = dict[str, Any]

# ---------------------------------------------------------------- limits from the Huawei pages

MIN_AGENT_ID = 101
MAX_AGENT_ID = 59999  # en-us pages; newer pages allow 999999, our directory uses the documented range
MAX_PASSWORD = 32
MAX_PHONE = 24
AGENT_TYPES = (4, 11)  # 4 PC + phone, 11 PC + phone video
SIGN_IN_STATUSES = (4, 5)  # 4 idle, 5 after-call work
MAX_ADD_ADDRESSES = MAX_PARTICIPANTS  # seed 003: 1..120 per batch, the bound of a whole conference too
MAX_REMOVE_ADDRESSES = 30
MAX_ADDRESS = 24
MAX_VOICE_PATH = 127
MAX_CALLER = 24
MAX_DEVICE_VALUE = 255
PLAY_ANNOUNCEMENT_FILE = 2  # playMode 2: play the file in voicePath, the only documented mode
ADDRESS_TYPES = {"6": "phone number", AGENT_ADDRESS: "agent ID"}


def parse_agent_id(raw: str, where: str = "agentid") -> str:
    """A workNo in 101..59999 written canonically ("0101" would be a different key for the same agent)."""
    # Length first: int() of thousands of digits is slow and, past 4300 digits, an error.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(MAX_AGENT_ID)) or str(int(raw)) != raw \
            or not MIN_AGENT_ID <= int(raw) <= MAX_AGENT_ID:
        raise invalid(f"{where} must be an agent ID from {MIN_AGENT_ID} to {MAX_AGENT_ID}, got {raw!r}")
    return raw


def parse_json_object(body: bytes, *, empty_ok: bool = False) -> Json:
    if not body.strip():
        if empty_ok:
            return {}
        raise invalid("the request body is empty: expected a JSON object")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise invalid(f"the request body must be a JSON object, got {_kind(parsed)}")
    return parsed


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    # JSON true/false arrive as bool, which Python counts as int; they are not numbers here.
    return isinstance(value, int) and not isinstance(value, bool)


def optional_int(obj: Json, key: str, where: str, *, default: int, low: int | None = None,
                 high: int | None = None) -> int:
    """An integer field; missing or null means `default` (seed 003: "left empty or set to null")."""
    value = obj.get(key)
    if value is None:
        return default
    if not _is_int(value):
        raise invalid(f"{where}{key} must be an integer, got {_kind(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise invalid(f"{where}{key} must be from {low} to {high}, got {value}")
    return value


def optional_bool(obj: Json, key: str, where: str, *, default: bool) -> bool:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"{where}{key} must be a boolean, got {_kind(value)}")
    return value


def optional_str(obj: Json, key: str, where: str, *, max_len: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{where}{key} must be a string, got {_kind(value)}")
    if len(value) > max_len:
        raise invalid(f"{where}{key} must be at most {max_len} characters, got {len(value)}")
    return value


def required_str(obj: Json, key: str, where: str, *, max_len: int) -> str:
    value = optional_str(obj, key, where, max_len=max_len)
    if value is None:
        raise invalid(f"{where}{key} is required")
    return value


def _lenient_int(obj: Json, key: str, *, default: int, allowed: tuple[int, ...]) -> int:
    # Huawei's sample desktop sends agenttype and status straight from <select> values, i.e. as "4";
    # accept a decimal string as well as a number so that desktop works unchanged.
    value = obj.get(key)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if value is None:
        return default
    if not _is_int(value) or value not in allowed:
        shown = " or ".join(str(a) for a in allowed)
        raise invalid(f"{key} must be {shown}, got {value!r}")
    return value


def _lenient_bool(obj: Json, key: str) -> bool:
    # Same desktop, same reason: releasephone comes from a <select> as "true"/"false".
    value = obj.get(key)
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    return optional_bool(obj, key, "", default=True)


def parse_sign_in(body: Json) -> SignInOptions:
    """The sign-in body (cec_07_1202): password <= 32, phonenum <= 24, flags default true."""
    return SignInOptions(
        password=required_str(body, "password", "", max_len=MAX_PASSWORD),
        phonenum=optional_str(body, "phonenum", "", max_len=MAX_PHONE) or "",
        autoanswer=_lenient_bool(body, "autoanswer"),
        autoenteridle=_lenient_bool(body, "autoenteridle"),
        releasephone=_lenient_bool(body, "releasephone"),
        agenttype=_lenient_int(body, "agenttype", default=4, allowed=AGENT_TYPES),
        status=_lenient_int(body, "status", default=4, allowed=SIGN_IN_STATUSES),
    )


@dataclass(frozen=True)
class BatchAdd:
    participants: tuple[Participant, ...]
    beep_tone: bool
    play_mode: int
    voice_path: str | None
    caller: str | None


def _addresses(body: Json, max_count: int) -> list[Json]:
    value = body.get("addresses")
    if value is None:
        raise invalid("addresses is required")
    if not isinstance(value, list):
        raise invalid(f"addresses must be an array, got {_kind(value)}")
    if not 1 <= len(value) <= max_count:
        raise invalid(f"addresses must hold 1 to {max_count} entries, got {len(value)}")
    return value


def parse_address(entry: Any, index: int) -> Address:
    """One `{addressType, address}` object; the failure names the field and the index."""
    where = f"addresses[{index}]."
    if not isinstance(entry, dict):
        raise invalid(f"addresses[{index}] must be an object, got {_kind(entry)}")
    address_type = entry.get("addressType")
    if address_type is None:
        raise invalid(f"{where}addressType is required")
    if not isinstance(address_type, str) or address_type not in ADDRESS_TYPES:
        raise invalid(f'{where}addressType must be the string "6" (phone number) or "9" (agent ID), '
                      f"got {orjson.dumps(address_type).decode()}")
    address = required_str(entry, "address", where, max_len=MAX_ADDRESS)
    if not address:
        raise invalid(f"{where}address must not be empty")
    if address_type == AGENT_ADDRESS:
        parse_agent_id(address, f"{where}address")
    return address_type, address


def _no_repeats(keys: list[Address]) -> None:
    first_seen: dict[Address, int] = {}
    for index, key in enumerate(keys):
        if key in first_seen:
            raise invalid(f"addresses[{index}] repeats addresses[{first_seen[key]}] ({key[0]}:{key[1]})")
        first_seen[key] = index


def parse_participant(entry: Any, index: int) -> Participant:
    address_type, address = parse_address(entry, index)
    where = f"addresses[{index}]."
    return Participant(
        address_type, address,
        device_call_type=optional_int(entry, "deviceCallType", where, default=0, low=0, high=MAX_DEVICE_VALUE),
        device_type=optional_int(entry, "deviceType", where, default=0, low=0, high=MAX_DEVICE_VALUE),
    )


def parse_batch_add(body: Json) -> BatchAdd:
    """The batchaddparticipant body, every rule of seed 003 (cec_07_1292)."""
    participants = [parse_participant(e, i) for i, e in enumerate(_addresses(body, MAX_ADD_ADDRESSES))]
    _no_repeats([p.key for p in participants])
    beep_tone = optional_bool(body, "beepTone", "", default=False)
    play_mode = optional_int(body, "playMode", "", default=PLAY_ANNOUNCEMENT_FILE)
    # voicePath is checked even when beepTone is false (the seed's own example sends one then): a value
    # the gateway would refuse with beepTone true should not be accepted silently either.
    voice_path = optional_str(body, "voicePath", "", max_len=MAX_VOICE_PATH)
    if beep_tone and not voice_path:
        raise invalid("voicePath is required when beepTone is true")
    if beep_tone and play_mode != PLAY_ANNOUNCEMENT_FILE:
        raise invalid(f"playMode must be {PLAY_ANNOUNCEMENT_FILE} when beepTone is true, got {play_mode}")
    caller = optional_str(body, "caller", "", max_len=MAX_CALLER)
    return BatchAdd(tuple(participants), beep_tone, play_mode, voice_path, caller)


def parse_batch_remove(body: Json) -> tuple[Address, ...]:
    """The batchremoveparticipant body: 1..30 `{addressType, address}` (cec_07_1293)."""
    keys = [parse_address(e, i) for i, e in enumerate(_addresses(body, MAX_REMOVE_ADDRESSES))]
    _no_repeats(keys)
    return tuple(keys)
