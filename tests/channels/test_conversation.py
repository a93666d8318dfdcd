"""channels.conversation: the chat/SMS state machine and its notifications, with a recording publisher."""

from __future__ import annotations

import asyncio

import pytest
from convo_helpers import kinds, make_engine
from test_model import SEED_000_ALONE, SEED_000_CONFERENCE

from channels.errors import ContactCenterError
from channels.gws.envelope import GwsError, Status
from channels.model import CHAT, SMS

TOPIC = SMS.topic


async def inbound(conv, routing, *, text: str | None = "Hello World", queue: str = "default", media=SMS,
                  contact: str | None = None):
    return await conv.create_inbound(media, "PersonP", text=text, queue=queue, contact_id=contact)


async def chatting(conv, routing, rec, user: str = "alice", media=SMS):
    """An inbound interaction accepted by `user` (who is made Ready); the recorder is cleared."""
    await routing.set_ready(user, media.name)
    ix = await inbound(conv, routing, media=media)
    await conv.operate(user, media, ix.id, "Accept", {"nickname": user.capitalize()})
    rec.clear()
    return ix


async def expect_error(status: Status, coro) -> GwsError:
    with pytest.raises(ContactCenterError) as caught:
        await coro
    error = GwsError.of(caught.value)  # the engine's error as the HTTP edge answers it
    assert error.status is status, error.message
    return error


# --- offering ------------------------------------------------------------------------------------------


async def test_inbound_waits_for_a_ready_agent_then_is_offered() -> None:
    conv, routing, rec = make_engine()
    ix = await inbound(conv, routing)
    assert rec.of("alice") == []
    await routing.set_ready("alice", "sms")
    (offer,) = rec.of("alice", TOPIC)
    assert offer["notificationType"] == "StatusChange" and "referenceId" not in offer
    assert offer["messageType"] == "SMSsessionStateChangeMessage"
    assert offer["smssession"]["state"] == "Invited"
    assert offer["smssession"]["capabilities"] == ["Accept", "Reject"]
    assert offer["smssession"]["id"] == ix.id
    await conv.close()


async def test_an_offer_says_when_it_expires_and_previews_the_first_message() -> None:
    conv, routing, rec = make_engine()
    await routing.set_ready("alice", "sms")
    before = conv._now()
    ix = await inbound(conv, routing, text="My parcel is late")
    (offer,) = rec.of("alice", TOPIC)
    details = offer["smssession"]["offer"]
    assert details["timeout"] == routing.offer_timeout
    assert before + routing.offer_timeout * 1000 <= details["expiresAtMs"] <= conv._now() + routing.offer_timeout * 1000
    assert details["expiresAt"].endswith("+0000")
    assert details["preview"]["text"] == "My parcel is late" and details["preview"]["nickname"] == "PersonP"
    assert conv.resource("alice", SMS, ix.id)["offer"] == details  # the REST view says the same
    rec.clear()
    await conv.operate("alice", SMS, ix.id, "Accept", {"nickname": "Alice"})
    assert all("offer" not in n["smssession"] for n in rec.of("alice", TOPIC) if "smssession" in n)
    assert "offer" not in conv.resource("alice", SMS, ix.id)
    await conv.close()


async def test_accept_sequence_matches_seed_001() -> None:
    conv, routing, rec = make_engine()
    await routing.set_ready("alice", "sms")
    ix = await inbound(conv, routing)
    rec.clear()
    ref = await conv.operate("alice", SMS, ix.id, "Accept", {"nickname": "Marat"})
    status, participants, history = rec.of("alice", TOPIC)
    assert status["notificationType"] == "StatusChange" and status["referenceId"] == ref
    assert set(status) == {"messageType", "referenceId", "notificationType", "smssession"}
    assert set(status["smssession"]) == {"state", "capabilities", "id", "uri", "participants"}
    assert status["smssession"]["state"] == "Chatting" and status["smssession"]["participants"] == []
    assert status["smssession"]["uri"] == f"http://localhost:8080/api/v2/smssessions/{ix.id}"
    assert participants["notificationType"] == "ParticipantsUpdated" and "referenceId" not in participants
    people = participants["smssession"]["participants"]
    assert [(p["type"], p["nickname"]) for p in people] == [("Agent", "Marat"), ("Customer", "PersonP")]
    assert set(history) == {"messageType", "notificationType", "messages", "smssessionUri"}
    assert (history["messageType"], history["notificationType"]) == ("MessageLogUpdated", "NewMessages")
    assert [(m["index"], m["type"]) for m in history["messages"]] == [
        (1, "ParticipantJoined"), (2, "Text"), (3, "ParticipantJoined")]
    assert history["messages"][2]["from"] == people[0]
    assert set(history["messages"][1]) == {"index", "type", "from", "text", "visibility", "timestamp",
                                           "timestampSeconds"}
    await conv.close()


