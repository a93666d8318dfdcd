"""End to end: the generic interactions API (seed 002) over real CometD sessions, REST through the GWS auth,
customers through the media gateway. Chat and SMS interactions appear on /v2/me/interactions."""

from __future__ import annotations

from interactions_helpers import BASE_URL, IX_TOPIC, make_ix_stack

VIEW_KEYS = {"id", "mediaType", "state", "capabilities", "participants", "uri"}
CHATTING_CAPS = ["Complete", "PlaceInQueue", "PlaceInWorkbin", "UpdateUserData", "AttachUserData", "DeleteUserData",
                 "SingleStepTransfer", "Transfer"]


def state_change(event: dict, state: str, ref: int | None = None) -> dict:
    assert event["messageType"] == "InteractionStateChangeMessage", event
    assert event["notificationType"] == "StatusChange", event
    assert event["interaction"]["state"] == state, event
    assert event.get("referenceId") == ref, event
    return event["interaction"]


async def test_offer_accept_and_list_shapes(aiohttp_client) -> None:
    stack = await make_ix_stack(aiohttp_client)
    alice = await stack.desk("alice")
    await stack.routing.set_ready("alice", "sms")
    sms_id = await stack.inbound("sms")
    (offer,) = await alice.next(1, IX_TOPIC)
    view = state_change(offer, "Invited")
    assert set(offer) == {"messageType", "notificationType", "interaction"}
    assert set(view) == VIEW_KEYS and view["mediaType"] == "sms" and view["capabilities"] == ["Accept", "Reject"]
    assert view["uri"] == f"{BASE_URL}/api/v2/interactions/{sms_id}"

    reply = await stack.ix("alice", sms_id, "Accept", nickname="Marat")
    assert set(reply) == {"statusCode", "referenceId"} and reply["statusCode"] == 0
    # The seed-001 sequence on the media topic, the generic StatusChange right behind its original.
    status, accepted, _, history = events = await alice.next(4)
    assert [(e["messageType"], e["notificationType"]) for e in events] == [
        ("SMSsessionStateChangeMessage", "StatusChange"), ("InteractionStateChangeMessage", "StatusChange"),
        ("SMSsessionStateChangeMessage", "ParticipantsUpdated"), ("MessageLogUpdated", "NewMessages")]
    view = state_change(accepted, "Chatting", reply["referenceId"])
    assert view["capabilities"] == CHATTING_CAPS
    assert status["referenceId"] == reply["referenceId"] and history["messages"][1]["text"] == "Hello World"

    assert await stack.rest("GET", "/api/v2/me/interactions", "alice") == (
        200, {"statusCode": 0, "uris": [f"{BASE_URL}/api/v2/interactions/{sms_id}"]})
    status, full = await stack.rest("GET", "/api/v2/me/interactions?fields=*", "alice")
    (item,) = full["interactions"]
    assert status == 200 and set(full) == {"statusCode", "interactions"}
    assert set(item) == VIEW_KEYS and {k: item[k] for k in ("id", "mediaType", "state", "capabilities")} == {
        "id": sms_id, "mediaType": "sms", "state": "Chatting", "capabilities": CHATTING_CAPS}
    assert [p["nickname"] for p in item["participants"]] == ["Marat", "PersonP"]
    _, one = await stack.rest("GET", f"/api/v2/interactions/{sms_id}", "alice")
    assert one == {"statusCode": 0, "interaction": item}
    assert await stack.rest("GET", "/api/v2/me/interactions", "bob") == (200, {"statusCode": 0, "uris": []})
    status, bad = await stack.rest("GET", "/api/v2/me/interactions?fields=id", "alice")
    assert (status, bad) == (400, {"statusCode": 10, "statusMessage": "fields must be *"})


