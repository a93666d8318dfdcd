"""The chat/SMS interaction model shared by both media: participants, the message log, per-agent legs,
states and capabilities, and the resource view each agent sees. Pure data: no I/O, no aiohttp.

GWS gives chat and SMS the same operations and notification shapes; only the names differ
(resource key, collection, topic, messageType, message-log uri key), so one model serves both and a
`MediaKind` carries the names.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Any

import orjson


@dataclass(frozen=True)
class MediaKind:
    """The names one medium uses on the wire."""

    name: str  # also the agent's routing channel ("chat", "sms")
    resource_key: str  # key of the resource in a notification: {"chat": {...}}
    collection: str  # /api/v2/me/<collection>
    topic: str  # CometD channel
    message_type: str  # messageType of state notifications
    uri_key: str  # key of the resource uri in MessageLogUpdated

    def uri(self, base_url: str, interaction_id: str) -> str:
        return f"{base_url.rstrip('/')}/api/v2/{self.collection}/{interaction_id}"


CHAT = MediaKind("chat", "chat", "chats", "/v2/me/chats", "ChatStateChangeMessage", "chatUri")
SMS = MediaKind("sms", "smssession", "smssessions", "/v2/me/smssessions", "SMSsessionStateChangeMessage",
                "smssessionUri")
MEDIA: dict[str, MediaKind] = {CHAT.name: CHAT, SMS.name: SMS}

MESSAGE_LOG_TYPE = "MessageLogUpdated"


class LegState(StrEnum):
    """One agent's state in an interaction (domain.md 3.5)."""

    INVITED = "Invited"  # offered, not yet accepted
    CHATTING = "Chatting"
    LEFT_CHAT = "LeftChat"  # left the session but still owns the interaction (wrap-up)
    COMPLETED = "Completed"
    REVOKED = "Revoked"  # offer withdrawn: timed out, or the interaction ended first

    @property
    def active(self) -> bool:
        """The leg still holds the interaction (and a unit of the agent's capacity)."""
        return self in (LegState.INVITED, LegState.CHATTING, LegState.LEFT_CHAT)


class Role(StrEnum):
    """How an agent came into the interaction; decides what the customer sees and what the agent may do."""

    OWNER = "Owner"  # routed inbound, or transferred to
    CONFERENCE = "Conference"  # joined through Invite: the customer sees them
    CONSULT = "Consult"  # joined through Consult: agents only, the customer is unaware


class Visibility(StrEnum):
    ALL = "All"
    AGENTS = "Agents"


class MessageType(StrEnum):
    TEXT = "Text"
    TYPING_STARTED = "TypingStarted"
    TYPING_STOPPED = "TypingStopped"
    PARTICIPANT_JOINED = "ParticipantJoined"
    PARTICIPANT_LEFT = "ParticipantLeft"
    PUSH_URL = "PushUrl"
    NOTICE = "Notice"
    CUSTOM_NOTICE = "CustomNotice"


# --- capabilities ------------------------------------------------------------------------------------

INVITED_CAPS = ("Accept", "Reject")
# Seed 000 (SMS Invite) / domain.md 2.2, in their order, with the focus capability under the name the SMS
# Accept page (seed 001) and the ChatLeave page give it: "InFocus". The Invite page prints "SetInFocus" in the
# same place; the GWS pages disagree, and a client must find one name for one capability, so every list here
# says "InFocus". The operation the capability permits keeps its name, SetInFocus (see FOCUS_ALIASES).
CHATTING_CAPS = ("Transfer", "Leave", "Invite", "Consult", "InFocus", "SetDisposition", "AttachUserData",
                 "DeleteUserData", "UpdateUserData", "Complete", "SendMessage", "SendStartTypingNotification",
                 "SendStopTypingNotification")
AGENTS_ONLY_CAPS = ("SendToAgents", "SendStartTypingToAgentsNotification", "SendStopTypingToAgentsNotification")
# Seed 000 inserts the agents-only operations right after UpdateUserData once 2+ agents are chatting.
CONFERENCE_CAPS = (*CHATTING_CAPS[:CHATTING_CAPS.index("UpdateUserData") + 1], *AGENTS_ONLY_CAPS,
                   *CHATTING_CAPS[CHATTING_CAPS.index("UpdateUserData") + 1:])
# A consultant helps the agents; the customer does not know they are there. So no customer-facing
# operations (SendMessage, customer typing) and nothing that decides the interaction's fate (Transfer,
# Invite, Consult, Complete, SetDisposition): the consultant talks to the agents, may annotate user data,
# and Leaves when done.
CONSULT_CAPS = ("Leave", "InFocus", "AttachUserData", "DeleteUserData", "UpdateUserData", *AGENTS_ONLY_CAPS)
# Documented LeftChat list (ChatLeave). The SetInFocus operation is accepted in LeftChat (InFocus, see
# FOCUS_ALIASES), because focusing a chat in wrap-up is harmless and the documented capability plainly means
# it. SetDisposition/user data are not listed, so they are refused.
LEFT_CHAT_CAPS = ("Transfer", "Complete", "Leave", "InFocus")