async def test_reject_goes_to_the_next_agent() -> None:
    conv, routing, rec = make_engine()
    await routing.set_ready("alice", "sms")
    await routing.set_ready("bob", "sms")
    ix = await inbound(conv, routing)
    assert kinds(rec.of("alice", TOPIC)) == ["StatusChange:Invited"] and rec.of("bob", TOPIC) == []
    rec.clear()
    ref = await conv.operate("alice", SMS, ix.id, "Reject", {})
    (rejected,) = rec.of("alice", TOPIC)
    assert rejected["referenceId"] == ref
    assert rejected["smssession"]["state"] == "Completed" and rejected["smssession"]["participants"] == []
    assert rejected["smssession"]["capabilities"] == []
    assert kinds(rec.of("bob", TOPIC)) == ["StatusChange:Invited"]
    await conv.close()


async def test_rejected_by_everyone_waits_until_someone_is_ready_again() -> None:
    conv, routing, rec = make_engine()
    await routing.set_ready("alice", "sms")
    ix = await inbound(conv, routing)
    await conv.operate("alice", SMS, ix.id, "Reject", {})
    rec.clear()
    await routing.set_ready("bob", "sms")
    assert kinds(rec.of("bob", TOPIC)) == ["StatusChange:Invited"]
    await conv.operate("bob", SMS, ix.id, "Reject", {})
    await routing.set_not_ready("alice", "sms")
    rec.clear()
    await routing.set_ready("alice", "sms")  # Ready again: her decline is forgotten
    assert kinds(rec.of("alice", TOPIC)) == ["StatusChange:Invited"]
    await conv.close()


async def test_unanswered_offer_times_out_to_the_next_agent() -> None:
    conv, routing, rec = make_engine(offer_timeout=0.05)
    await routing.set_ready("alice", "sms")
    await routing.set_ready("bob", "sms")
    ix = await inbound(conv, routing)

    async def offered_to_bob() -> None:
        while not rec.of("bob", TOPIC):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(offered_to_bob(), 2)
    assert kinds(rec.of("alice", TOPIC)) == ["StatusChange:Invited", "StatusChange:Revoked"]
    await expect_error(Status.INVALID_STATE, conv.operate("alice", SMS, ix.id, "Accept", {}))
    await conv.operate("bob", SMS, ix.id, "Accept", {})
    await conv.close()
    assert routing.timer_count() == 0


async def test_saved_last_agent_is_preferred_next_time() -> None:
    conv, routing, rec = make_engine(capacity=2)
    await routing.set_ready("alice", "sms")
    await routing.set_ready("bob", "sms")
    first = await inbound(conv, routing, contact="+15550100")
    await conv.operate("alice", SMS, first.id, "Accept", {"nickname": "A", "saveLAR": True})
    await conv.operate("alice", SMS, first.id, "Complete", {})
    rec.clear()
    await inbound(conv, routing, contact="+15550100")
    assert kinds(rec.of("alice", TOPIC)) == ["StatusChange:Invited"] and rec.of("bob", TOPIC) == []
    assert conv.last_agent == {"+15550100": "alice"}
    await conv.close()


# --- checks before anything changes ------------------------------------------------------------------


