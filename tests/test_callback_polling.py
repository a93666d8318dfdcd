"""The callback-polling (JSONP over GET) transport through aiohttp's test server."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

from bayeux_helpers import (
    HttpReply,
    both_http_servers,  # noqa: F401  (each test runs on both HTTP paths)
    broker_of,
    connect_message,
    events_in,
    get_raw,
    handshake_message,
    publish_message,
    reply_to,
    subscribe_message,
    wait_parked,
)

ANON = {"allow_anonymous": True}
CP = "callback-polling"


async def jsonp(client, messages, callback: str | None = "cb", **kwargs) -> HttpReply:
    """GET the mount with `message=<JSON>` (and `jsonp=<callback>` unless None)."""
    params = [("message", json.dumps(messages))]
    if callback is not None:
        params.append(("jsonp", callback))
    return await get_raw(client, params, **kwargs)


async def jsonp_messages(client, messages, callback: str = "cb") -> list[dict]:
    reply = await jsonp(client, messages, callback)
    assert reply.status == 200, reply.text
    assert reply.content_type == "text/javascript"
    return reply.jsonp(callback)


async def test_jsonp_handshake_is_wrapped_in_the_named_callback(make_client):
    client = await make_client(**ANON)
    reply = await jsonp(client, [handshake_message(connection_types=[CP], id="h")], "cb")
    assert reply.status == 200
    assert reply.content_type == "text/javascript"
    assert reply.text.startswith("cb([") and reply.text.endswith("]);")
    messages = reply.jsonp("cb")
    handshake = reply_to(messages, "/meta/handshake", "h")
    assert handshake["successful"] is True
    assert CP in handshake["supportedConnectionTypes"]


async def test_default_callback_name_is_jsonpcallback(make_client):
    client = await make_client(**ANON)
    reply = await jsonp(client, [handshake_message(connection_types=[CP])], callback=None)
    assert reply.status == 200
    assert reply.content_type == "text/javascript"
    assert reply_to(reply.jsonp("jsonpcallback"), "/meta/handshake")["successful"] is True


async def test_message_param_is_url_decoded(make_client):
    client = await make_client(**ANON)
    # Characters that must be percent-encoded in a query string: & = + # space and non-ASCII.
    text = "a&b=c+d #é"
    handshake = (await jsonp_messages(client, [handshake_message(connection_types=[CP])]))[0]
    client_id = handshake["clientId"]
    await jsonp_messages(client, [subscribe_message(client_id, "/enc")])
    query = "message=" + quote(json.dumps([publish_message(client_id, "/enc", text, id="p")]), safe="") + "&jsonp=cb"
    async with client.get("/cometd?" + query) as response:
        assert response.status == 200
        body = await response.text()
    ack = HttpReply(200, "text/javascript", response.headers, body).jsonp("cb")
    assert reply_to(ack, "/enc", "p")["successful"] is True
    replies = await jsonp_messages(client, [connect_message(client_id, connection_type=CP, id="c")])
    assert [e["data"] for e in events_in(replies)] == [text]


async def test_full_cycle_over_callback_polling(make_client):
    client = await make_client(timeout=5000, **ANON)
    handshake = reply_to(await jsonp_messages(client, [handshake_message(connection_types=[CP], id="h")]),
                         "/meta/handshake", "h")
    client_id = handshake["clientId"]
    first = await jsonp_messages(client, [connect_message(client_id, connection_type=CP, id="c1")])
    assert reply_to(first, "/meta/connect", "c1")["successful"] is True
    sub = await jsonp_messages(client, [subscribe_message(client_id, "/cp/room", id="s")])
    assert reply_to(sub, "/meta/subscribe", "s")["successful"] is True

    # Park a connect, then publish from another callback-polling session: the connect carries the event.
    publisher = reply_to(await jsonp_messages(client, [handshake_message(connection_types=[CP])]),
                         "/meta/handshake")["clientId"]
    async with asyncio.timeout(4):  # below the 5 s hold: only the publish can release it
        held = asyncio.create_task(jsonp_messages(client, [connect_message(client_id, connection_type=CP,
                                                                           id="c2")]))
        await wait_parked(broker_of(client), client_id)
        ack = await jsonp_messages(client, [publish_message(publisher, "/cp/room", {"n": 1}, id="p")])
        assert reply_to(ack, "/cp/room", "p")["successful"] is True
        replies = await held
    assert reply_to(replies, "/meta/connect", "c2")["successful"] is True
    events = events_in(replies)
    assert [(e["channel"], e["data"]) for e in events] == [("/cp/room", {"n": 1})]
    assert "clientId" not in events[0]
    assert broker_of(client).session(client_id).transport == CP


async def test_invalid_callback_name_is_refused(make_client):
    client = await make_client(**ANON)
    for callback in ("alert(1)//", "a b", "1abc", "cb;evil", "x" * 200, ""):
        reply = await jsonp(client, [handshake_message(connection_types=[CP])], callback)
        assert reply.status == 400, (callback, reply.status, reply.text)
        assert not reply.text.startswith(callback or "("), reply.text  # never echoed as script
        assert reply.content_type != "text/javascript"
    assert broker_of(client).sessions == {}  # and nothing was processed


async def test_dotted_callback_names_are_allowed(make_client):
    client = await make_client(**ANON)
    reply = await jsonp(client, [handshake_message(connection_types=[CP])], "jQuery123.cb_$")
    assert reply.status == 200
    assert reply_to(reply.jsonp("jQuery123.cb_$"), "/meta/handshake")["successful"] is True


async def test_bad_message_param_error_travels_inside_the_callback(make_client):
    client = await make_client(**ANON)
    reply = await get_raw(client, {"message": "{not json", "jsonp": "cb"})
    assert reply.status == 200  # a script tag cannot read the status
    assert reply.content_type == "text/javascript"
    error = reply.jsonp("cb")[0]
    assert error["successful"] is False
    assert error["error"].startswith("400::body is not valid JSON")


async def test_callback_polling_disabled_by_configuration(make_client):
    client = await make_client(transports="long-polling", **ANON)
    reply = await jsonp(client, [handshake_message(connection_types=[CP])])
    assert reply.status == 405


async def test_replies_forbid_content_sniffing(make_client):
    """A JSONP reply is script and a long-poll reply is JSON: with nosniff a browser runs neither as
    anything else."""
    client = await make_client(**ANON)
    script = await client.get("/cometd", params=[("message", json.dumps([handshake_message(connection_types=[CP])])),
                                                 ("jsonp", "cb")])
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    posted = await client.post("/cometd", json=[handshake_message()])
    assert posted.headers["X-Content-Type-Options"] == "nosniff"