async def test_all_interactions_for_admins_and_supervisors_only_when_restricted(aiohttp_client) -> None:
    """--interactions-list-supervisors-only (test_seeds_to_the_letter.py covers the default, seed 002's)."""
    stack = await make_ix_stack(aiohttp_client, agents_see_all=False)
    alice = await stack.desk("alice")
    chat_id = await stack.accepted(alice)
    queued_id = await stack.inbound("sms")  # nobody Ready for SMS: it waits

    status, refused = await stack.rest("GET", "/api/v2/interactions", "alice")
    assert (status, refused["statusCode"]) == (403, 5) and "admin or supervisor" in refused["statusMessage"]
    for boss in ("ada", "sam"):
        _, uris = await stack.rest("GET", "/api/v2/interactions", boss)
        assert sorted(uris["uris"]) == sorted(f"{BASE_URL}/api/v2/interactions/{i}" for i in (chat_id, queued_id))
    _, full = await stack.rest("GET", "/api/v2/interactions?fields=*", "ada")
    by_id = {v["id"]: v for v in full["interactions"]}
    assert by_id[chat_id]["state"] == "Chatting" and by_id[queued_id]["state"] == "Queued"
    assert by_id[chat_id]["agents"] == [{"userId": "alice", "state": "Chatting", "role": "Owner"}]
    assert by_id[queued_id]["mediaType"] == "sms" and by_id[queued_id]["queue"] == "default"
    # A supervisor may read any one; an agent without a leg learns nothing, not even that it exists.
    _, one = await stack.rest("GET", f"/api/v2/interactions/{chat_id}", "sam")
    assert one["interaction"] == by_id[chat_id]
    unknown = await stack.rest("GET", "/api/v2/interactions/0000NOPE", "bob")
    others = await stack.rest("GET", f"/api/v2/interactions/{chat_id}", "bob")
    assert others == (404, {"statusCode": 6, "statusMessage": f"interaction {chat_id} not found"})
    assert unknown == (404, {"statusCode": 6, "statusMessage": "interaction 0000NOPE not found"})
    assert (await stack.ix("bob", chat_id, "Complete"))["statusCode"] == 6
    assert (await stack.rest("PUT", f"/api/v2/interactions/{chat_id}", "sam", {"userData": {"a": 1}}))[1][
        "statusCode"] == 6  # reading is not working on it
    await alice.quiet()

    assert (await stack.ix("alice", chat_id, "Complete"))["statusCode"] == 0
    _, after = await stack.rest("GET", "/api/v2/interactions", "ada")
    assert after["uris"] == [f"{BASE_URL}/api/v2/interactions/{queued_id}"]


async def test_reject_complete_and_cancel(aiohttp_client) -> None:
    stack = await make_ix_stack(aiohttp_client)
    alice, bob = await stack.desk("alice"), await stack.desk("bob")
    await stack.routing.set_ready("alice", "chat")
    chat_id = await stack.inbound("chat")
    await alice.next(1, IX_TOPIC)
    await stack.routing.set_ready("bob", "chat")

    rejected = await stack.ix("alice", chat_id, "Reject")
    (gone,) = await alice.next(1, IX_TOPIC)
    assert state_change(gone, "Completed", rejected["referenceId"])["capabilities"] == []
    (offer,) = await bob.next(1, IX_TOPIC)
    assert state_change(offer, "Invited")["id"] == chat_id

    cancel = await stack.ix("bob", chat_id, "Cancel")
    assert cancel["statusCode"] == 2 and "draft" in cancel["statusMessage"]
    accepted = await stack.ix("bob", chat_id, "Accept")
    completed = await stack.ix("bob", chat_id, "Complete")
    first, second = await bob.next(2, IX_TOPIC)
    state_change(first, "Chatting", accepted["referenceId"])
    assert state_change(second, "Completed", completed["referenceId"])["participants"] == []
    assert (await stack.ix("bob", chat_id, "Complete")) == {
        "statusCode": 2, "statusMessage": "operation Complete is not valid in state Completed"}
    assert (await stack.rest("GET", "/api/v2/me/interactions", "bob"))[1]["uris"] == []
    _, transcript = await stack.gateway("GET", f"chat/interactions/{chat_id}/transcript")
    assert transcript["messages"][-1]["type"] == "ParticipantLeft"


