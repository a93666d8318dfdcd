"""End to end: per-agent workbins. Placing an interaction (PlaceInWorkbin or AddInteraction), reading the
content (GET and the GetWorkbinContent notification), pulling it back, subscriptions, bad input."""

from __future__ import annotations

from interactions_helpers import BASE_URL, CHAT_TOPIC, IX_TOPIC, WB_TOPIC, make_ix_stack

WORKBIN_KEYS = {"id", "workbinName", "displayName", "type", "uri"}


async def test_workbin_lists_and_isolation(aiohttp_client) -> None:
    stack = await make_ix_stack(aiohttp_client)
    _, uris = await stack.rest("GET", "/api/v2/me/workbins", "alice")
    assert uris == {"statusCode": 0, "uris": [f"{BASE_URL}/api/v2/me/workbins/alice-inprogress",
                                              f"{BASE_URL}/api/v2/me/workbins/alice-drafts"]}
    _, full = await stack.rest("GET", "/api/v2/me/workbins?fields=*", "alice")
    assert [set(w) for w in full["workbins"]] == [WORKBIN_KEYS, WORKBIN_KEYS]
    assert full["workbins"][0] == {"id": "alice-inprogress", "workbinName": "InProgress", "displayName": "In Progress",
                                   "type": "Agent", "uri": uris["uris"][0]}
    _, content = await stack.rest("GET", "/api/v2/me/workbins/alice-drafts", "alice")
    assert content == {"statusCode": 0, "workbin": {**full["workbins"][1], "interactions": []}}
    assert await stack.rest("GET", "/api/v2/me/workbins/alice-drafts", "bob") == (
        404, {"statusCode": 6, "statusMessage": "workbin alice-drafts not found"})
    assert (await stack.wb("bob", "alice-drafts", "Subscribe"))["statusCode"] == 6


async def test_place_read_and_pull_back(aiohttp_client) -> None:
    stack = await make_ix_stack(aiohttp_client)
    alice = await stack.desk("alice")
    chat_id = await stack.accepted(alice)
    await stack.ix("alice", chat_id, "AttachUserData", userData={"case": 42})
    await alice.drain()

    placed = await stack.ix("alice", chat_id, "PlaceInWorkbin", workbin="InProgress")  # by name or by id
    assert set(placed) == {"statusCode", "referenceId"} and placed["statusCode"] == 0
    chat_status, generic, added = await alice.next(3)
    assert (chat_status["chat"]["state"], chat_status["referenceId"]) == ("Completed", placed["referenceId"])
    assert (generic["notificationType"], generic["referenceId"]) == ("StatusChange", placed["referenceId"])
    item = generic["interaction"]
    assert item == {"id": chat_id, "mediaType": "chat", "state": "InWorkbin", "capabilities": [], "participants": [],
                    "uri": f"{BASE_URL}/api/v2/interactions/{chat_id}", "workbinId": "alice-inprogress",
                    "userData": {"case": 42}}
    assert set(added) == {"action", "workbin", "interaction", "referenceId"}
    assert (added["action"], added["referenceId"], added["interaction"]) == ("ItemAdded", placed["referenceId"], item)
    assert added["workbin"]["id"] == "alice-inprogress"

    # It left the active list; GET shows it in the workbin; the customer is still there.
    assert (await stack.rest("GET", "/api/v2/me/interactions", "alice"))[1]["uris"] == []
    assert (await stack.rest("GET", f"/api/v2/interactions/{chat_id}", "alice"))[1]["interaction"] == item
    _, content = await stack.rest("GET", "/api/v2/me/workbins/alice-inprogress", "alice")
    assert content["workbin"]["interactions"] == [item]
    _, by_admin = await stack.rest("GET", f"/api/v2/interactions/{chat_id}", "ada")
    assert by_admin["interaction"]["state"] == "InWorkbin"
    status, _ = await stack.gateway("POST", f"chat/interactions/{chat_id}/messages", {"text": "still there?"})
    assert status == 200

    # The content as a notification.
    asked = await stack.ix("alice", chat_id, "GetWorkbinContent", workbin="alice-inprogress")
    (note,) = await alice.next(1, IX_TOPIC)
    assert note == {"messageType": "WorkbinContentMessage", "notificationType": "WorkbinContent",
                    "workbin": content["workbin"], "referenceId": asked["referenceId"]}

    # Accept does not take it out of the workbin; Pull does, as an offer the agent accepts.
    refused = await stack.ix("alice", chat_id, "Accept")
    assert refused == {"statusCode": 2, "statusMessage":
                       "operation Accept is not valid in state InWorkbin; pull it from the workbin first"}
    pulled = await stack.wb("alice", "alice-inprogress", "Pull", id=chat_id)
    assert pulled["statusCode"] == 0
    _, offer, removed = await alice.next(3)
    assert (offer["interaction"]["state"], "referenceId" in offer) == ("Invited", False)
    assert (removed["action"], removed["referenceId"], removed["interaction"]["id"]) == (
        "ItemRemoved", pulled["referenceId"], chat_id)
    _, content = await stack.rest("GET", "/api/v2/me/workbins/alice-inprogress", "alice")
    assert content["workbin"]["interactions"] == []
    accepted = await stack.ix("alice", chat_id, "Accept")
    _, back, _, history = await alice.next(4)
    assert (back["interaction"]["state"], back["referenceId"]) == ("Chatting", accepted["referenceId"])
    assert "still there?" in [m.get("text") for m in history["messages"]]  # what came while it was parked
    assert (await stack.rest("GET", "/api/v2/me/interactions", "alice"))[1]["uris"] == [item["uri"]]