# Operation name -> capability names that permit it.
FOCUS_ALIASES = {"SetInFocus": ("InFocus",)}


def capabilities(state: LegState, role: Role, agents_chatting: int) -> list[str]:
    """The operations an agent may perform on their leg now, in documented order."""
    if state is LegState.INVITED:
        return list(INVITED_CAPS)
    if state is LegState.LEFT_CHAT:
        return list(LEFT_CHAT_CAPS)
    if state is not LegState.CHATTING:
        return []
    if role is Role.CONSULT:
        return list(CONSULT_CAPS)
    return list(CONFERENCE_CAPS if agents_chatting >= 2 else CHATTING_CAPS)


def permits(caps: list[str], operation: str) -> bool:
    return any(name in caps for name in FOCUS_ALIASES.get(operation, (operation,)))


# --- ids and time --------------------------------------------------------------------------------------


def new_interaction_id() -> str:
    """16 characters like GWS's `0000Na9B26EF006E`."""
    return "0000" + secrets.token_hex(6).upper()


def new_participant_id() -> str:
    return secrets.token_hex(8).upper()


def format_timestamp(epoch_ms: int) -> str:
    """`2014-01-02T14:23:18.109+0000`: ISO 8601 with milliseconds and a numeric offset, as GWS prints it."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{epoch_ms % 1000:03d}+0000"


# --- participants and messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class Participant:
    nickname: str
    type: str  # "Agent" | "Customer"
    participant_id: str

    def as_dict(self) -> dict[str, str]:
        return {"nickname": self.nickname, "type": self.type, "participantId": self.participant_id}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Participant:
        """The inverse of `as_dict` (which is also the stored form)."""
        return cls(doc["nickname"], doc["type"], doc["participantId"])


@dataclass(frozen=True)
class InteractionLimits:
    """What one interaction may hold, so that no client can grow it (and what every later change stores
    and every participant is sent) without bound."""

    max_text: int = 8192  # characters of one message's text (a farewell's included)
    max_messages: int = 5000  # messages of one interaction's log, typing notifications included
    max_user_data: int = 65536  # bytes of its userData as JSON

    def __post_init__(self) -> None:
        if min(self.max_text, self.max_messages, self.max_user_data) < 1:
            raise ValueError("interaction limits must be >= 1")


@dataclass(frozen=True)
class Message:
    index: int
    type: MessageType
    sender: Participant
    visibility: Visibility
    timestamp_ms: int
    text: str | None = None
    url: str | None = None

    def as_dict(self) -> dict[str, Any]:
        item: dict[str, Any] = {"index": self.index, "type": self.type.value, "from": self.sender.as_dict(),
                                "visibility": self.visibility.value,
                                "timestamp": format_timestamp(self.timestamp_ms),
                                "timestampSeconds": self.timestamp_ms}
        if self.text is not None:
            item["noticeText" if self.type is MessageType.CUSTOM_NOTICE else "text"] = self.text
        if self.url is not None:
            item["url"] = self.url
        return item

    def to_document(self) -> dict[str, Any]:
        """The stored form: the epoch milliseconds, not the formatted timestamp derived from them."""
        doc: dict[str, Any] = {"index": self.index, "type": self.type.value, "from": self.sender.as_dict(),
                               "visibility": self.visibility.value, "timestampMs": self.timestamp_ms}
        if self.text is not None:
            doc["text"] = self.text
        if self.url is not None:
            doc["url"] = self.url
        return doc

    @cached_property
    def encoded(self) -> orjson.Fragment:
        """`to_document()` as JSON, made once: a message never changes, and the interaction's document,
        stored again on every change, repeats its whole log (orjson copies a Fragment as it is)."""
        return orjson.Fragment(orjson.dumps(self.to_document()))

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Message:
        return cls(doc["index"], MessageType(doc["type"]), Participant.from_document(doc["from"]),
                   Visibility(doc["visibility"]), doc["timestampMs"], doc.get("text"), doc.get("url"))


@dataclass
class Leg:
    """One agent's part in one interaction. A new offer to the same agent replaces an ended leg."""

    user_id: str
    state: LegState
    role: Role
    participant: Participant | None = None  # set when the agent joins the chat session
    offer: Any = None  # the routing request this leg answers while Invited
    offer_expires_ms: int | None = None  # when the offer times out (epoch ms), while Invited
    offer_timeout: float | None = None  # its timeout in seconds

    def to_document(self) -> dict[str, Any]:
        """Without `offer`: it belongs to routing, which stores it beside the interaction
        (conversation_repository.py)."""
        return {"userId": self.user_id, "state": self.state.value, "role": self.role.value,
                "participant": None if self.participant is None else self.participant.as_dict()}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Leg:
        participant = doc.get("participant")
        return cls(doc["userId"], LegState(doc["state"]), Role(doc["role"]),
                   None if participant is None else Participant.from_document(participant))