async def test_user_data_operations_and_put(aiohttp_client) -> None:
    stack = await make_ix_stack(aiohttp_client)
    alice = await stack.desk("alice")
    chat_id = await stack.accepted(alice)

    steps = [("AttachUserData", {"userData": {"a": 1, "b": {"c": 2}}}, {"a": 1, "b": {"c": 2}}),
             ("UpdateUserData", {"userData": {"a": 3}}, {"a": 3, "b": {"c": 2}}),
             ("DeleteUserData", {"userData": {"b": {"c": 2}}}, {"a": 3}),  # seed 002: userData names the keys
             ("DeleteUserData", {"keys": ["a"]}, {})]
    for operation, params, expected in steps:
        reply = await stack.ix("alice", chat_id, operation, **params)
        assert reply["statusCode"] == 0, reply
        chat_event, event = await alice.next(2)  # the generic one right behind the chat one
        assert chat_event["chat"]["userData"] == expected
        assert (event["notificationType"], event["referenceId"]) == ("PropertiesUpdated", reply["referenceId"])
        assert event["interaction"]["userData"] == expected, operation

    status, put = await stack.rest("PUT", f"/api/v2/interactions/{chat_id}", "alice", {"userData": {"k": "v"}})
    assert status == 200 and set(put) == {"statusCode", "referenceId"}
    (event,) = await alice.next(1, IX_TOPIC)
    assert event["referenceId"] == put["referenceId"] and event["interaction"]["userData"] == {"k": "v"}
    for body, message in [({}, "missing parameter 'userData'"),
                          ({"userData": []}, "parameter 'userData' must be an object"),
                          ({"userData": {}, "state": "X"}, "only userData can be updated; 'state' is read-only")]:
        _, bad = await stack.rest("PUT", f"/api/v2/interactions/{chat_id}", "alice", body)
        assert bad["statusMessage"] == message
    # A change made through the chat API reaches the generic topic too.
    via_chat = await stack.operate("alice", "chats", chat_id, "UpdateUserData", userData={"x": 1})
    (event,) = await alice.next(1, IX_TOPIC)
    assert event["referenceId"] == via_chat["referenceId"] and event["interaction"]["userData"] == {"k": "v", "x": 1}
    await alice.drain()
    await alice.quiet()


async def test_place_in_queue_reoffers_to_another_ready_agent(aiohttp_client) -> None:
    stack = await make_ix_stack(aiohttp_client)
    alice, bob = await stack.desk("alice"), await stack.desk("bob")
    chat_id = await stack.accepted(alice)
    await stack.routing.set_ready("bob", "chat")

    missing = await stack.ix("alice", chat_id, "PlaceInQueue")
    unknown = await stack.ix("alice", chat_id, "PlaceInQueue", queueName="nowhere")
    assert missing == {"statusCode": 1, "statusMessage": "missing parameter 'queueName'"}
    assert unknown == {"statusCode": 6, "statusMessage": "queue nowhere not found"}
    await alice.quiet()

    placed = await stack.ix("alice", chat_id, "PlaceInQueue", queueName="sales")
    assert placed["statusCode"] == 0
    (left,) = await alice.next(1, IX_TOPIC)
    state_change(left, "Completed", placed["referenceId"])
    (offer,) = await bob.next(1, IX_TOPIC)
    assert state_change(offer, "Invited")["id"] == chat_id  # follow-on: no referenceId
    accepted = await stack.ix("bob", chat_id, "Accept")
    (joined,) = await bob.next(1, IX_TOPIC)
    state_change(joined, "Chatting", accepted["referenceId"])


