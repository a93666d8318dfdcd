"""The Huawei CEC agent gateway: sign-in with a Guid, long-polled agent events, agent conferences.

Routes live under `/agentgateway/resource/`. Every answer is HTTP 200 with a JSON body
`{"message": ..., "retcode": ..., "result": {...}}` (event polls carry `event` instead of `result`);
`retcode` "0" is success and anything else names the failure, the way Huawei's desktops expect it.
A path under the prefix that is no interface answers 404, a method an interface does not take 405, both
in the same envelope (retcode 000-002).

Authentication is the static mode (AUTHMODE 1): the Guid handed out by sign-in stays valid until the
agent signs out or stops polling for `idle_signout` seconds. A request either fails before anything
changes or is applied whole: handlers validate everything first and only then mutate, with no await
between the two.

Persistence (given a `DocumentStore`): what a request changed -- conferences (chairperson, participants),
the conference-id counter and sign-in sessions -- is written in one awaited write at the end of the request,
before its reply and before the mirror lets its events out; a poll writes the taking of its event before
handing it out. A session is stored as the agent, a SHA-256 digest of its Guid (never the Guid, never the
password), its sign-in options and its queue of events not polled yet. So after a restart (or, in a cluster,
a leader failover) a desktop polls on with the same Guid and gets every event queued before; the idle
sign-out counts from the restart. The store's writes are ordered, so an event a poll hands out (queued by
another request) is stored before its taking is. A write that fails keeps everything it carried due for the
next one, its events not mirrored yet; the request answers "retry later" (as for any failure, what it
changed in memory stays).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from cometd_broker.login_throttle import LoginThrottle, retry_seconds
from cometd_broker.logs import bind_user, session_fields
from cometd_broker.metrics import METRICS, route_label
from cometd_broker.tasks import cancel_and_wait

from .auth import User, UserDirectory, peer_address
from .store import Change, Document, DocumentStore, StoreUnavailable

log = logging.getLogger("channels.agentgateway")

PREFIX = "/agentgateway/resource"
RETCODE = web.ResponseKey("agentgateway.retcode", str)  # a reply's retcode, kept on it for the metrics

# ---------------------------------------------------------------- retcodes (reference/domain.md 5.4)

SUCCESS = "0"
INVALID_PARAMETER = "000-002"
GUID_ERROR = "000-003"
ALREADY_SIGNED_IN = "100-002"
NOT_SIGNED_IN = "100-006"
OPERATION_FAILED = "100-007"  # "exception during agent operation": used only for unexpected internal errors
# Seed 003 lists 101-001 and 101-002 for the conference interfaces without saying what they mean. We give
# them the two conference failures a chairperson can hit; the message always says which one it was.
NOT_CHAIRPERSON = "101-001"  # assumed: the agent is not the chairperson of an active conference
PARTICIPANT_CONFLICT = "101-002"  # assumed: a participant is already/not in the conference, or it is full

# ---------------------------------------------------------------- limits from the Huawei pages

MIN_AGENT_ID = 101
MAX_AGENT_ID = 59999  # en-us pages; newer pages allow 999999, our directory uses the documented range
MAX_PASSWORD = 32
MAX_PHONE = 24
AGENT_TYPES = (4, 11)  # 4 PC + phone, 11 PC + phone video
SIGN_IN_STATUSES = (4, 5)  # 4 idle, 5 after-call work
MAX_ADD_ADDRESSES = 120
MAX_REMOVE_ADDRESSES = 30
MAX_ADDRESS = 24
MAX_VOICE_PATH = 127
MAX_CALLER = 24
MAX_DEVICE_VALUE = 255
PLAY_ANNOUNCEMENT_FILE = 2  # playMode 2: play the file in voicePath, the only documented mode
ADDRESS_TYPES = {"6": "phone number", "9": "agent ID"}
AGENT_ADDRESS = "9"
# A conference holds at most this many invited parties besides the chairperson: one full batch. It keeps
# every conference bounded; Huawei bounds it by the VDN's concurrent-call licence.
MAX_PARTICIPANTS = MAX_ADD_ADDRESSES

# AgentConf_ParticipantChanged values (cec_07_1414).
CHANGE_JOIN = 0
CHANGE_LEAVE = 1
REASON_REMOVED_BY_CHAIR = 1
REASON_CONFERENCE_ENDED = 3
REASON_SIGNED_OUT = 4

Json = dict[str, Any]


class GatewayError(Exception):
    """A request refused with a Huawei retcode; nothing was changed."""

    def __init__(self, retcode: str, message: str) -> None:
        super().__init__(message)
        self.retcode = retcode
        self.message = message


def invalid(message: str) -> GatewayError:
    return GatewayError(INVALID_PARAMETER, message)


def _throttled(wait: float) -> GatewayError:
    # The code of a wrong password: a Huawei client has none for "locked", and the message says when to retry.
    return invalid(f"too many failed sign-ins for this agent or address: retry in {retry_seconds(wait)} s")


# ---------------------------------------------------------------- replies


def reply(retcode: str = SUCCESS, message: str = "success", result: Json | None = None,
          headers: dict[str, str] | None = None, *, status: int = 200) -> web.Response:
    """The Huawei envelope, HTTP 200 from every interface: clients branch on `retcode`, not on the HTTP
    status (only a path that is no interface, or a method it does not take, says so with 404 or 405)."""
    body = {"message": message, "retcode": retcode, "result": {} if result is None else result}
    response = web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                            headers=headers)
    response[RETCODE] = retcode  # for the metrics, without parsing the body back
    return response


def event_reply(event: Json | None) -> web.Response:
    response = web.Response(body=orjson.dumps({"message": "", "retcode": SUCCESS, "event": event}),
                            content_type="application/json")
    response[RETCODE] = SUCCESS
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(handler: Handler) -> Handler:
    """Turn refusals into the envelope, and contain bugs: a desktop never sees a traceback. Each
    request is counted in the app's metrics (when it has them) by route and retcode."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = reply(exc.retcode, exc.message)
        except StoreUnavailable as exc:  # a cluster's Redis is down, or this process lost the lead: retry
            log.warning("%s %s: state store unavailable: %s", request.method, request.path, exc)
            response = reply(OPERATION_FAILED, f"agent gateway state unavailable, retry later ({exc})")
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            response = reply(OPERATION_FAILED, "internal error in the agent gateway: the request was not applied")
        _count(request, response, time.monotonic() - started)
        return response

    return wrapper


