"""The long-polling transport end to end through aiohttp's test server, on the raw wire."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import warnings

from bayeux_helpers import (
    both_http_servers,  # noqa: F401  (each test runs on both HTTP paths)
    broker_of,
    connect,
    connect_message,
    disconnect,
    events_in,
    handshake,
    handshake_id,
    handshake_message,
    open_session,
    post_raw,
    publish,
    publish_message,
    reply_to,
    send,
    subscribe,
    subscribe_message,
    unsubscribe,
    unsubscribe_message,
    wait_parked,
)
from conftest import TOKENS, USERS

ANON = {"allow_anonymous": True}
SLOW = 10.0  # bound for anything that must not be parked for the server's (long) default timeout


# --------------------------------------------------------------------------- handshake


async def test_handshake_reply_has_exactly_the_spec_fields(make_client):
    client = await make_client(**ANON)
    replies = await handshake(client, id="hs-1")
    assert len(replies) == 1
    reply = replies[0]
    required = {"channel", "version", "supportedConnectionTypes", "clientId", "successful", "advice", "id"}
    # minimumVersion is a MAY field of the reply; nothing else may appear.
    assert set(reply) - {"minimumVersion"} == required, reply
    assert reply["channel"] == "/meta/handshake"
    assert reply["successful"] is True
    assert reply["id"] == "hs-1"
    assert reply["version"] == "1.0"
    assert "long-polling" in reply["supportedConnectionTypes"]
    assert re.fullmatch(r"[A-Za-z0-9]{32,}", reply["clientId"]), reply["clientId"]  # >= 128 bits, alphanumeric
    assert reply["advice"] == {"reconnect": "retry", "interval": 0, "timeout": 25000}


async def test_handshake_client_ids_are_unique(make_client):
    client = await make_client(**ANON)
    ids = {await handshake_id(client) for _ in range(20)}
    assert len(ids) == 20


async def test_handshake_advice_reflects_configuration(make_client):
    client = await make_client(timeout=1234, interval=7, **ANON)
    reply = (await handshake(client))[0]
    assert reply["advice"] == {"reconnect": "retry", "interval": 7, "timeout": 1234}


async def test_handshake_without_common_transport_fails_listing_server_transports(make_client):
    client = await make_client(**ANON)
    replies = await handshake(client, connection_types=["flash", "iframe"], id="x")
    reply = reply_to(replies, "/meta/handshake", "x")
    assert reply["successful"] is False
    assert "clientId" not in reply
    assert reply["error"] == ("400::no common connection type: this server supports "
                              "websocket, long-polling, callback-polling")
    assert reply["supportedConnectionTypes"] == ["websocket", "long-polling", "callback-polling"]
    assert reply["advice"]["reconnect"] == "none"


async def test_handshake_transport_list_follows_configuration(make_client):
    client = await make_client(transports="long-polling", **ANON)
    ok = (await handshake(client, connection_types=["websocket", "long-polling"]))[0]
    assert ok["successful"] is True
    assert ok["supportedConnectionTypes"] == ["long-polling"]
    refused = (await handshake(client, connection_types=["websocket", "callback-polling"]))[0]
    assert refused["successful"] is False
    assert refused["error"] == "400::no common connection type: this server supports long-polling"


async def test_handshake_batched_with_other_messages_only_the_handshake_is_processed(make_client):
    client = await make_client(**ANON)
    listener = await open_session(client, subscriptions=["/chat/room"])
    other = await handshake_id(client)
    batch = [handshake_message(id="h"), subscribe_message(other, "/chat/other", id="s"),
             publish_message(other, "/chat/room", {"text": "ignored"}, id="p")]
    replies = await send(client, batch)
    assert len(replies) == 1, replies
    assert replies[0]["channel"] == "/meta/handshake" and replies[0]["id"] == "h"
    assert replies[0]["successful"] is True
    # The batched publish was ignored: nothing reached the listener.
    received = await connect(client, listener, timeout=0)
    assert events_in(received) == []
    assert broker_of(client).session(other).subscriptions == set()


# --------------------------------------------------------------------------- connect / subscribe / publish


async def test_first_connect_is_answered_at_once(make_client):
    client = await make_client(**ANON)  # default timeout 25 s: a parked first connect would time out below
    client_id = await handshake_id(client)
    async with asyncio.timeout(SLOW):
        started = time.monotonic()
        replies = await connect(client, client_id, id="c1")
        elapsed = time.monotonic() - started
    assert elapsed < 2
    reply = reply_to(replies, "/meta/connect", "c1")
    assert reply["successful"] is True
    assert reply["clientId"] == client_id
    assert reply["advice"]["reconnect"] == "retry"
    assert set(reply) <= {"channel", "successful", "clientId", "advice", "id", "ext", "error"}


async def test_subscribe_publish_receive_in_order_without_publisher_client_id(make_client):
    client = await make_client(timeout=300, **ANON)
    subscriber = await open_session(client)
    publisher = await open_session(client)
    sub = reply_to(await subscribe(client, subscriber, "/chat/room", id="s1"), "/meta/subscribe")
    assert sub == {"channel": "/meta/subscribe", "successful": True, "subscription": "/chat/room",
                   "clientId": subscriber, "id": "s1"}
    for n in range(5):
        ack = reply_to(await publish(client, publisher, "/chat/room", {"n": n}, id=f"p{n}"), "/chat/room")
        assert ack["successful"] is True and ack["id"] == f"p{n}"
    async with asyncio.timeout(SLOW):
        raw = await post_raw(client, [connect_message(subscriber, id="c")])
    assert raw.status == 200
    replies = raw.json()
    assert reply_to(replies, "/meta/connect", "c")["successful"] is True
    events = events_in(replies)
    assert [e["data"] for e in events] == [{"n": n} for n in range(5)]
    assert all(e["channel"] == "/chat/room" and "clientId" not in e for e in events)
    assert publisher not in raw.text  # never leaked to other clients


async def test_wildcard_subscriptions_receive_matching_channels(make_client):
    client = await make_client(**ANON)
    one = await open_session(client, subscriptions=["/chat/*"])
    many = await open_session(client, subscriptions=["/chat/**"])
    publisher = await handshake_id(client)
    await publish(client, publisher, "/chat/room", "a")
    await publish(client, publisher, "/chat/room/deep", "b")
    await publish(client, publisher, "/other", "c")
    assert [e["data"] for e in events_in(await connect(client, one, timeout=0))] == ["a"]
    assert [e["data"] for e in events_in(await connect(client, many, timeout=0))] == ["a", "b"]


async def test_unsubscribe_stops_delivery(make_client):
    client = await make_client(**ANON)
    subscriber = await open_session(client, subscriptions=["/news"])
    publisher = await handshake_id(client)
    await publish(client, publisher, "/news", "before")
    assert [e["data"] for e in events_in(await connect(client, subscriber, timeout=0))] == ["before"]
    reply = reply_to(await unsubscribe(client, subscriber, "/news", id="u"), "/meta/unsubscribe", "u")
    assert reply["successful"] is True and reply["subscription"] == "/news"
    await publish(client, publisher, "/news", "after")
    assert events_in(await connect(client, subscriber, timeout=0)) == []


async def test_disconnect_then_session_is_unknown(make_client):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    reply = reply_to(await disconnect(client, client_id, id="d"), "/meta/disconnect", "d")
    assert reply["successful"] is True and reply["clientId"] == client_id
    after = reply_to(await connect(client, client_id, id="c"), "/meta/connect", "c")
    assert after["successful"] is False
    assert after["error"].startswith("402::session_unknown"), after
    assert after["id"] == "c"
    assert broker_of(client).session(client_id) is None


async def test_disconnect_tells_its_parked_connect_none_and_later_connects_handshake(make_client):
    # The connect held when the client disconnects must not bring that client back; a connect that
    # comes later with the same clientId (a late retry, another tab) is an unknown session like any
    # other, and CometD answers those with reconnect "handshake" so the client can start again.
    client = await make_client(**ANON)
    client_id = await open_session(client)
    async with asyncio.timeout(SLOW):
        held = asyncio.create_task(connect(client, client_id, id="held"))
        await wait_parked(broker_of(client), client_id)
        assert reply_to(await disconnect(client, client_id, id="d"), "/meta/disconnect", "d")["successful"]
        parked = reply_to(await held, "/meta/connect", "held")
        late = reply_to(await connect(client, client_id, id="late"), "/meta/connect", "late")
    assert parked["successful"] is False and parked["advice"]["reconnect"] == "none", parked
    assert late["successful"] is False, late
    assert late["error"] == "402::session_unknown (disconnected by the client)", late
    assert late["advice"] == {"reconnect": "handshake", "interval": 0}, late


# --------------------------------------------------------------------------- batching and body formats


async def test_batch_replies_in_request_order_with_ids_echoed(make_client):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    batch = [subscribe_message(client_id, "/a", id="m1"), subscribe_message(client_id, "/b", id="m2"),
             publish_message(client_id, "/a", "x", id="m3"), unsubscribe_message(client_id, "/b", id="m4"),
             connect_message(client_id, id="m5")]
    async with asyncio.timeout(SLOW):
        replies = await send(client, batch)
    answers = [m for m in replies if "successful" in m]
    assert [(m["channel"], m["id"]) for m in answers] == [
        ("/meta/subscribe", "m1"), ("/meta/subscribe", "m2"), ("/a", "m3"),
        ("/meta/unsubscribe", "m4"), ("/meta/connect", "m5")]
    assert all(m["successful"] is True for m in answers)
    # The event published in the batch rides on the connect reply, after the replies.
    # The publisher's id is not forwarded; the event carries its replay id in ext.
    assert replies[-1] == {"channel": "/a", "data": "x", "ext": {"replayId": 1}}


async def test_connect_batched_with_subscribe_is_not_parked(make_client):
    client = await make_client(**ANON)  # 25 s hold: parking would hit the bound below
    client_id = await open_session(client)
    async with asyncio.timeout(SLOW):
        started = time.monotonic()
        replies = await send(client, [connect_message(client_id, id="c"),
                                      subscribe_message(client_id, "/x", id="s")])
        elapsed = time.monotonic() - started
    assert elapsed < 2
    assert reply_to(replies, "/meta/connect", "c")["successful"] is True
    assert reply_to(replies, "/meta/subscribe", "s")["successful"] is True
    assert [m["id"] for m in replies] == ["c", "s"]


async def test_single_object_body_is_accepted(make_client):
    client = await make_client(**ANON)
    raw = await post_raw(client, handshake_message(id="solo"))
    assert raw.status == 200
    replies = raw.json()
    assert isinstance(replies, list) and len(replies) == 1
    assert replies[0]["successful"] is True and replies[0]["id"] == "solo"


async def test_form_encoded_single_message_param(make_client):
    client = await make_client(**ANON)
    raw = await post_raw(client, data={"message": json.dumps([handshake_message(id="f1")])})
    assert raw.status == 200 and raw.content_type == "application/json"
    reply = reply_to(raw.json(), "/meta/handshake", "f1")
    assert reply["successful"] is True
    # A single object (not an array) in the parameter works too.
    client_id = reply["clientId"]
    raw = await post_raw(client, data={"message": json.dumps(connect_message(client_id, id="f2"))})
    assert reply_to(raw.json(), "/meta/connect", "f2")["successful"] is True


async def test_form_encoded_multiple_message_params(make_client):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    form = [("message", json.dumps(subscribe_message(client_id, "/form", id="a"))),
            ("message", json.dumps([publish_message(client_id, "/form", 1, id="b"),
                                    publish_message(client_id, "/form", 2, id="c")]))]
    raw = await post_raw(client, data=form)
    assert raw.status == 200
    assert [m["id"] for m in raw.json()] == ["a", "b", "c"]
    assert all(m["successful"] is True for m in raw.json())
    assert [e["data"] for e in events_in(await connect(client, client_id, timeout=0))] == [1, 2]


async def test_form_encoded_without_message_param_is_an_error(make_client):
    client = await make_client(**ANON)
    raw = await post_raw(client, data={"other": "x"})
    assert raw.status == 400
    assert raw.json()[0]["error"] == "400::missing the message parameter"


async def test_any_path_under_the_mount_works(make_client):
    client = await make_client(**ANON)
    client_id = await handshake_id(client, path="/cometd/handshake")
    assert reply_to(await connect(client, client_id, path="/cometd/connect"), "/meta/connect")["successful"]
    assert reply_to(await subscribe(client, client_id, "/p", path="/cometd/anything"),
                    "/meta/subscribe")["successful"]
    assert reply_to(await publish(client, client_id, "/p", 1, path="/cometd/deep/er/path"), "/p")["successful"]
    assert reply_to(await disconnect(client, client_id, path="/cometd/"), "/meta/disconnect")["successful"]
    outside = await post_raw(client, [handshake_message()], path="/elsewhere")
    assert outside.status == 404


async def test_replies_are_application_json(make_client):
    client = await make_client(**ANON)
    raw = await post_raw(client, [handshake_message()])
    assert raw.status == 200
    assert raw.content_type == "application/json"
    assert raw.headers["Content-Type"].startswith("application/json")


async def test_empty_array_is_answered_with_empty_array(make_client):
    client = await make_client(**ANON)
    raw = await post_raw(client, data=b"[]", headers={"Content-Type": "application/json"})
    assert raw.status == 200
    assert raw.content_type == "application/json"
    assert raw.json() == []


# --------------------------------------------------------------------------- parking


async def test_parked_connect_is_released_by_a_publish(make_client):
    client = await make_client(**ANON)  # 25 s hold: only the publish can release it in time
    subscriber = await open_session(client, subscriptions=["/live"])
    publisher = await handshake_id(client)
    async with asyncio.timeout(SLOW):
        parked = asyncio.create_task(connect(client, subscriber, id="held"))
        await wait_parked(broker_of(client), subscriber)
        assert not parked.done()
        started = time.monotonic()
        await publish(client, publisher, "/live", {"hello": "world"})
        replies = await parked
    assert time.monotonic() - started < 2
    assert reply_to(replies, "/meta/connect", "held")["successful"] is True
    assert events_in(replies) == [{"channel": "/live", "data": {"hello": "world"}, "ext": {"replayId": 1}}]


async def test_parked_connect_holds_for_the_timeout_when_nothing_arrives(make_client):
    client = await make_client(timeout=300, **ANON)
    client_id = await open_session(client)
    async with asyncio.timeout(SLOW):
        started = time.monotonic()
        replies = await connect(client, client_id, id="idle")
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2.0, elapsed
    reply = reply_to(replies, "/meta/connect", "idle")
    assert reply["successful"] is True
    assert events_in(replies) == []


async def test_client_advice_timeout_zero_is_answered_at_once(make_client):
    client = await make_client(**ANON)  # server would hold 25 s
    client_id = await open_session(client)
    async with asyncio.timeout(SLOW):
        started = time.monotonic()
        replies = await connect(client, client_id, timeout=0, id="now")
        elapsed = time.monotonic() - started
    assert elapsed < 2
    assert reply_to(replies, "/meta/connect", "now")["successful"] is True


async def test_client_advice_timeout_shortens_the_hold(make_client):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    async with asyncio.timeout(SLOW):
        started = time.monotonic()
        await connect(client, client_id, timeout=200)
        elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 2.0, elapsed


async def test_events_queued_before_connect_are_answered_at_once(make_client):
    client = await make_client(**ANON)
    subscriber = await open_session(client, subscriptions=["/q"])
    publisher = await handshake_id(client)
    await publish(client, publisher, "/q", "waiting")
    async with asyncio.timeout(SLOW):
        replies = await connect(client, subscriber)
    assert [e["data"] for e in events_in(replies)] == ["waiting"]


# --------------------------------------------------------------------------- authentication


async def test_handshake_without_credentials_is_denied(make_client):
    client = await make_client()
    reply = (await handshake(client, id="na"))[0]
    assert reply["successful"] is False
    assert reply["error"] == "403::handshake_denied"
    assert reply["advice"]["reconnect"] == "none"
    assert reply["id"] == "na"
    assert "clientId" not in reply


async def test_handshake_with_wrong_secret_is_denied_even_when_anonymous_allowed(make_client):
    client = await make_client(**ANON)
    auth = base64.b64encode(b"alice:wrong").decode()
    reply = (await handshake(client, headers={"Authorization": f"Basic {auth}"}))[0]
    assert reply["successful"] is False and reply["error"] == "403::handshake_denied"


async def test_handshake_with_basic_auth_binds_the_principal(make_client):
    client = await make_client()
    auth = base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()
    client_id = await handshake_id(client, headers={"Authorization": f"Basic {auth}"})
    principal = broker_of(client).principal_of(client_id)
    assert principal is not None and principal.user_id == "alice"


async def test_handshake_with_bearer_token_binds_the_principal(make_client):
    client = await make_client()
    client_id = await handshake_id(client, headers={"Authorization": f"Bearer {TOKENS['bob']}"})
    assert broker_of(client).principal_of(client_id).user_id == "bob"


async def test_handshake_with_ext_authentication_binds_the_principal(make_client):
    client = await make_client()
    client_id = await handshake_id(client, ext={"authentication": {"user": "carol", "password": USERS["carol"]}})
    assert broker_of(client).principal_of(client_id).user_id == "carol"
    token_id = await handshake_id(client, ext={"authentication": {"token": TOKENS["alice"]}})
    assert broker_of(client).principal_of(token_id).user_id == "alice"


async def test_anonymous_handshake_has_anonymous_principal(make_client):
    client = await make_client(**ANON)
    client_id = await handshake_id(client)
    assert broker_of(client).principal_of(client_id).anonymous


# --------------------------------------------------------------------------- browser cookie


async def test_browser_cookie_is_set_http_only_on_handshake(make_client):
    client = await make_client(**ANON)
    raw = await post_raw(client, [handshake_message()])
    cookies = [c for c in raw.set_cookies() if c.startswith("BAYEUX_BROWSER=")]
    assert len(cookies) == 1, raw.set_cookies()
    value = cookies[0].split(";")[0].split("=", 1)[1]
    assert re.fullmatch(r"[0-9a-f]{32}", value)
    attributes = [a.strip().lower() for a in cookies[0].split(";")[1:]]
    assert "httponly" in attributes
    assert "path=/" in attributes
    # The next handshake from the same browser reuses it instead of issuing a new one.
    again = await post_raw(client, [handshake_message()])
    assert not [c for c in again.set_cookies() if c.startswith("BAYEUX_BROWSER=")]
    client_id = again.json()[0]["clientId"]
    assert broker_of(client).session(client_id).browser_id == value


async def test_another_browsers_cookie_cannot_use_the_session(make_client):
    client = await make_client(**ANON)
    client_id = await open_session(client)
    intruder = {"BAYEUX_BROWSER": "0123456789abcdef0123456789abcdef"}
    stolen = reply_to(await connect(client, client_id, timeout=0, cookies=intruder), "/meta/connect")
    assert stolen["successful"] is False
    assert stolen["error"].startswith("402::session_unknown")
    stolen_publish = reply_to(await publish(client, client_id, "/x", 1, cookies=intruder), "/x")
    assert stolen_publish["successful"] is False
    # The real owner is unaffected.
    assert reply_to(await connect(client, client_id, timeout=0), "/meta/connect")["successful"] is True


# --------------------------------------------------------------------------- hygiene


async def test_serving_a_session_emits_no_warnings(make_client):
    """Creating the app and a full handshake/subscribe/publish/connect cycle must not warn
    (deprecations today are errors in a later aiohttp)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = await make_client(**ANON)
        client_id = await open_session(client, subscriptions=["/w"])
        await publish(client, client_id, "/w", 1)
        assert events_in(await connect(client, client_id, timeout=0))
    assert [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught] == []