async def test_operation_outside_capabilities_is_refused_and_changes_nothing() -> None:
    conv, routing, rec = make_engine()
    await routing.set_ready("alice", "sms")
    ix = await inbound(conv, routing)
    rec.clear()
    error = await expect_error(Status.INVALID_STATE, conv.operate("alice", SMS, ix.id, "SendMessage", {"text": "x"}))
    assert error.message == "operation SendMessage is not valid in state Invited"
    assert rec.events == [] and len(ix.log) == 2 and ix.legs["alice"].state.value == "Invited"
    await conv.operate("alice", SMS, ix.id, "Accept", {})
    await expect_error(Status.INVALID_STATE, conv.operate("alice", SMS, ix.id, "Accept", {}))
    await conv.close()


async def test_unknown_ids_operations_and_other_peoples_interactions() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    error = await expect_error(Status.VALIDATION_ERROR, conv.operate("alice", SMS, ix.id, "Dance", {}))
    assert "Accept" in error.message and "RemoveParticipantFromConference" in error.message
    missing = await expect_error(Status.NOT_FOUND, conv.operate("alice", SMS, "0000000000000000", "Leave", {}))
    theirs = await expect_error(Status.NOT_FOUND, conv.operate("bob", SMS, ix.id, "Leave", {}))
    assert missing.message.replace("0000000000000000", ix.id) == theirs.message  # nothing revealed
    await expect_error(Status.NOT_FOUND, conv.operate("alice", CHAT, ix.id, "Leave", {}))  # wrong media
    await conv.close()


@pytest.mark.parametrize(("operation", "params", "status"), [
    ("SendMessage", {}, Status.MISSING_PARAMETER),
    ("SendMessage", {"text": 5}, Status.VALIDATION_ERROR),
    ("Invite", {}, Status.MISSING_PARAMETER),
    ("Invite", {"targetUri": ["x"]}, Status.VALIDATION_ERROR),
    ("Invite", {"targetUri": "http://localhost:8080/api/v2/users/nobody"}, Status.NOT_FOUND),
    ("Invite", {"targetPath": "/queues/nowhere"}, Status.NOT_FOUND),
    ("Invite", {"targetPath": "/contacts/x"}, Status.NOT_FOUND),  # a contact is a user under the user's id
    ("Invite", {"targetPath": "/places/x"}, Status.VALIDATION_ERROR),
    ("Invite", {"userUri": "http://localhost:8080/api/v2/contacts/nobody"}, Status.NOT_FOUND),
    ("Invite", {"userUri": "/users/bob", "targetUri": "/users/carol"}, Status.VALIDATION_ERROR),
    ("Invite", {"userUri": 5}, Status.VALIDATION_ERROR),
    ("Invite", {"targetPath": "/users/alice"}, Status.VALIDATION_ERROR),
    ("Transfer", {"queueName": "nowhere"}, Status.NOT_FOUND),
    ("Consult", {"targetPath": 3}, Status.VALIDATION_ERROR),
    ("Complete", {"queueName": "nowhere"}, Status.NOT_FOUND),
    ("Accept", {}, Status.INVALID_STATE),
    ("SetDisposition", {}, Status.MISSING_PARAMETER),
    ("SetDisposition", {"disposition": "Sale", "dispositionKey": ""}, Status.VALIDATION_ERROR),
    ("AttachUserData", {"userData": "no"}, Status.VALIDATION_ERROR),
    ("UpdateUserData", {}, Status.MISSING_PARAMETER),
    ("DeleteUserData", {"keys": [1]}, Status.VALIDATION_ERROR),
    ("DeleteUserData", {"keys": "k"}, Status.VALIDATION_ERROR),
    ("Accept", {"nickname": 4}, Status.INVALID_STATE),  # the state is checked before the parameters
    ("SendToAgents", {"text": "x"}, Status.INVALID_STATE),  # not a conference
    ("SendCustomNoticeToAgents", {"noticeText": "x"}, Status.INVALID_STATE),  # no other agent to notify
    ("SendUrl", {}, Status.MISSING_PARAMETER),
    ("SendUrl", {"url": 7}, Status.VALIDATION_ERROR),
    ("SendUrl", {"url": "javascript:alert(1)"}, Status.VALIDATION_ERROR),  # the customer's client opens it
    ("SendUrl", {"url": "/relative/path"}, Status.VALIDATION_ERROR),
    ("SendUrl", {"url": "https://"}, Status.VALIDATION_ERROR),
    ("SendUrl", {"url": "http://[::1"}, Status.VALIDATION_ERROR),
    ("SendUrl", {"url": "https://example.com/a b"}, Status.VALIDATION_ERROR),
    ("SendUrl", {"url": "https://example.com/" + "x" * 2100}, Status.VALIDATION_ERROR),
    ("SendCustomNotice", {}, Status.MISSING_PARAMETER),
    ("SendCustomNotice", {"noticeText": ["x"]}, Status.VALIDATION_ERROR),
    ("RemoveParticipantFromConference", {"targetPath": "/users/bob"}, Status.NOT_FOUND),
])
async def test_bad_parameters_change_nothing(operation: str, params: dict, status: Status) -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    before = (len(ix.log), dict(ix.user_data), {u: leg.state for u, leg in ix.legs.items()})
    await expect_error(status, conv.operate("alice", SMS, ix.id, operation, params))
    assert rec.events == [] and routing.waiting() == []
    assert (len(ix.log), dict(ix.user_data), {u: leg.state for u, leg in ix.legs.items()}) == before
    await conv.close()


