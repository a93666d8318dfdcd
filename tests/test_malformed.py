"""Malformed requests: each gets its specific Bayeux error, and the server keeps serving afterwards."""

from __future__ import annotations

import pytest
from bayeux_helpers import (
    both_http_servers,  # noqa: F401  (each test runs on both HTTP paths)
    broker_of,
    handshake_id,
    open_session,
    post_raw,
    reply_to,
    send,
)

ANON = {"allow_anonymous": True}


async def assert_still_serving(client) -> None:
    """A fresh handshake on the same server succeeds after the bad request."""
    client_id = await handshake_id(client)
    assert broker_of(client).session(client_id) is not None


def body_error(raw) -> dict:
    """The single /meta/unsuccessful reply of a body that could not be decoded."""
    assert raw.content_type == "application/json", raw.text
    replies = raw.json()
    assert isinstance(replies, list) and len(replies) == 1, replies
    reply = replies[0]
    assert reply["channel"] == "/meta/unsuccessful"
    assert reply["successful"] is False
    return reply


# --------------------------------------------------------------------------- undecodable bodies


@pytest.mark.parametrize(("body", "error"), [
    (b"[{\"channel\": ", "400::body is not valid JSON"),
    (b"not json at all", "400::body is not valid JSON"),
    (b"", "400::body is not valid JSON"),
    (b"42", "400::body must be a JSON array of messages or one message object, got number"),
    (b"\"x\"", "400::body must be a JSON array of messages or one message object, got string"),
    (b"null", "400::body must be a JSON array of messages or one message object, got null"),
    (b"true", "400::body must be a JSON array of messages or one message object, got boolean"),
    (b"[{\"channel\": \"/meta/handshake\"}, 1]", "400::message 1 must be a JSON object, got number"),
    (b"[[]]", "400::message 0 must be a JSON object, got array"),
])
async def test_undecodable_body(make_client, body, error):
    client = await make_client(**ANON)
    raw = await post_raw(client, data=body, headers={"Content-Type": "application/json"})
    assert raw.status == 400
    reply = body_error(raw)
    assert reply["error"].startswith(error), reply["error"]
    await assert_still_serving(client)


async def test_invalid_utf8_body(make_client):
    client = await make_client(**ANON)
    raw = await post_raw(client, data=b"[{\"channel\": \"\xff\xfe\"}]", headers={"Content-Type": "application/json"})
    assert raw.status == 400
    assert body_error(raw)["error"].startswith("400::body is not valid JSON")
    await assert_still_serving(client)


async def test_oversized_body_is_refused_with_413(make_client):
    client = await make_client(max_message_size=1024, **ANON)
    big = [{"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"],
            "ext": {"pad": "x" * 2000}}]
    raw = await post_raw(client, big)
    assert raw.status == 413
    assert body_error(raw)["error"] == (
        "413::message_too_large (the body exceeds max_message_size of 1024 bytes)")
    assert broker_of(client).sessions == {}
    await assert_still_serving(client)


async def test_oversized_chunked_body_is_refused_with_413(make_client):
    client = await make_client(max_message_size=1024, **ANON)

    async def chunks():  # no Content-Length: the limit must hold while reading
        yield b"[{\"channel\": \"/meta/handshake\", \"ext\": \""
        for _ in range(10):
            yield b"x" * 500
        yield b"\"}]"

    raw = await post_raw(client, data=chunks(), headers={"Content-Type": "application/json"})
    assert raw.status == 413
    assert body_error(raw)["error"].startswith("413::message_too_large")
    await assert_still_serving(client)


async def test_body_just_under_the_limit_is_accepted(make_client):
    client = await make_client(max_message_size=1024, **ANON)
    message = {"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"],
               "id": "ok", "ext": {"pad": "x" * 800}}
    replies = await send(client, message)
    assert reply_to(replies, "/meta/handshake", "ok")["successful"] is True


# --------------------------------------------------------------------------- invalid messages


async def message_error(client, message: dict) -> dict:
    replies = await send(client, [message])
    assert len(replies) == 1, replies
    reply = replies[0]
    assert reply["successful"] is False, reply
    if "id" in message:
        assert reply["id"] == message["id"]
    return reply


async def test_message_without_channel(make_client):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    reply = await message_error(client, {"clientId": client_id, "data": 1, "id": "nc"})
    assert reply["error"] == "400::channel_missing"
    await assert_still_serving(client)


async def test_publish_without_data(make_client):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    reply = await message_error(client, {"channel": "/chat", "clientId": client_id, "id": "nd"})
    assert reply["channel"] == "/chat"
    assert reply["error"] == "400:/chat:data_missing (a publish must carry data)"
    await assert_still_serving(client)


