"""channels.model: capabilities per state, message items, views and the customer's transcript."""

from __future__ import annotations

import re

from channels.model import (
    CHAT,
    CHATTING_CAPS,
    SMS,
    Interaction,
    Leg,
    LegState,
    MessageType,
    Participant,
    Role,
    Visibility,
    capabilities,
    format_timestamp,
    new_interaction_id,
    new_participant_id,
    permits,
)

# Seed 000, "Successful", first notification: the capabilities of a conference member, in order, with the focus
# capability named "InFocus" as seed 001 names it (seed 000 prints "SetInFocus"; model.CHATTING_CAPS says why).
SEED_000_CONFERENCE = ["Transfer", "Leave", "Invite", "Consult", "InFocus", "SetDisposition", "AttachUserData",
                       "DeleteUserData", "UpdateUserData", "SendToAgents", "SendStartTypingToAgentsNotification",
                       "SendStopTypingToAgentsNotification", "Complete", "SendMessage", "SendStartTypingNotification",
                       "SendStopTypingNotification"]
# Seed 000, "Failed": the capabilities of the lone agent (InFocus, as above).
SEED_000_ALONE = ["Transfer", "Leave", "Invite", "Consult", "InFocus", "SetDisposition", "AttachUserData",
                  "DeleteUserData", "UpdateUserData", "Complete", "SendMessage", "SendStartTypingNotification",
                  "SendStopTypingNotification"]


def test_capabilities_of_each_state() -> None:
    assert capabilities(LegState.INVITED, Role.OWNER, 0) == ["Accept", "Reject"]
    assert capabilities(LegState.CHATTING, Role.OWNER, 1) == SEED_000_ALONE
    assert capabilities(LegState.CHATTING, Role.CONFERENCE, 2) == SEED_000_CONFERENCE
    assert capabilities(LegState.LEFT_CHAT, Role.OWNER, 0) == ["Transfer", "Complete", "Leave", "InFocus"]
    assert capabilities(LegState.COMPLETED, Role.OWNER, 1) == []
    assert capabilities(LegState.REVOKED, Role.OWNER, 1) == []
    assert list(CHATTING_CAPS) == SEED_000_ALONE


def test_consultant_talks_to_agents_only() -> None:
    caps = capabilities(LegState.CHATTING, Role.CONSULT, 2)
    assert "Leave" in caps and "SendToAgents" in caps
    assert not {"SendMessage", "Transfer", "Complete", "Invite", "Consult", "SendStartTypingNotification"} & set(caps)


# Seed 001: the capabilities of the agent right after Accept (StatusChange and ParticipantsUpdated).
SEED_001_ACCEPTED = ["Transfer", "Complete", "Leave", "InFocus", "SendMessage", "SendStartTypingNotification",
                     "SendStopTypingNotification"]


def test_an_accepted_agent_has_every_capability_seed_001_names_and_no_set_in_focus() -> None:
    caps = capabilities(LegState.CHATTING, Role.OWNER, 1)
    assert set(SEED_001_ACCEPTED) <= set(caps)
    assert "SetInFocus" not in caps  # one name for one capability: InFocus
    for state, role, agents in ((LegState.CHATTING, Role.CONFERENCE, 2), (LegState.CHATTING, Role.CONSULT, 2),
                                (LegState.LEFT_CHAT, Role.OWNER, 0)):
        assert "InFocus" in capabilities(state, role, agents) and "SetInFocus" not in capabilities(state, role, agents)


def test_in_focus_permits_set_in_focus() -> None:
    assert permits(capabilities(LegState.CHATTING, Role.OWNER, 1), "SetInFocus")
    assert permits(capabilities(LegState.LEFT_CHAT, Role.OWNER, 0), "SetInFocus")
    assert not permits(capabilities(LegState.LEFT_CHAT, Role.OWNER, 0), "SetDisposition")
    assert not permits([], "SetInFocus")