@dataclass
class Interaction:
    id: str
    media: MediaKind
    customer: Participant
    queue: str
    contact_id: str  # whom saveLAR records the last agent for
    created_ms: int
    legs: dict[str, Leg] = field(default_factory=dict)
    log: list[Message] = field(default_factory=list)
    user_data: dict[str, Any] = field(default_factory=dict)
    customer_present: bool = True
    ended: bool = False  # the customer's side is over; no more messages either way

    def append(self, type: MessageType, sender: Participant, visibility: Visibility, now_ms: int, *,
               text: str | None = None, url: str | None = None) -> Message:
        """Add to the log with the next index: gap-free, starting at 1."""
        message = Message(len(self.log) + 1, type, sender, visibility, now_ms, text, url)
        self.log.append(message)
        return message

    def to_document(self, *, encoded_log: bool = False) -> dict[str, Any]:
        """Everything needed to resume the interaction, as JSON-ready data. Legs keep their insertion order
        (it is the join order the participants list shows). Which workbin holds the interaction and which
        routing requests wait for it are stored by their owners (workbins.py, conversation_repository.py).
        `encoded_log`: the log as each message's `encoded` JSON, for a writer that encodes with orjson."""
        return {"id": self.id, "media": self.media.name, "customer": self.customer.as_dict(),
                "queue": self.queue, "contactId": self.contact_id, "createdMs": self.created_ms,
                "legs": [leg.to_document() for leg in self.legs.values()],
                "log": ([message.encoded for message in self.log] if encoded_log
                        else [message.to_document() for message in self.log]),
                "userData": dict(self.user_data), "customerPresent": self.customer_present, "ended": self.ended}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Interaction:
        """The inverse of `to_document`; unknown keys are ignored (owners add their own). A log whose indices
        are not 1..n is refused: `append` numbers the next message from the log's length."""
        log = [Message.from_document(m) for m in doc["log"]]
        if [m.index for m in log] != list(range(1, len(log) + 1)):
            raise ValueError(f"interaction {doc['id']}: message log indices are not 1..{len(log)}")
        legs = [Leg.from_document(leg) for leg in doc["legs"]]
        return cls(doc["id"], MEDIA[doc["media"]], Participant.from_document(doc["customer"]), doc["queue"],
                   doc["contactId"], doc["createdMs"], legs={leg.user_id: leg for leg in legs}, log=log,
                   user_data=dict(doc["userData"]), customer_present=doc["customerPresent"], ended=doc["ended"])

    def chatting(self) -> list[Leg]:
        return [leg for leg in self.legs.values() if leg.state is LegState.CHATTING]

    def visible_agents_chatting(self) -> list[Leg]:
        """Agents the customer knows about: everyone chatting except consultants."""
        return [leg for leg in self.chatting() if leg.role is not Role.CONSULT]

    def active_legs(self) -> list[Leg]:
        return [leg for leg in self.legs.values() if leg.state.active]

    def participants(self) -> list[dict[str, str]]:
        """Chatting agents in join order, then the customer while present (seed 001 order)."""
        people = [leg.participant.as_dict() for leg in self.chatting() if leg.participant is not None]
        if self.customer_present:
            people.append(self.customer.as_dict())
        return people

    def capabilities_of(self, leg: Leg) -> list[str]:
        return capabilities(leg.state, leg.role, len(self.chatting()))

    def view(self, leg: Leg, base_url: str, *, participants: list[dict[str, str]] | None = None,
             with_user_data: bool = False) -> dict[str, Any]:
        """The resource as `leg`'s agent sees it. Ended legs see no participants (seed: Reject -> [])."""
        if participants is None:
            participants = self.participants() if leg.state.active else []
        resource: dict[str, Any] = {"id": self.id, "state": leg.state.value,
                                    "capabilities": self.capabilities_of(leg), "participants": participants,
                                    "uri": self.media.uri(base_url, self.id)}
        if with_user_data or self.user_data:
            resource["userData"] = dict(self.user_data)
        if leg.state is LegState.INVITED and leg.offer_expires_ms is not None:
            resource["offer"] = self.offer_view(leg)
        return resource

    def offer_view(self, leg: Leg) -> dict[str, Any]:
        """What an agent needs to judge an offer before accepting (an extension of GWS): when it times out,
        and the customer's first message (GWS's preview), which the agent otherwise sees only after Accept."""
        assert leg.offer_expires_ms is not None
        offer: dict[str, Any] = {"expiresAt": format_timestamp(leg.offer_expires_ms),
                                 "expiresAtMs": leg.offer_expires_ms, "timeout": leg.offer_timeout}
        first = next((m for m in self.log if m.type is MessageType.TEXT and m.visibility is Visibility.ALL
                      and m.sender.type == "Customer"), None)
        if first is not None:
            offer["preview"] = {"nickname": first.sender.nickname, "text": first.text or "",
                                "timestamp": format_timestamp(first.timestamp_ms)}
        return offer

    def messages_for_agents(self, upto: int | None = None) -> list[dict[str, Any]]:
        """Agents see All and Agents messages."""
        return [m.as_dict() for m in self.log[:upto]]

    def transcript(self) -> list[dict[str, Any]]:
        """What the customer sees: only messages with visibility All."""
        return [m.as_dict() for m in self.log if m.visibility is Visibility.ALL]
