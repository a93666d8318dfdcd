"""channels.gws.media: the media gateway's API that brings customers and their messages in."""

from __future__ import annotations

import pytest
from gws_stack import BASE_URL, MEDIA_TOKEN, make_stack


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {MEDIA_TOKEN}", "Bearer"])
async def test_the_gateway_token_is_required(aiohttp_client, authorization) -> None:
    stack = await make_stack(aiohttp_client)
    headers = {"Authorization": authorization} if authorization else {}
    status, reply = await stack.rest("POST", "/api/v2/media/sms/interactions", body={"nickname": "P"},
                                     headers=headers)
    assert status == 401 and reply["statusCode"] == 20 and set(reply) == {"statusCode", "statusMessage"}
    assert stack.routing.waiting() == []


async def test_create_validates_its_input(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    cases = [({"text": "hi"}, 1), ({"nickname": 3}, 10), ({"nickname": " "}, 10),
             ({"nickname": "P", "queue": "nowhere"}, 6), ({"nickname": "P", "text": ["x"]}, 10)]
    for body, code in cases:
        _, reply = await stack.gateway("POST", "sms/interactions", body)
        assert reply["statusCode"] == code, (body, reply)
    _, reply = await stack.gateway("POST", "fax/interactions", {"nickname": "P"})
    assert reply["statusCode"] == 6
    assert stack.routing.waiting() == []


async def test_create_queues_the_interaction(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    status, reply = await stack.gateway("POST", "chat/interactions", {"nickname": "PersonP", "queue": "sales"})
    assert status == 200 and reply["statusCode"] == 0
    assert reply["uri"] == f"{BASE_URL}/api/v2/chats/{reply['id']}"
    assert [r.interaction_id for r in stack.routing.waiting("sales")] == [reply["id"]]


async def test_messages_typing_end_and_transcript(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    sms_id = await stack.inbound("sms")
    base = f"sms/interactions/{sms_id}"
    assert (await stack.gateway("POST", f"{base}/typing", {"state": "started"}))[1]["statusCode"] == 0
    assert (await stack.gateway("POST", f"{base}/typing", {"state": "sideways"}))[1]["statusCode"] == 10
    assert (await stack.gateway("POST", f"{base}/messages", {"text": "anyone?"}))[1]["statusCode"] == 0
    assert (await stack.gateway("POST", f"{base}/messages", {}))[1]["statusCode"] == 1
    assert (await stack.gateway("POST", "sms/interactions/0000FFFFFFFFFFFF/messages", {"text": "x"}))[1][
        "statusCode"] == 6
    assert (await stack.gateway("POST", f"chat/interactions/{sms_id}/messages", {"text": "x"}))[1]["statusCode"] == 6
    assert (await stack.gateway("POST", f"{base}/end"))[1]["statusCode"] == 0
    _, ended = await stack.gateway("POST", f"{base}/messages", {"text": "still there?"})
    assert ended["statusCode"] == 2
    _, transcript = await stack.gateway("GET", f"{base}/transcript")
    assert [(m["index"], m["type"]) for m in transcript["messages"]] == [
        (1, "ParticipantJoined"), (2, "Text"), (3, "TypingStarted"), (4, "Text"), (5, "ParticipantLeft")]
    assert stack.routing.waiting() == []  # nobody is offered a chat whose customer has gone


async def test_customer_leaving_an_accepted_chat(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client)
    alice = await stack.desk("alice")
    await stack.routing.set_ready("alice", "chat")
    chat_id = await stack.inbound("chat")
    await alice.next(1, "/v2/me/chats")
    await stack.operate("alice", "chats", chat_id, "Accept")
    await alice.next(3, "/v2/me/chats")
    await stack.gateway("POST", f"chat/interactions/{chat_id}/end")
    left, status = await alice.next(2, "/v2/me/chats")
    assert left["messages"][0]["type"] == "ParticipantLeft" and left["messages"][0]["from"]["type"] == "Customer"
    assert status["chat"]["state"] == "LeftChat" and "referenceId" not in status
    assert (await stack.operate("alice", "chats", chat_id, "Complete"))["statusCode"] == 0