@web.middleware
async def no_such_interface(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under PREFIX, a path that is no interface (404) or a method an interface does not take (405, with
    Allow) answers in the envelope too, with retcode 000-002 (invalid parameter: the one failure the
    conference pages, e.g. Inviting Participants in Batches, list for a malformed request), so a desktop
    that reads `retcode` is told what was wrong."""
    if not (request.path == PREFIX or request.path.startswith(PREFIX + "/")):
        return await handler(request)
    started = time.monotonic()
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = reply(INVALID_PARAMETER, f"{request.path} does not support {request.method}: use {allowed}",
                         headers={"Allow": allowed}, status=405)
    except web.HTTPNotFound:
        response = reply(INVALID_PARAMETER, f"no agent gateway interface at {request.path}", status=404)
    _count(request, response, time.monotonic() - started)
    return response


def _count(request: web.Request, response: web.StreamResponse, seconds: float) -> None:
    metrics = request.app.get(METRICS)
    if metrics is None:
        return
    route = route_label(request)
    metrics.counter("agentgateway_requests_total", "Huawei agent gateway requests, by route and retcode",
                    ("method", "route", "retcode")).inc((request.method, route, str(response.get(RETCODE, ""))))
    metrics.histogram("agentgateway_request_duration_seconds", "Time to answer a Huawei agent gateway request "
                      "(an event poll waits for events up to its poll time), by route",
                      ("method", "route")).observe((request.method, route), seconds)


# ---------------------------------------------------------------- validation (pure functions)


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


@dataclass(frozen=True)
class SignInOptions:
    password: str
    phonenum: str
    autoanswer: bool
    autoenteridle: bool
    releasephone: bool
    agenttype: int
    status: int


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


Address = tuple[str, str]  # (addressType, address)


@dataclass(frozen=True)
class Participant:
    address_type: str
    address: str
    device_call_type: int = 0
    device_type: int = 0

    @property
    def key(self) -> Address:
        return (self.address_type, self.address)


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


# ---------------------------------------------------------------- state


def new_guid() -> str:
    return f"{uuid.uuid4()}.AgentGateway1"


def guid_digest(guid: str) -> str:
    """What is kept of a Guid: enough to check one, not to present one (the store may be read by others)."""
    return hashlib.sha256(guid.encode()).hexdigest()


SESSION_KIND = "gateway-session"  # store documents: agent ID -> its sign-in session


def agent_event(event_type: str, agent_id: str, content: Json) -> Json:
    return {"eventType": event_type, "workNo": agent_id, "content": content}


# Why a parked poll was woken.
WAKE_EVENT = "event"
WAKE_SUPERSEDED = "superseded"
WAKE_SIGNED_OUT = "signed-out"
WAKE_SHUTDOWN = "shutdown"


@dataclass(eq=False)
class AgentSession:
    """One signed-in agent: a digest of its Guid, its bounded event queue and its (single) parked poll."""

    agent_id: str
    guid_digest: str  # guid_digest() of the Guid handed out at sign-in
    options: SignInOptions  # without the password
    last_poll: float
    max_events: int
    events: deque[Json] = field(default_factory=deque)
    dropped: int = 0
    waiter: asyncio.Future[str] | None = None

    def push(self, event: Json) -> bool:
        """Queue an event, dropping the oldest when full; True when one was dropped."""
        dropped = len(self.events) >= self.max_events
        if dropped:
            self.events.popleft()
            self.dropped += 1
        self.events.append(event)
        self.wake(WAKE_EVENT)
        return dropped

    def wake(self, why: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(why)


@dataclass(eq=False)
class Conference:
    conf_id: int
    chair: str
    participants: dict[Address, Participant] = field(default_factory=dict)  # insertion order = join order

    def to_document(self) -> Document:
        return {"confId": self.conf_id, "chair": self.chair,
                "participants": [{"addressType": p.address_type, "address": p.address,
                                  "deviceCallType": p.device_call_type, "deviceType": p.device_type}
                                 for p in self.participants.values()]}

    @classmethod
    def from_document(cls, doc: Document) -> Conference:
        participants = [Participant(p["addressType"], p["address"], p["deviceCallType"], p["deviceType"])
                        for p in doc["participants"]]
        return cls(doc["confId"], doc["chair"], {p.key: p for p in participants})


# The CometD channel on which a desktop can follow its agent's gateway events (per user).
MIRROR_CHANNEL = "/v2/me/agentevents"
Mirror = Callable[[str, Json], Awaitable[None]]


class AgentGateway:
    """Signed-in agents, their event queues and their conferences, served over the Huawei REST shape."""

    def __init__(self, users: UserDirectory, *, poll_wait: float = 10.0, idle_signout: float = 120.0,
                 max_events: int = 1000, clock: Callable[[], float] = time.monotonic,
                 mirror: Mirror | None = None, store: DocumentStore | None = None,
                 login_throttle: LoginThrottle | None = None,
                 client_address: Callable[[web.Request], str | None] = peer_address) -> None:
        """`mirror(user_id, event)`, when given, also receives every event queued for a signed-in
        agent, so a desktop can follow the gateway over CometD (see `MIRROR_CHANNEL`). `store` None keeps
        nothing; otherwise the conferences in it are loaded now. Sign-ins go through `login_throttle`
        (the broker's, shared with the REST API and the handshake; None: one of its own), counted
        against `client_address(request)`."""
        if poll_wait < 0 or idle_signout <= 0 or max_events < 1:
            raise ValueError("poll_wait must be >= 0, idle_signout > 0 and max_events >= 1")
        self.users = users
        self.poll_wait = poll_wait  # Huawei: AGENT_POLL_WAIT_TIMES x AGENT_POLL_WAIT_INTERVAL = 10 s
        self.idle_signout = idle_signout  # Huawei: "no event polled within 2 minutes" signs the agent out
        self.max_events = max_events
        self.clock = clock
        self.sessions: dict[str, AgentSession] = {}
        self.conferences: dict[int, Conference] = {}
        self._conference_of: dict[str, int] = {}  # agent ID (chair or invited) -> conference ID
        self._next_conf_id = 1
        self.dropped_events = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._routes_added = False
        self.mirror = mirror
        self._mirror_outbox: list[tuple[str, Json]] = []
        self._mirror_lock = asyncio.Lock()  # mirrors one write's events at a time, in the order of the writes
        self._dirty_sessions: set[str] = set()  # agent IDs whose session changed since the last write
        self._dirty_conferences: set[int] = set()  # conference IDs changed (or ended) since the last write
        self.store = store
        self.login_throttle = login_throttle if login_throttle is not None else LoginThrottle()
        self.client_address = client_address
        if store is not None:
            self._restore(store)

    # ------------------------------------------------------------ persistence

    def _restore(self, store: DocumentStore) -> None:
        for doc in store.load("conference").values():
            conference = Conference.from_document(doc)
            self.conferences[conference.conf_id] = conference
            self._conference_of[conference.chair] = conference.conf_id
            for participant in conference.participants.values():
                if participant.address_type == AGENT_ADDRESS:
                    self._conference_of[participant.address] = conference.conf_id
        counter = store.load("counter").get("confId")
        highest = max(self.conferences, default=0)
        self._next_conf_id = max(counter["next"] if counter is not None else 1, highest + 1)
        for agent_id, doc in store.load(SESSION_KIND).items():
            events = deque(doc["events"][-self.max_events:])
            self.sessions[agent_id] = AgentSession(agent_id, doc["guidDigest"], SignInOptions(**doc["options"]),
                                                   self.clock(), self.max_events, events, doc["dropped"])
        if self.sessions:
            log.info("restored %d agent gateway sign-in(s) with %d event(s) not polled yet", len(self.sessions),
                     sum(len(session.events) for session in self.sessions.values()))

    def _changed(self, conference: Conference) -> None:
        """The conference (or its end) and the id counter go with the next write."""
        self._dirty_conferences.add(conference.conf_id)

    async def _commit(self) -> None:
        """Write what changed since the last write (sessions signed in or out, events queued or taken,
        conferences and the id counter) in one awaited write, then mirror the events queued with it, in
        order. If the write fails, all of it stays due for the next write, its events not mirrored."""
        sessions, self._dirty_sessions = self._dirty_sessions, set()
        conferences, self._dirty_conferences = self._dirty_conferences, set()
        outbox, self._mirror_outbox = self._mirror_outbox, []
        if self.store is not None and (sessions or conferences):
            changes: list[Change] = []
            for agent_id in sorted(sessions):
                session = self.sessions.get(agent_id)
                changes.append((SESSION_KIND, agent_id, None if session is None else {
                    "guidDigest": session.guid_digest, "options": dataclasses.asdict(session.options),
                    "events": list(session.events), "dropped": session.dropped}))
            for conf_id in sorted(conferences):  # an ended conference is deleted
                conference = self.conferences.get(conf_id)
                changes.append(("conference", str(conf_id), None if conference is None else conference.to_document()))
            if conferences:
                changes.append(("counter", "confId", {"next": self._next_conf_id}))
            try:
                await self.store.apply(changes)
            except BaseException:
                self._dirty_sessions |= sessions
                self._dirty_conferences |= conferences
                self._mirror_outbox[:0] = outbox
                raise
        if outbox and self.mirror is not None:
            # Writes complete in order and the lock is taken in that order: events leave in order too.
            async with self._mirror_lock:
                for user_id, event in outbox:
                    await self.mirror(user_id, event)

    # ------------------------------------------------------------ wiring and lifetime

    def add_routes(self, app: web.Application) -> None:
        """Register the gateway's routes on `app` and tie the idle sweeper to the app's lifetime."""
        if self._routes_added:
            raise RuntimeError("AgentGateway.add_routes was already called; one gateway serves one app")
        self._routes_added = True
        agent = PREFIX + "/onlineagent/{agentid}"
        conf = PREFIX + "/agentconf/{agentid}"
        app.router.add_put(agent, guarded(self._mirrored(self.sign_in)))
        app.router.add_delete(agent + "/logout", guarded(self._mirrored(self.sign_out)))
        app.router.add_get(PREFIX + "/agentevent/{agentid}", guarded(self.poll))
        app.router.add_post(conf + "/requestagentconf", guarded(self._mirrored(self.request_conference)))
        app.router.add_post(conf + "/batchaddparticipant", guarded(self._mirrored(self.batch_add)))
        app.router.add_post(conf + "/batchremoveparticipant", guarded(self._mirrored(self.batch_remove)))
        app.middlewares.append(no_such_interface)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._release_polls)
        app.on_cleanup.append(self._stop)

    @property
    def sweep_period(self) -> float:
        # Often enough that an idle agent goes within a quarter of the limit, never a busy loop.
        return min(1.0, max(0.01, self.idle_signout / 4))

    async def _start(self, _: web.Application) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(),
                                                                   name="agentgateway-sweeper")

    async def _release_polls(self, _: web.Application) -> None:
        # Parked polls would otherwise hold a graceful shutdown for up to poll_wait.
        for session in self.sessions.values():
            session.wake(WAKE_SHUTDOWN)

    async def _stop(self, _: web.Application) -> None:
        sweeper, self._sweeper = self._sweeper, None
        await cancel_and_wait(sweeper)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_period)
            try:
                self.sign_out_idle_agents()
                await self._commit()
            except Exception:
                # One bad sweep must not stop idle sign-outs for the rest of the app's life.
                log.exception("agent gateway sweep failed")

    def sign_out_idle_agents(self) -> list[str]:
        """Sign out every agent that has not polled for `idle_signout` seconds; returns their IDs."""
        idle = [s for s in self.sessions.values() if self._is_idle(s)]
        for session in idle:
            log.info("agent %s signed out: no event poll for %.1f s", session.agent_id, self.idle_signout,
                     extra=session_fields(user=self._user_of(session.agent_id)))
            self._end_session(session)
        return [s.agent_id for s in idle]

    def _is_idle(self, session: AgentSession) -> bool:
        # A poll that is parked right now counts as polling.
        return session.waiter is None and self.clock() - session.last_poll >= self.idle_signout

    # ------------------------------------------------------------ sessions

    def _session(self, agent_id: str) -> AgentSession | None:
        """The agent's live session; an idle one is ended here too, so expiry never waits for the sweeper."""
        session = self.sessions.get(agent_id)
        if session is not None and self._is_idle(session):
            self._end_session(session)
            return None
        return session

    def _authorized(self, request: web.Request) -> AgentSession:
        """The path's agent, signed in, with the request's Guid equal to that agent's current Guid."""
        agent_id = parse_agent_id(request.match_info["agentid"])
        session = self._session(agent_id)
        if session is None:
            raise GatewayError(NOT_SIGNED_IN, f"agent {agent_id} is not signed in")
        guid = request.headers.get("Guid")
        if not guid:
            raise GatewayError(GUID_ERROR, "GUID error: the Guid header is missing")
        # Constant-time: the Guid is the only credential after sign-in.
        if not hmac.compare_digest(guid_digest(guid).encode(), session.guid_digest.encode()):
            raise GatewayError(GUID_ERROR, f"GUID error: the Guid header is not agent {agent_id}'s sign-in GUID")
        bind_user(self._user_of(agent_id))  # every log line of this request names its user
        return session

    def _user_of(self, agent_id: str) -> str | None:
        user = self.users.by_agent_id(agent_id)
        return user.user_id if user is not None else None

    def _end_session(self, session: AgentSession) -> None:
        if self.sessions.get(session.agent_id) is session:
            del self.sessions[session.agent_id]
            self._dirty_sessions.add(session.agent_id)
        session.wake(WAKE_SIGNED_OUT)
        self._leave_conference(session.agent_id)

    def send(self, agent_id: str, event_type: str, content: Json) -> None:
        """Queue an event for a signed-in agent; events for agents not signed in are not kept."""
        session = self.sessions.get(agent_id)
        if session is None:
            return
        event = agent_event(event_type, agent_id, content)
        self._dirty_sessions.add(agent_id)
        if session.push(event):
            self.dropped_events += 1
            log.warning("agent %s event queue full (%d): oldest event dropped", agent_id, self.max_events,
                        extra=session_fields(user=self._user_of(agent_id)))
        user = self.users.by_agent_id(agent_id) if self.mirror is not None else None
        if user is not None:
            self._mirror_outbox.append((user.user_id, event))

    def _mirrored(self, handler: Handler) -> Handler:
        """Run a handler, then write what it changed and mirror the events it queued (events stay sync to
        queue, async to store and mirror)."""

        async def run(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            finally:
                await self._commit()  # before the reply, and before the mirror lets any event out

        return run

    # ------------------------------------------------------------ sign-in, sign-out, polling

    async def sign_in(self, request: web.Request) -> web.Response:
        agent_id = parse_agent_id(request.match_info["agentid"])
        options = parse_sign_in(parse_json_object(await request.read()))
        # Counted under the login name, so a user locked out on the REST API is locked out here too.
        owner = self.users.by_agent_id(agent_id)
        login = owner.user_id if owner is not None else f"agent-{agent_id}"
        address, throttle = self.client_address(request), self.login_throttle
        if wait := throttle.check(login, address, "gateway"):
            raise _throttled(wait)
        user = await self._authenticate(agent_id, options.password)
        if user is None:
            if wait := throttle.failed(login, address, "gateway", "wrong agent id or password"):
                raise _throttled(wait)
            # 5.4 has no credential code; 000-002 ("invalid parameter") is what a Huawei client already
            # handles as "fix the input". One message for both cases so sign-in does not reveal which
            # agent IDs exist.
            raise invalid(f"agent {agent_id} does not exist or the password is incorrect")
        if wait := throttle.succeeded(login, address, "gateway"):
            raise _throttled(wait)
        # Checked after the password (an await): a concurrent sign-in may have won meanwhile.
        if self._session(agent_id) is not None:
            raise GatewayError(ALREADY_SIGNED_IN, f"agent {agent_id} is already signed in")
        guid = new_guid()
        session = AgentSession(agent_id, guid_digest(guid), dataclasses.replace(options, password=""), self.clock(),
                               self.max_events)
        self.sessions[agent_id] = session
        self._dirty_sessions.add(agent_id)
        try:
            await self._commit()
        except BaseException:  # not kept: not signed in either, or the Guid nobody received would lock the agent out
            if self.sessions.get(agent_id) is session:
                del self.sessions[agent_id]
            raise
        bind_user(user.user_id)
        log.info("agent %s signed in", agent_id)
        return reply(result={"guid": guid}, headers={"Set-GUID": guid})

    async def _authenticate(self, agent_id: str, password: str) -> User | None:
        owner = self.users.by_agent_id(agent_id)
        # An unknown agent still costs one hash check (against no user), so timing does not reveal which
        # agent IDs exist. PBKDF2 takes tens of milliseconds: keep it off the event loop.
        user_id = owner.user_id if owner is not None else ""
        return await asyncio.to_thread(self.users.authenticate, user_id, password)

    async def sign_out(self, request: web.Request) -> web.Response:
        session = self._authorized(request)
        self._end_session(session)
        log.info("agent %s signed out", session.agent_id)
        return reply()

    async def poll(self, request: web.Request) -> web.Response:
        """The oldest queued event at once, else wait up to `poll_wait` for one; one poll per agent."""
        session = self._authorized(request)
        session.last_poll = self.clock()
        if session.events:
            return event_reply(await self._take_event(session))
        # The newest poll wins: the one it replaces is answered at once with no event.
        session.wake(WAKE_SUPERSEDED)
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        session.waiter = waiter
        try:
            await asyncio.wait([waiter], timeout=self.poll_wait)
        finally:
            if session.waiter is waiter:
                session.waiter = None
            session.last_poll = self.clock()
        why = waiter.result() if waiter.done() else None
        if self.sessions.get(session.agent_id) is not session:
            raise GatewayError(NOT_SIGNED_IN, f"agent {session.agent_id} was signed out while polling")
        if why != WAKE_SUPERSEDED and session.events:
            return event_reply(await self._take_event(session))
        return event_reply(None)

    async def _take_event(self, session: AgentSession) -> Json:
        """The oldest queued event, its removal stored first: an event is handed out once, or stays queued."""
        event = session.events.popleft()
        self._dirty_sessions.add(session.agent_id)
        try:
            await self._commit()
        except BaseException:
            session.events.appendleft(event)
            raise
        return event

    # ------------------------------------------------------------ conferences

    async def request_conference(self, request: web.Request) -> web.Response:
        """requestagentconf: the requester becomes the chairperson of a new conference."""
        session = self._authorized(request)
        parse_json_object(await request.read(), empty_ok=True)  # no documented fields; must still be JSON
        agent_id = session.agent_id
        if agent_id in self._conference_of:
            raise GatewayError(PARTICIPANT_CONFLICT,
                               f"agent {agent_id} is already in conference {self._conference_of[agent_id]}")
        conference = Conference(self._next_conf_id, agent_id)
        self._next_conf_id += 1
        self.conferences[conference.conf_id] = conference
        self._conference_of[agent_id] = conference.conf_id
        self._changed(conference)
        # Huawei's order (cec_07_1283): the chair joins, then the conference may be used.
        self.send(agent_id, "AgentConf_SelfJoinResult", {"result": 0, "confId": conference.conf_id})
        self.send(agent_id, "AgentConf_RequestSuccess", {"result": 0, "confId": conference.conf_id})
        return reply(result={"confId": conference.conf_id})

    def _chaired(self, agent_id: str) -> Conference:
        conf_id = self._conference_of.get(agent_id)
        conference = self.conferences.get(conf_id) if conf_id is not None else None
        if conference is None or conference.chair != agent_id:
            raise GatewayError(NOT_CHAIRPERSON, f"agent {agent_id} is not the chairperson of an active conference")
        return conference

    async def batch_add(self, request: web.Request) -> web.Response:
        """batchaddparticipant (seed 003): invite 1..120 phone numbers or agents, all or none."""
        session = self._authorized(request)
        batch = parse_batch_add(parse_json_object(await request.read()))
        conference = self._chaired(session.agent_id)
        self._check_can_join(conference, batch.participants)
        for participant in batch.participants:
            conference.participants[participant.key] = participant
            if participant.address_type == AGENT_ADDRESS:
                self._conference_of[participant.address] = conference.conf_id
        self._changed(conference)
        for participant in batch.participants:
            self._announce(conference, participant, CHANGE_JOIN)
        return reply()

    def _check_can_join(self, conference: Conference, participants: Iterable[Participant]) -> None:
        joining = list(participants)
        for index, participant in enumerate(joining):
            name = f"addresses[{index}] ({participant.address_type}:{participant.address})"
            # An agent (the chairperson included) is in at most one conference: it has one phone.
            in_conf = self._conference_of.get(participant.address) \
                if participant.address_type == AGENT_ADDRESS else None
            if participant.key in conference.participants:
                in_conf = conference.conf_id
            if in_conf is not None:
                raise GatewayError(PARTICIPANT_CONFLICT, f"{name} is already in conference {in_conf}")
        if len(conference.participants) + len(joining) > MAX_PARTICIPANTS:
            raise GatewayError(PARTICIPANT_CONFLICT,
                               f"conference {conference.conf_id} would exceed {MAX_PARTICIPANTS} participants")

    async def batch_remove(self, request: web.Request) -> web.Response:
        """batchremoveparticipant (cec_07_1293): remove 1..30 participants, all or none."""
        session = self._authorized(request)
        keys = parse_batch_remove(parse_json_object(await request.read()))
        conference = self._chaired(session.agent_id)
        for index, key in enumerate(keys):
            if key not in conference.participants:
                raise GatewayError(PARTICIPANT_CONFLICT, f"addresses[{index}] ({key[0]}:{key[1]}) is not a "
                                                         f"participant of conference {conference.conf_id}")
        for key in keys:
            self._remove_participant(conference, key, REASON_REMOVED_BY_CHAIR)
        self._changed(conference)  # events only queued so far: nothing leaves before the write
        return reply()

    def _remove_participant(self, conference: Conference, key: Address, reason: int) -> None:
        participant = conference.participants.pop(key)
        if participant.address_type == AGENT_ADDRESS:
            self._conference_of.pop(participant.address, None)
        self._announce(conference, participant, CHANGE_LEAVE, reason)

    def _announce(self, conference: Conference, participant: Participant, change: int,
                  reason: int | None = None) -> None:
        """AgentConf_ParticipantChanged to the participant (if an agent) and to the chairperson."""
        content: Json = {
            "result": 0,
            "changeType": change,
            "confId": conference.conf_id,
            "participant": participant.address,
            "participantType": int(participant.address_type),
            "deviceCallType": participant.device_call_type,
            "deviceType": participant.device_type,
        }
        if reason is not None:  # changeReason is only meaningful when someone leaves
            content["changeReason"] = reason
        if participant.address_type == AGENT_ADDRESS:
            self.send(participant.address, "AgentConf_ParticipantChanged", content)
        self.send(conference.chair, "AgentConf_ParticipantChanged", dict(content))

    def _leave_conference(self, agent_id: str) -> None:
        """A signing-out chair ends its conference; a signing-out participant leaves it."""
        conf_id = self._conference_of.get(agent_id)
        conference = self.conferences.get(conf_id) if conf_id is not None else None
        if conference is None:
            return
        if conference.chair != agent_id:
            self._remove_participant(conference, (AGENT_ADDRESS, agent_id), REASON_SIGNED_OUT)
            self._changed(conference)
            return
        for key in list(conference.participants):
            self._remove_participant(conference, key, REASON_CONFERENCE_ENDED)
        del self.conferences[conference.conf_id]
        del self._conference_of[agent_id]
        self._changed(conference)
