"""Signed-in agents of the agent gateway: the Guid each proved, its queued events and its one held poll.

Authentication is Huawei's static mode (AUTHMODE 1): the Guid handed out at sign-in stays valid until the
agent signs out or stops polling for `idle_signout` seconds. Only a SHA-256 digest of the Guid is kept
(never the Guid, never the password), so the stored sessions do not let their reader sign in. An idle
session is ended as soon as it is looked up, so expiry never waits for the sweeper.

Each agent has a bounded event queue (when full, the oldest event is dropped) and is the `HoldSlot` of its
event poll (cometd_broker.poll_hold): a newer poll supersedes the one held, a queued event or the end of
the session releases it. No HTTP here: refusals are gateway_refusals exceptions; the sessions note which
agents changed so the next write to the store carries them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cometd_broker.logs import session_fields
from cometd_broker.poll_hold import Held, HoldSlot

from .gateway_refusals import AlreadySignedIn, NotSignedIn
from .store import Document

log = logging.getLogger("channels.agentgateway")

Json = dict[str, Any]
SESSION_KIND = "gateway-session"  # store documents: agent ID -> its sign-in session

# Why a held poll was released, besides poll_hold's TIMEOUT and SUPERSEDED.
WAKE_EVENT = "event"
WAKE_SIGNED_OUT = "signed-out"
WAKE_SHUTDOWN = "shutdown"


def new_guid() -> str:
    return f"{uuid.uuid4()}.AgentGateway1"


def guid_digest(guid: str) -> str:
    """What is kept of a Guid: enough to check one, not to present one (the store may be read by others)."""
    return hashlib.sha256(guid.encode()).hexdigest()


def agent_event(event_type: str, agent_id: str, content: Json) -> Json:
    return {"eventType": event_type, "workNo": agent_id, "content": content}


@dataclass(frozen=True)
class SignInOptions:
    password: str
    phonenum: str
    autoanswer: bool
    autoenteridle: bool
    releasephone: bool
    agenttype: int
    status: int


class AgentSession(HoldSlot):
    """One signed-in agent: a digest of its Guid, its bounded event queue and its (single) held poll."""

    __slots__ = ("agent_id", "guid_digest", "options", "last_poll", "max_events", "events", "dropped")

    def __init__(self, agent_id: str, guid_digest: str, options: SignInOptions, last_poll: float, max_events: int,
                 events: Iterable[Json] = (), dropped: int = 0) -> None:
        super().__init__()
        self.agent_id = agent_id
        self.guid_digest = guid_digest  # guid_digest() of the Guid handed out at sign-in
        self.options = options  # without the password
        self.last_poll = last_poll
        self.max_events = max_events
        self.events: deque[Json] = deque(events)
        self.dropped = dropped

    @property
    def waiter(self) -> Held | None:
        """The poll held right now, if any."""
        return self.parked

    def push(self, event: Json) -> bool:
        """Queue an event, dropping the oldest when full; True when one was dropped."""
        dropped = len(self.events) >= self.max_events
        if dropped:
            self.events.popleft()
            self.dropped += 1
        self.events.append(event)
        self.unpark(WAKE_EVENT)
        return dropped

    def holds_guid(self, guid: str) -> bool:
        # Constant-time: the Guid is the only credential after sign-in.
        return hmac.compare_digest(guid_digest(guid).encode(), self.guid_digest.encode())

    def to_document(self) -> Document:
        return {"guidDigest": self.guid_digest, "options": dataclasses.asdict(self.options),
                "events": list(self.events), "dropped": self.dropped}


class AgentSessions:
    """Every signed-in agent, by agent ID; `on_end(agent_id)` runs when a session ends (sign-out, idle)."""

    def __init__(self, *, idle_signout: float, max_events: int, clock: Callable[[], float],
                 on_end: Callable[[str], None], user_of: Callable[[str], str | None]) -> None:
        """`user_of(agent_id)` names the agent's user in log lines."""
        self.idle_signout = idle_signout
        self.max_events = max_events
        self.clock = clock
        self.on_end = on_end
        self.user_of = user_of
        self.by_agent: dict[str, AgentSession] = {}
        self.changed: set[str] = set()  # agent IDs whose session changed since the last write
        self.dropped_events = 0

    def restore(self, documents: dict[str, Document]) -> None:
        """Load stored sessions; their idle time counts from now."""
        for agent_id, doc in documents.items():
            self.by_agent[agent_id] = AgentSession(agent_id, doc["guidDigest"], SignInOptions(**doc["options"]),
                                                   self.clock(), self.max_events, doc["events"][-self.max_events:],
                                                   doc["dropped"])
        if self.by_agent:
            log.info("restored %d agent gateway sign-in(s) with %d event(s) not polled yet", len(self.by_agent),
                     sum(len(session.events) for session in self.by_agent.values()))

    def live(self, agent_id: str) -> AgentSession | None:
        """The agent's live session; an idle one is ended here."""
        session = self.by_agent.get(agent_id)
        if session is not None and self.is_idle(session):
            self.end(session)
            return None
        return session

    def signed_in(self, agent_id: str) -> AgentSession:
        session = self.live(agent_id)
        if session is None:
            raise NotSignedIn(f"agent {agent_id} is not signed in")
        return session

    def is_current(self, session: AgentSession) -> bool:
        """False once `session` has ended (a poll held across a sign-out finds out here)."""
        return self.by_agent.get(session.agent_id) is session

    def is_idle(self, session: AgentSession) -> bool:
        # A poll that is held right now counts as polling.
        return session.parked is None and self.clock() - session.last_poll >= self.idle_signout

    def sign_in(self, agent_id: str, options: SignInOptions) -> tuple[AgentSession, str]:
        """A new session and the Guid that proves it; the password is not kept."""
        if self.live(agent_id) is not None:
            raise AlreadySignedIn(f"agent {agent_id} is already signed in")
        guid = new_guid()
        session = AgentSession(agent_id, guid_digest(guid), dataclasses.replace(options, password=""), self.clock(),
                               self.max_events)
        self.by_agent[agent_id] = session
        self.changed.add(agent_id)
        return session, guid

    def forget(self, session: AgentSession) -> None:
        """Undo a sign-in that could not be stored: the Guid nobody received must not lock the agent out."""
        if self.by_agent.get(session.agent_id) is session:
            del self.by_agent[session.agent_id]

    def end(self, session: AgentSession) -> None:
        """Sign the agent out: its held poll is released, then `on_end` runs."""
        if self.by_agent.get(session.agent_id) is session:
            del self.by_agent[session.agent_id]
            self.changed.add(session.agent_id)
        session.unpark(WAKE_SIGNED_OUT)
        self.on_end(session.agent_id)

    def sign_out_idle(self) -> list[str]:
        """Sign out every agent that has not polled for `idle_signout` seconds; returns their IDs."""
        idle = [s for s in self.by_agent.values() if self.is_idle(s)]
        for session in idle:
            log.info("agent %s signed out: no event poll for %.1f s", session.agent_id, self.idle_signout,
                     extra=session_fields(user=self.user_of(session.agent_id)))
            self.end(session)
        return [s.agent_id for s in idle]

    def release_polls(self, reason: str) -> None:
        for session in self.by_agent.values():
            session.unpark(reason)

    def queue(self, agent_id: str, event_type: str, content: Json) -> Json | None:
        """Queue an event for a signed-in agent and return it; events for agents not signed in are not kept."""
        session = self.by_agent.get(agent_id)
        if session is None:
            return None
        event = agent_event(event_type, agent_id, content)
        self.changed.add(agent_id)
        if session.push(event):
            self.dropped_events += 1
            log.warning("agent %s event queue full (%d): oldest event dropped", agent_id, self.max_events,
                        extra=session_fields(user=self.user_of(agent_id)))
        return event

    def take(self, session: AgentSession) -> Json:
        """The oldest queued event, taken out (`put_back` undoes it if handing it out fails)."""
        self.changed.add(session.agent_id)
        return session.events.popleft()

    def put_back(self, session: AgentSession, event: Json) -> None:
        session.events.appendleft(event)
