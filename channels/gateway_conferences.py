"""The agent gateway's conferences: who chairs, who is in, who may join or leave, and what agents are told.

An agent asks for a conference and becomes its chairperson; the chairperson invites phone numbers and
agents in batches and removes them, each batch all or none. An agent (the chairperson included) is in at
most one conference: it has one phone. A signing-out chairperson ends its conference; any other agent
signing out leaves the one it is in. Every join and leave is told to the chairperson and to the agent
concerned as an AgentConf_* event (Huawei cec_07_1283, cec_07_1414) through the `send` port the book is
given. No HTTP here: refusals are gateway_refusals exceptions, raised before anything changes, and the
book notes which conferences changed so the next write to the store carries them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .gateway_refusals import NotChairperson, ParticipantConflict
from .store import Document

Json = dict[str, Any]
Address = tuple[str, str]  # (addressType, address)
SendEvent = Callable[[str, str, Json], None]  # (agent ID, eventType, content)

AGENT_ADDRESS = "9"  # the addressType of an agent ID; "6" is a phone number
# A conference holds at most this many invited parties besides the chairperson: one full batch of
# batchaddparticipant (seed 003). It keeps every conference bounded; Huawei bounds it by the VDN's
# concurrent-call licence.
MAX_PARTICIPANTS = 120

# AgentConf_ParticipantChanged values (cec_07_1414).
CHANGE_JOIN = 0
CHANGE_LEAVE = 1
REASON_REMOVED_BY_CHAIR = 1
REASON_CONFERENCE_ENDED = 3
REASON_SIGNED_OUT = 4


@dataclass(frozen=True)
class Participant:
    address_type: str
    address: str
    device_call_type: int = 0
    device_type: int = 0

    @property
    def key(self) -> Address:
        return (self.address_type, self.address)


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


class ConferenceBook:
    """Every active conference, by its ID and by the agents in it."""

    def __init__(self, send: SendEvent) -> None:
        self.send = send
        self.conferences: dict[int, Conference] = {}
        self._conference_of: dict[str, int] = {}  # agent ID (chair or invited) -> conference ID
        self.next_conf_id = 1
        self.changed: set[int] = set()  # conference IDs changed (or ended) since the last write

    def restore(self, documents: Iterable[Document], next_conf_id: int | None) -> None:
        """Load stored conferences; the next ID is above every one of them whatever the counter says."""
        for doc in documents:
            conference = Conference.from_document(doc)
            self.conferences[conference.conf_id] = conference
            self._conference_of[conference.chair] = conference.conf_id
            for participant in conference.participants.values():
                if participant.address_type == AGENT_ADDRESS:
                    self._conference_of[participant.address] = conference.conf_id
        highest = max(self.conferences, default=0)
        self.next_conf_id = max(next_conf_id if next_conf_id is not None else 1, highest + 1)

    def open(self, agent_id: str) -> Conference:
        """requestagentconf: `agent_id` becomes the chairperson of a new conference."""
        if agent_id in self._conference_of:
            raise ParticipantConflict(f"agent {agent_id} is already in conference {self._conference_of[agent_id]}")
        conference = Conference(self.next_conf_id, agent_id)
        self.next_conf_id += 1
        self.conferences[conference.conf_id] = conference
        self._conference_of[agent_id] = conference.conf_id
        self.changed.add(conference.conf_id)
        # Huawei's order (cec_07_1283): the chair joins, then the conference may be used.
        self.send(agent_id, "AgentConf_SelfJoinResult", {"result": 0, "confId": conference.conf_id})
        self.send(agent_id, "AgentConf_RequestSuccess", {"result": 0, "confId": conference.conf_id})
        return conference

    def chaired_by(self, agent_id: str) -> Conference:
        """The conference `agent_id` chairs: only a chairperson may invite or remove."""
        conf_id = self._conference_of.get(agent_id)
        conference = self.conferences.get(conf_id) if conf_id is not None else None
        if conference is None or conference.chair != agent_id:
            raise NotChairperson(f"agent {agent_id} is not the chairperson of an active conference")
        return conference

    def add(self, conference: Conference, participants: Sequence[Participant]) -> None:
        """batchaddparticipant: every party joins `conference` (see `chaired_by`), or none does."""
        self._check_can_join(conference, participants)
        for participant in participants:
            conference.participants[participant.key] = participant
            if participant.address_type == AGENT_ADDRESS:
                self._conference_of[participant.address] = conference.conf_id
        self.changed.add(conference.conf_id)
        for participant in participants:
            self._announce(conference, participant, CHANGE_JOIN)

    def _check_can_join(self, conference: Conference, joining: Sequence[Participant]) -> None:
        for index, participant in enumerate(joining):
            name = f"addresses[{index}] ({participant.address_type}:{participant.address})"
            # An agent (the chairperson included) is in at most one conference: it has one phone.
            in_conf = self._conference_of.get(participant.address) \
                if participant.address_type == AGENT_ADDRESS else None
            if participant.key in conference.participants:
                in_conf = conference.conf_id
            if in_conf is not None:
                raise ParticipantConflict(f"{name} is already in conference {in_conf}")
        if len(conference.participants) + len(joining) > MAX_PARTICIPANTS:
            raise ParticipantConflict(f"conference {conference.conf_id} would exceed {MAX_PARTICIPANTS} participants")

    def remove(self, conference: Conference, keys: Sequence[Address]) -> None:
        """batchremoveparticipant: every party leaves `conference` (see `chaired_by`), or none does."""
        for index, key in enumerate(keys):
            if key not in conference.participants:
                raise ParticipantConflict(f"addresses[{index}] ({key[0]}:{key[1]}) is not a "
                                          f"participant of conference {conference.conf_id}")
        for key in keys:
            self._remove_participant(conference, key, REASON_REMOVED_BY_CHAIR)
        self.changed.add(conference.conf_id)

    def leave(self, agent_id: str) -> None:
        """`agent_id` signed out: as chairperson it ends its conference, as a participant it leaves it."""
        conf_id = self._conference_of.get(agent_id)
        conference = self.conferences.get(conf_id) if conf_id is not None else None
        if conference is None:
            return
        self.changed.add(conference.conf_id)
        if conference.chair != agent_id:
            self._remove_participant(conference, (AGENT_ADDRESS, agent_id), REASON_SIGNED_OUT)
            return
        for key in list(conference.participants):
            self._remove_participant(conference, key, REASON_CONFERENCE_ENDED)
        del self.conferences[conference.conf_id]
        del self._conference_of[agent_id]

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