# --- messages -----------------------------------------------------------------------------------------


async def test_messages_both_ways_with_gap_free_indexes() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await conv.customer_typing(SMS, ix.id, True)
    await conv.customer_message(SMS, ix.id, "where is my order?")
    ref = await conv.operate("alice", SMS, ix.id, "SendMessage", {"text": "Looking now"})
    await conv.operate("alice", SMS, ix.id, "SendStartTypingNotification", {})
    await conv.operate("alice", SMS, ix.id, "SendStopTypingNotification", {})
    events = rec.of("alice", TOPIC)
    assert [e["messages"][0]["type"] for e in events] == ["TypingStarted", "Text", "Text", "TypingStarted",
                                                          "TypingStopped"]
    assert [e["messages"][0]["index"] for e in events] == [4, 5, 6, 7, 8]
    assert events[2]["referenceId"] == ref and "referenceId" not in events[1]
    assert events[2]["smssessionUri"].endswith(ix.id)
    assert [m["index"] for m in ix.transcript()] == list(range(1, 9))
    await conv.close()


async def test_send_url_and_custom_notices_reach_who_they_are_for() -> None:
    """SendUrl: a PushUrl message with `url`, for everyone; SendCustomNotice: a CustomNotice with
    `noticeText`, for everyone; SendCustomNoticeToAgents: the same for the agents of a consultation or
    conference only (GWS chat and SMS pages)."""
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    rec.clear()
    ref = await conv.operate("alice", SMS, ix.id, "SendUrl", {"url": "https://shop.example.com/orders/17?x=1"})
    [pushed] = rec.of("alice", TOPIC)
    assert pushed["referenceId"] == ref and pushed["notificationType"] == "NewMessages"
    [message] = pushed["messages"]
    assert (message["type"], message["url"], message["visibility"]) == (
        "PushUrl", "https://shop.example.com/orders/17?x=1", "All")
    assert "text" not in message and message["from"]["type"] == "Agent"
    await conv.operate("alice", SMS, ix.id, "SendCustomNotice", {"noticeText": "Your refund is on its way"})
    notice = rec.of("alice", TOPIC)[-1]["messages"][0]
    assert (notice["type"], notice["noticeText"], notice["visibility"]) == (
        "CustomNotice", "Your refund is on its way", "All")
    assert "text" not in notice

    await routing.set_ready("bob", "sms")
    await conv.operate("alice", SMS, ix.id, "Consult", {"targetPath": "/users/bob"})
    await conv.operate("bob", SMS, ix.id, "Accept", {})
    # A consultant writes to the agents only: no URL or notice for the customer.
    await expect_error(Status.INVALID_STATE, conv.operate("bob", SMS, ix.id, "SendUrl", {"url": "https://x.example"}))
    await expect_error(Status.INVALID_STATE, conv.operate("bob", SMS, ix.id, "SendCustomNotice", {"noticeText": "x"}))
    rec.clear()
    ref = await conv.operate("bob", SMS, ix.id, "SendCustomNoticeToAgents", {"noticeText": "Checked: eligible"})
    for agent in ("alice", "bob"):
        [event] = rec.of(agent, TOPIC)
        [message] = event["messages"]
        assert (message["type"], message["noticeText"], message["visibility"]) == (
            "CustomNotice", "Checked: eligible", "Agents")
        assert (event.get("referenceId") == ref) is (agent == "bob")  # the caller's own echo carries it

    customer_saw = [(m["type"], m.get("url") or m.get("noticeText") or m.get("text")) for m in ix.transcript()]
    assert customer_saw[-2:] == [("PushUrl", "https://shop.example.com/orders/17?x=1"),
                                 ("CustomNotice", "Your refund is on its way")]
    await conv.close()