def test_media_names() -> None:
    assert (CHAT.resource_key, CHAT.collection, CHAT.topic, CHAT.message_type, CHAT.uri_key) == (
        "chat", "chats", "/v2/me/chats", "ChatStateChangeMessage", "chatUri")
    assert (SMS.resource_key, SMS.collection, SMS.topic, SMS.message_type, SMS.uri_key) == (
        "smssession", "smssessions", "/v2/me/smssessions", "SMSsessionStateChangeMessage", "smssessionUri")
    assert SMS.uri("http://h:8080/", "0000Na9B26EF006E") == "http://h:8080/api/v2/smssessions/0000Na9B26EF006E"


def test_ids_and_timestamps() -> None:
    assert re.fullmatch(r"0000[0-9A-F]{12}", new_interaction_id())
    assert re.fullmatch(r"[0-9A-F]{16}", new_participant_id())
    assert format_timestamp(1389039246007) == "2014-01-06T20:14:06.007+0000"
    assert format_timestamp(1389039246000) == "2014-01-06T20:14:06.000+0000"


def _interaction() -> tuple[Interaction, Participant, Participant]:
    customer = Participant("FirstL", "Customer", "009052CB056C00E5")
    agent = Participant("TestName", "Agent", "009052CB110900F5")
    ix = Interaction("0000Na9B26EF006M", SMS, customer, "default", "FirstL", 0)
    return ix, customer, agent


def test_message_items_are_gap_free_and_shaped_like_seed_001() -> None:
    ix, customer, agent = _interaction()
    first = ix.append(MessageType.PARTICIPANT_JOINED, customer, Visibility.ALL, 1389039246007)
    second = ix.append(MessageType.TEXT, customer, Visibility.ALL, 1389039246008, text="Hello World")
    third = ix.append(MessageType.CUSTOM_NOTICE, agent, Visibility.AGENTS, 1389039246009, text="note")
    assert [first.index, second.index, third.index] == [1, 2, 3]
    assert first.as_dict() == {"index": 1, "type": "ParticipantJoined",
                               "from": {"nickname": "FirstL", "type": "Customer", "participantId": "009052CB056C00E5"},
                               "visibility": "All", "timestamp": "2014-01-06T20:14:06.007+0000",
                               "timestampSeconds": 1389039246007}
    assert second.as_dict()["text"] == "Hello World"
    assert third.as_dict()["noticeText"] == "note"


def test_transcript_hides_agents_only_messages() -> None:
    ix, customer, agent = _interaction()
    ix.append(MessageType.TEXT, customer, Visibility.ALL, 1, text="hi")
    ix.append(MessageType.TEXT, agent, Visibility.AGENTS, 2, text="secret")
    ix.append(MessageType.TEXT, agent, Visibility.ALL, 3, text="hello")
    assert [m["text"] for m in ix.transcript()] == ["hi", "hello"]
    assert [m["text"] for m in ix.messages_for_agents()] == ["hi", "secret", "hello"]
    assert [m["index"] for m in ix.messages_for_agents(upto=2)] == [1, 2]


def test_view_per_leg() -> None:
    ix, customer, agent = _interaction()
    leg = Leg("alice", LegState.CHATTING, Role.OWNER, agent)
    ix.legs["alice"] = leg
    ix.legs["bob"] = Leg("bob", LegState.COMPLETED, Role.OWNER)
    view = ix.view(leg, "http://localhost:8080")
    assert view == {"id": "0000Na9B26EF006M", "state": "Chatting", "capabilities": SEED_000_ALONE,
                    "participants": [agent.as_dict(), customer.as_dict()],
                    "uri": "http://localhost:8080/api/v2/smssessions/0000Na9B26EF006M"}
    assert ix.view(ix.legs["bob"], "http://x")["participants"] == []
    ix.user_data["k"] = "v"
    assert ix.view(leg, "http://x")["userData"] == {"k": "v"}
    assert ix.view(leg, "http://x", participants=[])["participants"] == []