@pytest.mark.parametrize(("channel", "error"), [
    ("/chat//room", "405:/chat//room:channel_invalid (empty segment)"),
    ("chat", "405:chat:channel_invalid (a channel must start with /)"),
    ("/", "405:/:channel_invalid (a channel needs at least one segment)"),
    ("/chat/*/room", "405:/chat/*/room:channel_invalid (wildcards are only allowed as the last segment)"),
    ("/chat/ro om", "405:/chat/ro om:channel_invalid (segment 'ro om' has characters outside "
                    "[A-Za-z0-9-_!~()$@.+=%:])"),
])
async def test_invalid_channel_names(make_client, channel, error):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    reply = await message_error(client, {"channel": channel, "clientId": client_id, "data": 1, "id": "ic"})
    assert reply["error"] == error
    await assert_still_serving(client)


@pytest.mark.parametrize("channel", ["/chat/*", "/chat/**", "/**"])
async def test_wildcard_publish(make_client, channel):
    client = await make_client(**ANON)
    client_id = await open_session(client, subscriptions=["/chat/**"])
    reply = await message_error(client, {"channel": channel, "clientId": client_id, "data": 1, "id": "w"})
    assert reply["error"] == f"405:{channel}:channel_invalid (cannot publish to a wildcard channel)"
    await assert_still_serving(client)


async def test_unknown_meta_channel(make_client):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    reply = await message_error(client, {"channel": "/meta/bogus", "clientId": client_id, "id": "m"})
    assert reply["channel"] == "/meta/bogus"
    assert reply["error"] == "405:/meta/bogus:channel_invalid (unknown meta channel)"
    await assert_still_serving(client)


@pytest.mark.parametrize("subscription", [None, [], "", 5, ["/ok", 7]])
async def test_subscribe_without_valid_subscription(make_client, subscription):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    message = {"channel": "/meta/subscribe", "clientId": client_id, "id": "s"}
    if subscription is not None:
        message["subscription"] = subscription
    reply = await message_error(client, message)
    if subscription == "":
        # An empty string is a (bad) channel name rather than a missing field.
        assert reply["error"] == "405::channel_invalid (a channel must start with /)"
    elif subscription in (None, []):
        assert reply["error"] == "403::subscription_missing"
    else:  # present with the wrong type: the error says which
        assert reply["error"].startswith("400::subscription must be a channel name or an array of channel names, got ")
    assert broker_of(client).session(client_id).subscriptions == set()
    await assert_still_serving(client)


async def test_subscribe_to_meta_channel_is_refused(make_client):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    reply = await message_error(client, {"channel": "/meta/subscribe", "clientId": client_id,
                                         "subscription": "/meta/connect", "id": "s"})
    assert reply["error"].startswith("403:/meta/connect:subscription_invalid")
    assert reply["subscription"] == "/meta/connect"
    await assert_still_serving(client)


async def test_connect_without_client_id(make_client):
    client = await make_client(**ANON)
    reply = await message_error(client, {"channel": "/meta/connect", "connectionType": "long-polling", "id": "c"})
    assert reply["error"] == "401::clientId_missing"
    await assert_still_serving(client)


async def test_connect_without_connection_type(make_client):
    client = await make_client(**ANON)
    client_id = await handshake_id(client)
    reply = await message_error(client, {"channel": "/meta/connect", "clientId": client_id, "id": "c"})
    assert reply["error"] == "400::connectionType_missing"
    await assert_still_serving(client)


async def test_handshake_without_version(make_client):
    client = await make_client(**ANON)
    reply = await message_error(client, {"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"],
                                         "id": "h"})
    assert reply["error"] == "400::version_missing"
    await assert_still_serving(client)


async def test_invalid_message_does_not_spoil_the_rest_of_its_batch(make_client):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    replies = await send(client, [
        {"channel": "/chat", "clientId": client_id, "id": "bad"},
        {"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/chat", "id": "good"},
    ])
    assert [(r["id"], r["successful"]) for r in replies] == [("bad", False), ("good", True)]
    assert broker_of(client).session(client_id).subscriptions == {"/chat"}


# --------------------------------------------------------------------------- wrong HTTP methods


async def test_get_without_message_is_405(make_client):
    client = await make_client(**ANON)
    async with client.get("/cometd") as response:
        assert response.status == 405
        text = await response.text()
    assert "POST for long-polling" in text and "GET with message=" in text
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"GET", "POST"}
    await assert_still_serving(client)


async def test_put_is_405(make_client):
    client = await make_client(**ANON)
    raw = await post_raw(client, [{"channel": "/meta/handshake"}], method="PUT")
    assert raw.status == 405
    assert "Bayeux endpoint" in raw.text
    await assert_still_serving(client)