async def test_customer_cannot_write_to_an_ended_interaction() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await conv.operate("alice", SMS, ix.id, "Complete", {})
    assert ix.ended
    await expect_error(Status.INVALID_STATE, conv.customer_message(SMS, ix.id, "hello?"))
    await expect_error(Status.NOT_FOUND, conv.customer_message(CHAT, ix.id, "wrong media"))
    assert conv.transcript(SMS, ix.id)[-1]["type"] == "ParticipantLeft"
    await conv.close()


# --- conference: Invite --------------------------------------------------------------------------------


async def test_invite_matches_seed_000() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await routing.set_ready("bob", "sms")
    rec.clear()
    ref = await conv.operate("alice", SMS, ix.id, "Invite", {"targetUri": "http://localhost:8080/api/v2/users/bob"})
    assert rec.of("alice") == []  # nothing until bob answers
    assert kinds(rec.of("bob", TOPIC)) == ["StatusChange:Invited"]
    rec.clear()
    bob_ref = await conv.operate("bob", SMS, ix.id, "Accept", {"nickname": "BFriend"})
    assert bob_ref != ref
    updated, new_messages = rec.of("alice", TOPIC)
    assert updated["notificationType"] == "ParticipantsUpdated" and "referenceId" not in updated
    assert updated["smssession"]["capabilities"] == SEED_000_CONFERENCE
    assert [p["nickname"] for p in updated["smssession"]["participants"]] == ["Alice", "BFriend", "PersonP"]
    (joined,) = new_messages["messages"]
    assert (joined["type"], joined["visibility"], joined["from"]["nickname"]) == ("ParticipantJoined", "All", "BFriend")
    assert kinds(rec.of("bob", TOPIC)) == ["StatusChange:Chatting", "ParticipantsUpdated", "NewMessages"]
    assert rec.of("bob", TOPIC)[0]["referenceId"] == bob_ref
    assert rec.of("bob", TOPIC)[1]["smssession"]["capabilities"] == SEED_000_CONFERENCE
    await conv.close()


async def test_invite_to_an_unreachable_agent_gives_the_seed_000_error() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    ref = await conv.operate("alice", SMS, ix.id, "Invite", {"targetPath": "/users/bob"})  # bob is not Ready
    (error,) = rec.of("alice", TOPIC)
    assert set(error) == {"notificationType", "messageType", "errorMessage", "referenceId", "smssession"}
    assert (error["notificationType"], error["referenceId"]) == ("Error", ref)
    assert "bob" in error["errorMessage"]
    assert error["smssession"]["capabilities"] == SEED_000_ALONE and error["smssession"]["state"] == "Chatting"
    await conv.close()


async def test_invite_rejected_gives_an_error_to_the_inviter() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await routing.set_ready("bob", "sms")
    ref = await conv.operate("alice", SMS, ix.id, "Invite", {"targetPath": "/api/v2/users/bob"})
    rec.clear()
    await conv.operate("bob", SMS, ix.id, "Reject", {})
    (error,) = rec.of("alice", TOPIC)
    assert error["notificationType"] == "Error" and error["referenceId"] == ref and "rejected" in error["errorMessage"]
    assert ix.legs["alice"].state.value == "Chatting"
    await conv.close()