async def test_add_interaction_and_subscriptions(aiohttp_client) -> None:
    stack = await make_ix_stack(aiohttp_client)
    alice = await stack.desk("alice")
    sms_id = await stack.accepted(alice, "sms")

    unsubscribed = await stack.wb("alice", "alice-drafts", "Unsubscribe")
    (event,) = await alice.next(1, WB_TOPIC)
    assert event == {"messageType": "WorkbinSubscriptionStateChangeMessage", "stateResource": "Unsubscribed",
                     "id": "alice-drafts", "referenceId": unsubscribed["referenceId"]}
    added = await stack.wb("alice", "alice-drafts", "AddInteraction", id=sms_id)
    (generic,) = await alice.next(1, IX_TOPIC)
    assert generic["interaction"]["state"] == "InWorkbin" and generic["referenceId"] == added["referenceId"]
    await alice.quiet()  # no ItemAdded while unsubscribed

    subscribed = await stack.wb("alice", "alice-drafts", "Subscribe")
    (event,) = await alice.next(1, WB_TOPIC)
    assert (event["stateResource"], event["referenceId"]) == ("Subscribed", subscribed["referenceId"])
    pulled = await stack.wb("alice", "alice-drafts", "Pull", id=sms_id)
    (removed,) = await alice.next(1, WB_TOPIC)
    assert (removed["action"], removed["referenceId"]) == ("ItemRemoved", pulled["referenceId"])
    # A pulled item declined goes to its queue like any declined offer (documented in workbins.py).
    assert (await stack.ix("alice", sms_id, "Reject"))["statusCode"] == 0
    assert [r.interaction_id for r in stack.routing.waiting("default")] == [sms_id]


async def test_bad_workbin_input_changes_nothing(aiohttp_client) -> None:
    stack = await make_ix_stack(aiohttp_client, capacity=2)
    alice, bob = await stack.desk("alice"), await stack.desk("bob")
    chat_id = await stack.accepted(alice)
    path = "/api/v2/me/workbins/alice-inprogress"

    cases = [
        ({"operationName": "Open"}, 10,
         "unknown operationName 'Open'; valid: AddInteraction, Pull, Subscribe, Unsubscribe"),
        ({"operationName": "AddInteraction"}, 1, "missing parameter 'id'"),
        ({"operationName": "AddInteraction", "id": 1}, 10, "parameter 'id' must be a string"),
        ({"operationName": "AddInteraction", "id": "0000NOPE"}, 6, "interaction 0000NOPE not found"),
        ({"operationName": "Pull", "id": chat_id}, 6, f"interaction {chat_id} is not in workbin alice-inprogress"),
    ]
    for body, code, message in cases:
        _, reply = await stack.rest("POST", path, "alice", body)
        assert reply == {"statusCode": code, "statusMessage": message}, body
    _, reply = await stack.rest("POST", path, "alice", data=b"nope", headers={"Content-Type": "application/json"})
    assert reply["statusCode"] == 10 and reply["statusMessage"].startswith("request body is not valid JSON")
    # Someone else's interaction is not found; an interaction shared with another agent cannot be placed.
    _, reply = await stack.rest("POST", "/api/v2/me/workbins/bob-inprogress", "bob",
                                {"operationName": "AddInteraction", "id": chat_id})
    assert reply == {"statusCode": 6, "statusMessage": f"interaction {chat_id} not found"}
    await stack.routing.set_ready("bob", "chat")
    await stack.operate("alice", "chats", chat_id, "Invite", targetPath="/users/bob")
    await bob.next(1, CHAT_TOPIC)
    await stack.operate("bob", "chats", chat_id, "Accept")
    await alice.drain()
    await bob.drain()
    _, reply = await stack.rest("POST", path, "alice", {"operationName": "AddInteraction", "id": chat_id})
    assert reply["statusCode"] == 2 and "other agents" in reply["statusMessage"]
    assert (await stack.ix("bob", chat_id, "PlaceInWorkbin", workbin="bob-drafts"))["statusCode"] == 2

    await alice.quiet()
    await bob.quiet()
    assert (await stack.rest("GET", path, "alice"))[1]["workbin"]["interactions"] == []
    _, one = await stack.rest("GET", f"/api/v2/interactions/{chat_id}", "alice")
    assert one["interaction"]["state"] == "Chatting"