async def test_transfer_by_user_id(aiohttp_client) -> None:
    stack = await make_ix_stack(aiohttp_client)
    alice, bob, carol = await stack.desk("alice"), await stack.desk("bob"), await stack.desk("carol")
    chat_id = await stack.accepted(alice)

    # Not Ready: the failure comes later, as an Error notification carrying the referenceId.
    failed = await stack.ix("alice", chat_id, "Transfer", userId="bob")
    assert failed["statusCode"] == 0
    (error,) = await alice.next(1, IX_TOPIC)
    assert (error["notificationType"], error["referenceId"]) == ("Error", failed["referenceId"])
    assert error["errorMessage"] == "user bob cannot be reached: not Ready for chat"
    assert error["interaction"]["state"] == "Chatting"
    await alice.drain()

    await stack.routing.set_ready("bob", "chat")
    transfer = await stack.ix("alice", chat_id, "Transfer", userId="bob")
    (offer,) = await bob.next(1, IX_TOPIC)
    state_change(offer, "Invited")
    accepted = await stack.ix("bob", chat_id, "Accept")
    (mine,) = await bob.next(1, IX_TOPIC)
    state_change(mine, "Chatting", accepted["referenceId"])
    (done,) = await alice.next(1, IX_TOPIC)
    state_change(done, "Completed", transfer["referenceId"])  # the transferrer goes when the target accepts

    # SingleStepTransfer is the same operation.
    await stack.routing.set_ready("carol", "chat")
    single = await stack.ix("bob", chat_id, "SingleStepTransfer", userId="carol")
    assert single["statusCode"] == 0
    (offer,) = await carol.next(1, IX_TOPIC)
    state_change(offer, "Invited")
    await carol.quiet()


async def test_bad_input_changes_nothing(aiohttp_client) -> None:
    stack = await make_ix_stack(aiohttp_client)
    alice = await stack.desk("alice")
    chat_id = await stack.accepted(alice)
    path = f"/api/v2/me/interactions/{chat_id}"

    cases = [
        ({"operationName": "Fly"}, 10, "unknown operationName 'Fly'; valid: Accept, Reject, Complete, PlaceInQueue, "
         "PlaceInWorkbin, UpdateUserData, AttachUserData, DeleteUserData, SingleStepTransfer, Transfer, Cancel, "
         "GetWorkbinContent"),
        ({}, 1, "missing parameter 'operationName'"),
        ({"operationName": 7}, 10, "parameter 'operationName' must be a string"),
        ({"operationName": "Accept"}, 2, "operation Accept is not valid in state Chatting"),
        ({"operationName": "PlaceInQueue", "queueName": 3}, 10, "parameter 'queueName' must be a string"),
        ({"operationName": "Transfer"}, 1, "missing parameter 'userId'"),
        ({"operationName": "Transfer", "userId": ["bob"]}, 10, "parameter 'userId' must be a string"),
        ({"operationName": "Transfer", "userId": "../x"}, 10, "parameter 'userId' must be a user id, got '../x'"),
        ({"operationName": "Transfer", "userId": "alice"}, 10, "parameter 'userId' names yourself"),
        ({"operationName": "Transfer", "userId": "nobody"}, 6, "user nobody not found"),
        ({"operationName": "UpdateUserData"}, 1, "missing parameter 'userData'"),
        ({"operationName": "AttachUserData", "userData": "x"}, 10, "parameter 'userData' must be an object"),
        ({"operationName": "DeleteUserData"}, 1, "missing parameter 'keys' (or 'userData')"),
        ({"operationName": "DeleteUserData", "keys": [1]}, 10, "parameter 'keys' must be an array of strings"),
        ({"operationName": "PlaceInWorkbin"}, 1, "missing parameter 'workbin'"),
        ({"operationName": "PlaceInWorkbin", "workbin": "bob-inprogress"}, 6, "workbin bob-inprogress not found"),
        ({"operationName": "GetWorkbinContent", "workbin": 5}, 10, "parameter 'workbin' must be a string"),
    ]
    for body, code, message in cases:
        _, reply = await stack.rest("POST", path, "alice", body)
        assert reply == {"statusCode": code, "statusMessage": message}, body
    for raw, message in [(b"{not json", "request body is not valid JSON"),
                         (b"[1]", "request body must be a JSON object"),
                         (b"", "request body is empty: expected a JSON object")]:
        _, reply = await stack.rest("POST", path, "alice", data=raw, headers={"Content-Type": "application/json"})
        assert reply["statusCode"] in (1, 10) and reply["statusMessage"].startswith(message), raw
    unknown = await stack.ix("alice", "0000NOPE", "Complete")
    assert unknown == {"statusCode": 6, "statusMessage": "interaction 0000NOPE not found"}

    await alice.quiet()
    _, one = await stack.rest("GET", f"/api/v2/interactions/{chat_id}", "alice")
    assert one["interaction"]["state"] == "Chatting" and "userData" not in one["interaction"]
    assert stack.routing.waiting() == []