async def test_invite_through_a_queue_picks_a_ready_agent() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await conv.operate("alice", SMS, ix.id, "Invite", {"targetUri": "http://localhost:8080/api/v2/queues/sales"})
    assert routing.waiting("sales") != []
    await routing.set_ready("carol", "sms")
    assert kinds(rec.of("carol", TOPIC)) == ["StatusChange:Invited"]
    await conv.operate("carol", SMS, ix.id, "Accept", {})
    assert [leg.state.value for leg in ix.chatting()] == ["Chatting", "Chatting"]
    await conv.close()


async def test_leave_in_a_conference_completes_and_others_see_participant_left() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await routing.set_ready("bob", "sms")
    await conv.operate("alice", SMS, ix.id, "Invite", {"targetPath": "/users/bob"})
    await conv.operate("bob", SMS, ix.id, "Accept", {"nickname": "Bob"})
    rec.clear()
    ref = await conv.operate("bob", SMS, ix.id, "Leave", {})
    (done,) = rec.of("bob", TOPIC)
    assert done["smssession"]["state"] == "Completed" and done["referenceId"] == ref
    updated, left = rec.of("alice", TOPIC)
    assert updated["notificationType"] == "ParticipantsUpdated"
    assert updated["smssession"]["capabilities"] == SEED_000_ALONE
    assert left["messages"][0]["type"] == "ParticipantLeft" and left["messages"][0]["from"]["nickname"] == "Bob"
    await conv.close()


async def test_remove_participant_from_conference() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await routing.set_ready("bob", "sms")
    await conv.operate("alice", SMS, ix.id, "Invite", {"targetPath": "/users/bob"})
    await conv.operate("bob", SMS, ix.id, "Accept", {})
    rec.clear()
    ref = await conv.operate("alice", SMS, ix.id, "RemoveParticipantFromConference", {"targetPath": "/users/bob"})
    notice, updated, left = rec.of("alice", TOPIC)
    assert notice["referenceId"] == ref
    assert notice["messages"][0]["text"] == "REMOVE_PARTICIPANT_FROM_CONFERENCE" + "bob"
    assert notice["messages"][0]["visibility"] == "Agents" and notice["messages"][0]["type"] == "Notice"
    assert updated["notificationType"] == "ParticipantsUpdated" and left["messages"][0]["type"] == "ParticipantLeft"
    assert kinds(rec.of("bob", TOPIC))[-1] == "StatusChange:Completed"
    assert "REMOVE_PARTICIPANT" not in str(ix.transcript())
    await conv.close()


# --- consult ---------------------------------------------------------------------------------------------


async def test_consult_is_agents_only_and_the_customer_is_unaware() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await routing.set_ready("bob", "sms")
    await conv.operate("alice", SMS, ix.id, "Consult", {"targetPath": "/users/bob"})
    await conv.operate("bob", SMS, ix.id, "Accept", {"nickname": "Expert"})
    bob_view = rec.of("bob", TOPIC)[1]["smssession"]
    assert "SendToAgents" in bob_view["capabilities"] and "SendMessage" not in bob_view["capabilities"]
    joined = rec.of("alice", TOPIC)[-1]["messages"][0]
    assert (joined["type"], joined["visibility"]) == ("ParticipantJoined", "Agents")
    await conv.operate("alice", SMS, ix.id, "SendToAgents", {"text": "can I refund this?"})
    await conv.operate("bob", SMS, ix.id, "SendStartTypingToAgentsNotification", {})
    await conv.operate("bob", SMS, ix.id, "SendToAgents", {"text": "yes"})
    await expect_error(Status.INVALID_STATE, conv.operate("bob", SMS, ix.id, "SendMessage", {"text": "hi customer"}))
    await conv.operate("alice", SMS, ix.id, "SendMessage", {"text": "Refund approved"})
    await conv.operate("bob", SMS, ix.id, "Leave", {})
    assert ix.legs["bob"].state.value == "Completed"
    assert ix.legs["alice"].state.value == "Chatting"  # a consult is not a conference: alice keeps chatting
    texts = [(m["type"], m.get("text")) for m in ix.transcript()]
    assert texts == [("ParticipantJoined", None), ("Text", "Hello World"), ("ParticipantJoined", None),
                     ("Text", "Refund approved")]
    agents_saw = [m["messages"][0].get("text") for m in rec.of("alice", TOPIC) if "messages" in m]
    assert "yes" in agents_saw
    await conv.close()


