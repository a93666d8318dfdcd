"""End to end: agents on real CometD sessions, REST operations on /api/v2/me/{smssessions,chats}, customers
through the media gateway API. The notification sequences are those of seeds 000 and 001."""

from __future__ import annotations

from gws_stack import BASE_URL, make_stack
from test_model import SEED_000_ALONE, SEED_000_CONFERENCE

SMS_TOPIC, CHAT_TOPIC = "/v2/me/smssessions", "/v2/me/chats"


def types(events: list[dict]) -> list[str]:
    return [e["notificationType"] for e in events]


async def test_inbound_sms_offered_and_accepted_like_seed_001(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    alice = await stack.desk("alice")
    await stack.routing.set_ready("alice", "sms")
    (channels,) = await alice.next(1, "/v2/me/channels")
    assert channels["channels"][0]["channel"] == "sms" and channels["channels"][0]["userState"]["state"] == "Ready"

    sms_id = await stack.inbound()
    (offer,) = await alice.next(1, SMS_TOPIC)
    assert offer["notificationType"] == "StatusChange" and offer["smssession"]["state"] == "Invited"
    assert offer["smssession"]["capabilities"] == ["Accept", "Reject"]

    reply = await stack.operate("alice", "smssessions", sms_id, "Accept", nickname="Marat")
    assert set(reply) == {"statusCode", "referenceId"} and reply["statusCode"] == 0
    status, participants, history = await alice.next(3, SMS_TOPIC)
    assert set(status) == {"messageType", "referenceId", "notificationType", "smssession"}
    assert (status["messageType"], status["notificationType"], status["referenceId"]) == (
        "SMSsessionStateChangeMessage", "StatusChange", reply["referenceId"])
    assert set(status["smssession"]) == {"state", "capabilities", "id", "uri", "participants"}
    assert status["smssession"]["participants"] == [] and status["smssession"]["state"] == "Chatting"
    assert status["smssession"]["uri"] == f"{BASE_URL}/api/v2/smssessions/{sms_id}"
    assert set(participants) == {"messageType", "notificationType", "smssession"}
    assert participants["notificationType"] == "ParticipantsUpdated"
    people = participants["smssession"]["participants"]
    assert [(p["type"], p["nickname"]) for p in people] == [("Agent", "Marat"), ("Customer", "PersonP")]
    assert all(set(p) == {"type", "nickname", "participantId"} for p in people)
    assert set(history) == {"messageType", "notificationType", "messages", "smssessionUri"}
    assert history["smssessionUri"] == status["smssession"]["uri"]
    assert [(m["index"], m["type"]) for m in history["messages"]] == [
        (1, "ParticipantJoined"), (2, "Text"), (3, "ParticipantJoined")]
    assert history["messages"][1]["text"] == "Hello World"
    assert history["messages"][2]["from"] == people[0]
    for message in history["messages"]:
        assert message["visibility"] == "All" and isinstance(message["timestampSeconds"], int)
        assert message["timestamp"].endswith("+0000") and "." in message["timestamp"]
    await alice.quiet()


async def _accepted(stack, desk, medium: str = "sms") -> str:
    """An inbound interaction offered to and accepted by `desk`'s agent; their queue is drained."""
    collection, topic = ("smssessions", SMS_TOPIC) if medium == "sms" else ("chats", CHAT_TOPIC)
    await stack.routing.set_ready(desk.user, medium)
    interaction_id = await stack.inbound(medium)
    await desk.next(1, topic)
    reply = await stack.operate(desk.user, collection, interaction_id, "Accept", nickname=desk.user.capitalize())
    assert reply["statusCode"] == 0, reply
    await desk.next(3, topic)
    await desk.drain()
    return interaction_id


async def test_invite_like_seed_000_success_and_failure(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    alice, bob = await stack.desk("alice"), await stack.desk("bob")
    sms_id = await _accepted(stack, alice)

    # Failure: bob is not Ready, so he cannot be reached.
    failed = await stack.operate("alice", "smssessions", sms_id, "Invite", targetUri=f"{BASE_URL}/api/v2/users/bob")
    assert set(failed) == {"statusCode", "referenceId"}
    (error,) = await alice.next(1, SMS_TOPIC)
    assert set(error) == {"notificationType", "messageType", "errorMessage", "referenceId", "smssession"}
    assert (error["notificationType"], error["referenceId"]) == ("Error", failed["referenceId"])
    assert error["smssession"]["capabilities"] == SEED_000_ALONE
    await bob.quiet()

    # Success.
    await stack.routing.set_ready("bob", "sms")
    invited = await stack.operate("alice", "smssessions", sms_id, "Invite", targetPath="/users/bob")
    assert invited["statusCode"] == 0 and invited["referenceId"] > failed["referenceId"]
    (offer,) = await bob.next(1, SMS_TOPIC)
    assert offer["smssession"]["state"] == "Invited"
    accepted = await stack.operate("bob", "smssessions", sms_id, "Accept", nickname="BFriend")
    first, second = await alice.next(2, SMS_TOPIC)
    assert set(first) == {"notificationType", "messageType", "smssession"}
    assert first["notificationType"] == "ParticipantsUpdated"
    assert first["smssession"]["capabilities"] == SEED_000_CONFERENCE
    assert [p["nickname"] for p in first["smssession"]["participants"]] == ["Alice", "BFriend", "PersonP"]
    assert set(second) == {"messages", "notificationType", "messageType", "smssessionUri"}
    (joined,) = second["messages"]
    assert (joined["type"], joined["visibility"], joined["from"]["nickname"]) == ("ParticipantJoined", "All", "BFriend")
    bob_events = await bob.next(3, SMS_TOPIC)
    assert types(bob_events) == ["StatusChange", "ParticipantsUpdated", "NewMessages"]
    assert bob_events[0]["referenceId"] == accepted["referenceId"]

    # Agents-only traffic in the conference.
    await stack.operate("bob", "smssessions", sms_id, "SendToAgents", text="I have it from here")
    (note,) = await alice.next(1, SMS_TOPIC)
    assert note["messages"][0]["visibility"] == "Agents"
    _, transcript = await stack.gateway("GET", f"sms/interactions/{sms_id}/transcript")
    assert "I have it from here" not in str(transcript["messages"])


async def test_a_whole_chat_conversation(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client, capacity=2)
    alice, bob, carol = await stack.desk("alice"), await stack.desk("bob"), await stack.desk("carol")
    chat_id = await _accepted(stack, alice, "chat")

    # Customer -> agent, agent -> customer, typing both ways.
    await stack.gateway("POST", f"chat/interactions/{chat_id}/typing", {"state": "started"})
    await stack.gateway("POST", f"chat/interactions/{chat_id}/messages", {"text": "My order is late"})
    typing, text = await alice.next(2, CHAT_TOPIC)
    assert typing["messages"][0]["type"] == "TypingStarted" and text["messages"][0]["text"] == "My order is late"
    assert text["chatUri"] == f"{BASE_URL}/api/v2/chats/{chat_id}"
    await stack.operate("alice", "chats", chat_id, "SendStartTypingNotification")
    sent = await stack.operate("alice", "chats", chat_id, "SendMessage", text="Let me check")
    await stack.operate("alice", "chats", chat_id, "SendStopTypingNotification")
    events = await alice.next(3, CHAT_TOPIC)
    assert [e["messages"][0]["type"] for e in events] == ["TypingStarted", "Text", "TypingStopped"]
    assert events[1]["referenceId"] == sent["referenceId"]

    # Consult bob: agents only, the customer never sees it.
    await stack.routing.set_ready("bob", "chat")
    await stack.operate("alice", "chats", chat_id, "Consult", targetPath="/users/bob")
    await bob.next(1, CHAT_TOPIC)
    await stack.operate("bob", "chats", chat_id, "Accept", nickname="Expert")
    bob_join = await bob.next(3, CHAT_TOPIC)
    assert "SendMessage" not in bob_join[1]["chat"]["capabilities"]
    updated, joined = await alice.next(2, CHAT_TOPIC)
    assert updated["chat"]["capabilities"] == SEED_000_CONFERENCE
    assert joined["messages"][0]["visibility"] == "Agents"
    await stack.operate("alice", "chats", chat_id, "SendToAgents", text="Refund or resend?")
    await stack.operate("bob", "chats", chat_id, "SendToAgents", text="Resend, it is cheaper")
    refused = await stack.operate("bob", "chats", chat_id, "SendMessage", text="hi")
    assert refused["statusCode"] == 2
    await stack.operate("bob", "chats", chat_id, "Leave")
    _, transcript = await stack.gateway("GET", f"chat/interactions/{chat_id}/transcript")
    seen = [(m["type"], m.get("text"), m["from"]["nickname"]) for m in transcript["messages"]]
    assert seen == [("ParticipantJoined", None, "PersonP"), ("Text", "Hello World", "PersonP"),
                    ("ParticipantJoined", None, "Alice"), ("TypingStarted", None, "PersonP"),
                    ("Text", "My order is late", "PersonP"), ("TypingStarted", None, "Alice"),
                    ("Text", "Let me check", "Alice"), ("TypingStopped", None, "Alice")]
    assert [m["index"] for m in transcript["messages"]] == [1, 2, 3, 4, 5, 6, 7, 8]

    # Transfer to carol (a user): alice is done once carol accepts.
    await stack.routing.set_ready("carol", "chat")
    await alice.drain()
    transfer = await stack.operate("alice", "chats", chat_id, "Transfer", targetPath="/users/carol")
    await carol.next(1, CHAT_TOPIC)
    await stack.operate("carol", "chats", chat_id, "Accept", nickname="Carol")
    await carol.next(3, CHAT_TOPIC)
    # She sees carol join (ParticipantsUpdated, NewMessages), then her own completion.
    done = [e for e in await alice.next(3, CHAT_TOPIC) if e["notificationType"] == "StatusChange"]
    assert done and done[0]["chat"]["state"] == "Completed" and done[0]["referenceId"] == transfer["referenceId"]

    # Carol transfers to the sales queue: bob (Ready, room) gets it, not carol (alice went NotReady).
    await stack.routing.set_not_ready("alice", "chat", reason="Break")
    await carol.drain()
    await bob.drain()
    await stack.operate("carol", "chats", chat_id, "Transfer", queueName="sales")
    (carol_done,) = await carol.next(1, CHAT_TOPIC)
    assert carol_done["chat"]["state"] == "Completed"
    (offer,) = await bob.next(1, CHAT_TOPIC)
    assert offer["chat"]["state"] == "Invited"
    await stack.operate("bob", "chats", chat_id, "Accept", nickname="Bob")
    await bob.next(3, CHAT_TOPIC)

    # Bob leaves (alone: LeftChat), sets focus, completes: the chat ends for the customer.
    await stack.operate("bob", "chats", chat_id, "SetDisposition", disposition="Resent")
    left = await stack.operate("bob", "chats", chat_id, "Leave")
    events = await bob.next(2, CHAT_TOPIC)
    assert events[-1]["chat"]["state"] == "LeftChat" and events[-1]["referenceId"] == left["referenceId"]
    assert events[-1]["chat"]["userData"] == {"DispositionCode": "Resent"}
    assert (await stack.operate("bob", "chats", chat_id, "SetInFocus"))["statusCode"] == 0
    assert (await stack.operate("bob", "chats", chat_id, "Complete"))["statusCode"] == 0
    _, ended = await stack.gateway("POST", f"chat/interactions/{chat_id}/messages", {"text": "hello?"})
    assert ended["statusCode"] == 2
    _, listing = await stack.rest("GET", "/api/v2/me/chats", "bob")
    assert listing == {"statusCode": 0, "uris": []}


async def test_send_url_and_custom_notice_reach_the_agent_and_the_customer(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    alice = await stack.desk("alice")
    sms_id = await _accepted(stack, alice)
    sent = await stack.operate("alice", "smssessions", sms_id, "SendUrl", url="https://www.genesys.com")
    assert set(sent) == {"statusCode", "referenceId"} and sent["statusCode"] == 0
    await stack.operate("alice", "smssessions", sms_id, "SendCustomNotice", noticeText="We are open until 8 pm")
    pushed, notice = await alice.next(2, SMS_TOPIC)
    assert (pushed["messageType"], pushed["notificationType"], pushed["referenceId"]) == (
        "MessageLogUpdated", "NewMessages", sent["referenceId"])
    assert pushed["smssessionUri"] == f"{BASE_URL}/api/v2/smssessions/{sms_id}"
    assert set(pushed["messages"][0]) == {"index", "type", "from", "visibility", "timestamp", "timestampSeconds",
                                          "url"}
    assert (pushed["messages"][0]["type"], pushed["messages"][0]["url"]) == ("PushUrl", "https://www.genesys.com")
    assert (notice["messages"][0]["type"], notice["messages"][0]["noticeText"]) == (
        "CustomNotice", "We are open until 8 pm")
    _, transcript = await stack.gateway("GET", f"sms/interactions/{sms_id}/transcript")
    assert [(m["type"], m.get("url") or m.get("noticeText")) for m in transcript["messages"][-2:]] == [
        ("PushUrl", "https://www.genesys.com"), ("CustomNotice", "We are open until 8 pm")]

    refused = await stack.operate("alice", "smssessions", sms_id, "SendUrl", url="javascript:alert(document.cookie)")
    assert refused == {"statusCode": 10, "statusMessage": "parameter 'url' must be an absolute http or https URL "
                       "of at most 2048 characters without spaces, got 'javascript:alert(document.cookie)'"}
    await alice.quiet()


async def test_reject_goes_to_the_next_agent(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    alice, bob = await stack.desk("alice"), await stack.desk("bob")
    await stack.routing.set_ready("alice", "sms")
    await stack.routing.set_ready("bob", "sms")
    sms_id = await stack.inbound()
    (offer,) = await alice.next(1, SMS_TOPIC)
    rejected = await stack.operate("alice", "smssessions", sms_id, "Reject")
    (done,) = await alice.next(1, SMS_TOPIC)
    assert done["smssession"]["state"] == "Completed" and done["smssession"]["participants"] == []
    assert done["referenceId"] == rejected["referenceId"]
    (offer,) = await bob.next(1, SMS_TOPIC)
    assert offer["smssession"]["state"] == "Invited" and offer["smssession"]["id"] == sms_id


async def test_unanswered_offer_goes_to_the_next_agent(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client, offer_timeout=0.2)
    alice, bob = await stack.desk("alice"), await stack.desk("bob")
    await stack.routing.set_ready("alice", "sms")
    await stack.routing.set_ready("bob", "sms")
    sms_id = await stack.inbound()
    offered, revoked = await alice.next(2, SMS_TOPIC)
    assert (offered["smssession"]["state"], revoked["smssession"]["state"]) == ("Invited", "Revoked")
    (offer,) = await bob.next(1, SMS_TOPIC)
    assert offer["smssession"]["id"] == sms_id
    late = await stack.operate("alice", "smssessions", sms_id, "Accept")
    assert late["statusCode"] == 2


async def test_operations_outside_capabilities_fail_with_2_and_change_nothing(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    alice = await stack.desk("alice")
    await stack.routing.set_ready("alice", "sms")
    sms_id = await stack.inbound()
    await alice.next(1, SMS_TOPIC)
    reply = await stack.operate("alice", "smssessions", sms_id, "Complete")
    assert reply == {"statusCode": 2, "statusMessage": "operation Complete is not valid in state Invited"}
    _, current = await stack.rest("GET", f"/api/v2/me/smssessions/{sms_id}", "alice")
    assert current["smssession"]["state"] == "Invited"
    await alice.quiet()


async def test_request_errors(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    sms_id = await _accepted(stack, await stack.desk("alice"))
    path = f"/api/v2/me/smssessions/{sms_id}"
    _, reply = await stack.rest("POST", path, "alice", data=b"{not json",
                                headers={"Content-Type": "application/json"})
    assert reply["statusCode"] == 10 and set(reply) == {"statusCode", "statusMessage"}
    _, reply = await stack.rest("POST", path, "alice", {"text": "no operation"})
    assert reply == {"statusCode": 1, "statusMessage": "missing parameter 'operationName'"}
    _, reply = await stack.rest("POST", path, "alice", {"operationName": "Fly"})
    assert reply["statusCode"] == 10 and "SendMessage" in reply["statusMessage"]
    _, reply = await stack.rest("POST", "/api/v2/me/smssessions/0000FFFFFFFFFFFF", "alice", {"operationName": "Leave"})
    assert reply["statusCode"] == 6
    _, theirs = await stack.rest("POST", path, "bob", {"operationName": "Leave"})
    assert theirs["statusCode"] == 6 and sms_id in theirs["statusMessage"]
    _, reply = await stack.rest("GET", path, "bob")
    assert reply["statusCode"] == 6
    _, reply = await stack.rest("POST", f"/api/v2/me/chats/{sms_id}", "alice", {"operationName": "Leave"})
    assert reply["statusCode"] == 6  # an SMS is not a chat
    status, reply = await stack.rest("POST", path, None, {"operationName": "Leave"})
    assert status == 401 and reply["statusCode"] == 20


async def test_reads(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    sms_id = await _accepted(stack, await stack.desk("alice"))
    uri = f"{BASE_URL}/api/v2/smssessions/{sms_id}"
    _, listing = await stack.rest("GET", "/api/v2/me/smssessions", "alice")
    assert listing == {"statusCode": 0, "uris": [uri]}
    _, full = await stack.rest("GET", "/api/v2/me/smssessions?fields=*", "alice")
    (view,) = full["smssessions"]
    assert view["id"] == sms_id and view["state"] == "Chatting" and view["capabilities"] == SEED_000_ALONE
    _, some = await stack.rest("GET", "/api/v2/me/smssessions?fields=id,state", "alice")
    assert some["smssessions"] == [{"id": sms_id, "state": "Chatting"}]
    _, one = await stack.rest("GET", f"/api/v2/me/smssessions/{sms_id}", "alice")
    assert one["smssession"] == view
    _, empty = await stack.rest("GET", "/api/v2/me/smssessions", "bob")
    assert empty == {"statusCode": 0, "uris": []}
    _, chats = await stack.rest("GET", "/api/v2/me/chats?fields=*", "alice")
    assert chats == {"statusCode": 0, "chats": []}


async def test_isolation_bob_never_sees_alices_interaction(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    alice, bob = await stack.desk("alice"), await stack.desk("bob")
    sms_id = await _accepted(stack, alice)
    await stack.operate("alice", "smssessions", sms_id, "SendMessage", text="private")
    await stack.gateway("POST", f"sms/interactions/{sms_id}/messages", {"text": "also private"})
    await stack.operate("alice", "smssessions", sms_id, "AttachUserData", userData={"k": "v"})
    await stack.operate("alice", "smssessions", sms_id, "Complete")
    await alice.next(4, SMS_TOPIC)
    await bob.quiet()
