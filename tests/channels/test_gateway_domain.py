"""The agent gateway's domain without HTTP: conference rules and sign-in sessions raise their own refusals,
change nothing when they refuse, and tell agents what happened through the send port."""

from __future__ import annotations

import asyncio

import pytest

from channels.gateway_conferences import (
    CHANGE_JOIN,
    CHANGE_LEAVE,
    REASON_CONFERENCE_ENDED,
    ConferenceBook,
    Participant,
)
from channels.gateway_refusals import AlreadySignedIn, NotChairperson, NotSignedIn, ParticipantConflict
from channels.gateway_sessions import WAKE_EVENT, WAKE_SIGNED_OUT, AgentSessions, SignInOptions
from cometd_broker.poll_hold import HoldTimers, hold

IDLE = 120.0
OPTIONS = SignInOptions("secret", "", True, True, True, 4, 4)


class Sent(list):
    """The send port: (agent ID, eventType, content) as the book sends them."""

    def __call__(self, agent_id: str, event_type: str, content: dict) -> None:
        self.append((agent_id, event_type, content))


def agent(agent_id: str) -> Participant:
    return Participant("9", agent_id)


def test_a_new_conference_makes_its_requester_chairperson_and_tells_it():
    sent = Sent()
    book = ConferenceBook(sent)
    conference = book.open("101")
    assert (conference.chair, book.chaired_by("101")) == ("101", conference)
    assert [(a, t) for a, t, _ in sent] == [("101", "AgentConf_SelfJoinResult"), ("101", "AgentConf_RequestSuccess")]
    assert book.changed == {conference.conf_id}


def test_only_the_chairperson_invites_and_an_agent_is_in_one_conference():
    sent = Sent()
    book = ConferenceBook(sent)
    first, second = book.open("101"), book.open("103")
    with pytest.raises(NotChairperson):
        book.chaired_by("102")
    book.add(first, [agent("102")])
    with pytest.raises(ParticipantConflict, match=r"addresses\[1\] \(9:102\) is already in conference 1"):
        book.add(second, [agent("104"), agent("102")])
    assert list(second.participants) == []  # all or none: 104 did not join either
    with pytest.raises(ParticipantConflict):
        book.open("102")


def test_joins_and_leaves_are_told_to_the_agent_and_the_chairperson():
    sent = Sent()
    book = ConferenceBook(sent)
    conference = book.open("101")
    sent.clear()
    book.add(conference, [agent("102")])
    assert [(a, c["changeType"]) for a, _, c in sent] == [("102", CHANGE_JOIN), ("101", CHANGE_JOIN)]
    sent.clear()
    book.leave("101")  # the chairperson signs out: the conference ends
    assert [(a, c["changeType"], c["changeReason"]) for a, _, c in sent] == [
        ("102", CHANGE_LEAVE, REASON_CONFERENCE_ENDED), ("101", CHANGE_LEAVE, REASON_CONFERENCE_ENDED)]
    assert book.conferences == {}
    book.open("102")  # free to chair one now


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def sessions(clock: Clock, ended: list[str]) -> AgentSessions:
    return AgentSessions(idle_signout=IDLE, max_events=2, clock=clock, on_end=ended.append, user_of=lambda _: None)


def test_one_session_per_agent_without_its_password_and_idle_ones_end_on_lookup():
    clock, ended = Clock(), []
    agents = sessions(clock, ended)
    session, guid = agents.sign_in("101", OPTIONS)
    assert session.holds_guid(guid) and not session.holds_guid(guid + "x")
    assert session.options.password == ""
    with pytest.raises(AlreadySignedIn):
        agents.sign_in("101", OPTIONS)
    clock.now = IDLE
    with pytest.raises(NotSignedIn):
        agents.signed_in("101")
    assert ended == ["101"]


def test_a_full_queue_drops_its_oldest_event():
    agents = sessions(Clock(), [])
    agents.sign_in("101", OPTIONS)
    for number in range(3):
        agents.queue("101", "E", {"n": number})
    assert [e["content"]["n"] for e in agents.by_agent["101"].events] == [1, 2]
    assert agents.dropped_events == 1
    assert agents.queue("102", "E", {}) is None  # not signed in: not kept


async def test_a_held_poll_is_released_by_an_event_or_by_the_end_of_its_session():
    clock, ended = Clock(), []
    agents = sessions(clock, ended)
    session, _ = agents.sign_in("101", OPTIONS)
    holds = HoldTimers(tick=0.01)
    try:
        polling = asyncio.ensure_future(hold(session, 5.0, holds))
        await asyncio.sleep(0)
        clock.now = IDLE * 10
        assert agents.sign_out_idle() == []  # a held poll counts as polling
        agents.queue("101", "E", {})
        assert await asyncio.wait_for(polling, 1) == WAKE_EVENT
        polling = asyncio.ensure_future(hold(session, 5.0, holds))
        await asyncio.sleep(0)
        agents.end(session)
        assert await asyncio.wait_for(polling, 1) == WAKE_SIGNED_OUT
        assert not agents.is_current(session) and ended == ["101"]
    finally:
        holds.close()