async def test_invite_promotes_a_consultant_into_the_conference() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await routing.set_ready("bob", "sms")
    await conv.operate("alice", SMS, ix.id, "Consult", {"targetPath": "/users/bob"})
    await conv.operate("bob", SMS, ix.id, "Accept", {"nickname": "Bob"})
    rec.clear()
    await conv.operate("alice", SMS, ix.id, "Invite", {"targetPath": "/users/bob"})
    assert rec.of("bob", TOPIC)[0]["smssession"]["capabilities"] == SEED_000_CONFERENCE
    assert ix.transcript()[-1]["type"] == "ParticipantJoined" and ix.transcript()[-1]["from"]["nickname"] == "Bob"
    await expect_error(Status.IN_USE, conv.operate("alice", SMS, ix.id, "Invite", {"targetPath": "/users/bob"}))
    await conv.close()


# --- transfer, leave, complete ---------------------------------------------------------------------------


async def test_transfer_to_a_user_completes_the_transferrer_when_accepted() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await routing.set_ready("bob", "sms")
    ref = await conv.operate("alice", SMS, ix.id, "Transfer", {"targetPath": "/users/bob"})
    assert ix.legs["alice"].state.value == "Chatting"
    rec.clear()
    await conv.operate("bob", SMS, ix.id, "Accept", {})
    (done,) = [e for e in rec.of("alice", TOPIC) if e["notificationType"] == "StatusChange"]
    assert done["smssession"]["state"] == "Completed" and done["referenceId"] == ref
    assert [leg.user_id for leg in ix.chatting()] == ["bob"]
    assert rec.of("bob", TOPIC)[-1]["messages"][0]["type"] == "ParticipantLeft"
    assert not ix.ended
    await conv.close()


async def test_transfer_to_a_queue_goes_to_another_agent() -> None:
    conv, routing, rec = make_engine(capacity=2)
    ix = await chatting(conv, routing, rec)
    await routing.set_ready("bob", "sms")
    rec.clear()
    ref = await conv.operate("alice", SMS, ix.id, "Transfer", {"queueName": "sales", "text": "Passing you on"})
    assert kinds(rec.of("alice", TOPIC)) == ["NewMessages", "StatusChange:Completed"]
    assert rec.of("alice", TOPIC)[1]["referenceId"] == ref
    assert kinds(rec.of("bob", TOPIC)) == ["StatusChange:Invited"]  # not back to alice, who has room
    await conv.operate("bob", SMS, ix.id, "Accept", {})
    assert not ix.ended
    await conv.close()


async def test_leave_alone_is_left_chat_then_complete_ends_it() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    ref = await conv.operate("alice", SMS, ix.id, "Leave", {})
    (left,) = rec.of("alice", TOPIC)
    assert left["referenceId"] == ref and left["smssession"]["state"] == "LeftChat"
    assert left["smssession"]["capabilities"] == ["Transfer", "Complete", "Leave", "InFocus"]
    await conv.operate("alice", SMS, ix.id, "SetInFocus", {})  # InFocus permits it
    await expect_error(Status.INVALID_STATE, conv.operate("alice", SMS, ix.id, "SendMessage", {"text": "x"}))
    assert not ix.ended
    await conv.operate("alice", SMS, ix.id, "Complete", {})
    assert ix.ended and ix.legs["alice"].state.value == "Completed"
    await conv.close()


async def test_complete_with_a_queue_requeues() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await conv.operate("alice", SMS, ix.id, "Complete", {"queueName": "sales"})
    assert not ix.ended and [r.interaction_id for r in routing.waiting("sales")] == [ix.id]
    await conv.close()


async def test_customer_leaving_moves_agents_to_left_chat() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await conv.customer_left(SMS, ix.id)
    left, status = rec.of("alice", TOPIC)
    assert left["messages"][0]["type"] == "ParticipantLeft" and left["messages"][0]["from"]["type"] == "Customer"
    assert status["smssession"]["state"] == "LeftChat"
    assert status["smssession"]["participants"] == []  # the customer is gone and alice left the session
    await expect_error(Status.INVALID_STATE, conv.operate("alice", SMS, ix.id, "Transfer", {"queueName": "sales"}))
    await conv.operate("alice", SMS, ix.id, "Complete", {})
    await conv.close()


async def test_ending_withdraws_pending_offers() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    await routing.set_ready("bob", "sms")
    await conv.operate("alice", SMS, ix.id, "Invite", {"targetPath": "/users/bob"})
    rec.clear()
    await conv.operate("alice", SMS, ix.id, "Complete", {})
    assert kinds(rec.of("bob", TOPIC)) == ["StatusChange:Revoked"]
    assert routing.timer_count() == 0
    await conv.close()


# --- user data ------------------------------------------------------------------------------------------


async def test_user_data_operations_publish_properties_updated() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec)
    ref = await conv.operate("alice", SMS, ix.id, "AttachUserData", {"userData": {"a": 1, "b": {"c": 2}}})
    await conv.operate("alice", SMS, ix.id, "UpdateUserData", {"userData": {"a": 3}})
    await conv.operate("alice", SMS, ix.id, "SetDisposition", {"disposition": "Sale"})
    await conv.operate("alice", SMS, ix.id, "SetDisposition", {"disposition": "x", "dispositionKey": "Other"})
    await conv.operate("alice", SMS, ix.id, "DeleteUserData", {"keys": ["b", "missing"]})
    events = rec.of("alice", TOPIC)
    assert kinds(events) == ["PropertiesUpdated"] * 5
    assert events[0]["referenceId"] == ref and events[0]["smssession"]["userData"] == {"a": 1, "b": {"c": 2}}
    assert events[-1]["smssession"]["userData"] == {"a": 3, "DispositionCode": "Sale", "Other": "x"}
    assert conv.resource("alice", SMS, ix.id)["userData"] == {"a": 3, "DispositionCode": "Sale", "Other": "x"}
    await conv.close()


async def test_chat_uses_chat_names() -> None:
    conv, routing, rec = make_engine()
    ix = await chatting(conv, routing, rec, media=CHAT)
    await conv.operate("alice", CHAT, ix.id, "SendMessage", {"text": "hi"})
    (event,) = rec.of("alice", CHAT.topic)
    assert event["chatUri"] == f"http://localhost:8080/api/v2/chats/{ix.id}"
    assert [v["id"] for v in conv.active("alice", CHAT)] == [ix.id] and conv.active("alice", SMS) == []
    await conv.close()


async def test_routing_never_scans_every_interaction() -> None:
    """Choosing an agent looks only at each agent's own interactions: with many finished ones around,
    routing must not walk the whole table (1,000 agents stalled the benchmark when it did)."""
    conv, routing, rec = make_engine()
    for _ in range(30):  # finished history: accepted, then completed
        ix = await chatting(conv, routing, rec)
        await conv.operate("alice", SMS, ix.id, "Complete", {})

    class NoScan(dict):
        def values(self):
            raise AssertionError("routing scanned every interaction")

        def items(self):
            raise AssertionError("routing scanned every interaction")

    conv.repository.interactions = NoScan(conv.repository.interactions)
    await routing.set_ready("bob", "sms")
    ix = await inbound(conv, routing)
    offered = [n for n in rec.of("alice", TOPIC) + rec.of("bob", TOPIC) if n["smssession"]["id"] == ix.id]
    assert [n["smssession"]["state"] for n in offered] == ["Invited"]
    assert [v["id"] for v in conv.active("alice", SMS) + conv.active("bob", SMS)] == [ix.id]
    await conv.close()
