"""The websocket transport end to end through aiohttp's test server, on the raw wire.

The transport pushes events as soon as they are queued while a /meta/connect is
held; the held connect is answered when its timeout passes. Tests assert what a
client observes: replies to every request, every event once and in order, and
every parked connect eventually answered.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import WSCloseCode, WSMsgType
from bayeux_helpers import (
    broker_of,
    connect_message,
    disconnect_message,
    handshake_message,
    publish_message,
    subscribe_message,
    wait_parked,
    wait_until,
)
from ws_helpers import (
    WAIT,
    Browser,
    Browsers,
    WsPeer,
    basic_auth,
    datas,
    ext_auth,
    is_event,
    on_channel,
)

ANON = {"allow_anonymous": True}


@pytest.fixture
async def browsers(make_client):
    opened = Browsers()
    yield opened
    await opened.close()


async def ws_session(browser: Browser, *subscriptions: str, user: str | None = None) -> WsPeer:
    """A websocket, handshaken, subscribed, first connect answered, second connect parked."""
    peer = await browser.websocket()
    client_id = await peer.handshake(user)
    for name in subscriptions:
        reply = await peer.subscribe(name)
        assert reply["successful"] is True, reply
    first = await peer.connect()
    assert first["successful"] is True, first
    await peer.send(connect_message(client_id, connection_type="websocket", id="parked"))
    return peer


# --------------------------------------------------------------------------- handshake


async def test_handshake_over_websocket(make_client, browsers):
    client = await make_client()
    peer = await browsers.open(client).websocket()
    request = handshake_message(connection_types=("websocket", "long-polling"), ext=ext_auth("alice"), id="hs")
    reply = await peer.request(request)
    assert reply["successful"] is True, reply
    assert reply["id"] == "hs"
    assert reply["version"] == "1.0"
    assert "websocket" in reply["supportedConnectionTypes"]
    assert reply["advice"]["reconnect"] == "retry"
    client_id = reply["clientId"]
    broker = broker_of(client)
    assert broker.principal_of(client_id).user_id == "alice"

    connect = await peer.connect(client_id)
    assert connect["successful"] is True, connect
    assert connect["clientId"] == client_id


async def test_handshake_over_websocket_with_basic_auth_on_the_upgrade(make_client, browsers):
    client = await make_client()
    peer = await browsers.open(client).websocket(headers=basic_auth("bob"))
    client_id = await peer.handshake()
    assert broker_of(client).principal_of(client_id).user_id == "bob"


async def test_denied_websocket_handshake_keeps_the_socket_usable(make_client, browsers):
    client = await make_client()
    peer = await browsers.open(client).websocket()
    bad = handshake_message(connection_types=("websocket",),
                            ext={"authentication": {"user": "alice", "password": "wrong"}})
    reply = await peer.request(bad)
    assert reply["successful"] is False
    assert reply["error"].startswith("403:"), reply
    assert reply["advice"]["reconnect"] == "none"
    # The same socket can still handshake with good credentials.
    client_id = await peer.handshake("alice")
    assert broker_of(client).session(client_id) is not None


async def test_http_handshake_then_websocket_connect_with_the_same_client_id(make_client, browsers):
    """aiocometd: handshake over long-polling, then a websocket reusing the clientId (cookie jar shared)."""
    client = await make_client()
    broker = broker_of(client)
    browser = browsers.open(client)
    status, replies = await browser.post([handshake_message(ext=ext_auth("alice"))])
    assert status == 200 and replies[0]["successful"] is True, replies
    client_id = replies[0]["clientId"]
    cookie = browser.cookie()
    assert cookie, "the HTTP handshake must set the BAYEUX_BROWSER cookie"

    peer = await browser.websocket()
    peer.client_id = client_id
    first = await peer.connect()
    assert first["successful"] is True, first
    assert first["clientId"] == client_id
    assert (await peer.subscribe("/feed"))["successful"] is True
    await peer.send(connect_message(client_id, connection_type="websocket"))
    await wait_parked(broker, client_id)
    assert await broker.publish("/feed", {"n": 1}) == 1
    event = await peer.expect(on_channel("/feed"))
    assert event["data"] == {"n": 1}
    assert "clientId" not in event

    # Another browser (its own cookie) cannot drive that session over its websocket.
    other = browsers.open(client)
    status, replies = await other.post([handshake_message(ext=ext_auth("bob"))])
    assert status == 200 and replies[0]["successful"] is True
    assert other.cookie() and other.cookie() != cookie
    intruder = await other.websocket()
    hijack = await intruder.request(connect_message(client_id, connection_type="websocket"))
    assert hijack["successful"] is False, hijack
    assert hijack["error"].startswith("402:"), hijack
    assert await broker.publish("/feed", {"n": 2}) == 1
    assert (await peer.expect(on_channel("/feed")))["data"] == {"n": 2}
    assert not [m for m in await intruder.quiet(0.2) if is_event(m)]


# --------------------------------------------------------------------------- connect


async def test_first_connect_answered_at_once_then_parked_connect_and_pushed_events(make_client, browsers):
    hold = 1500  # ms
    client = await make_client(timeout=hold)
    broker = broker_of(client)
    loop = asyncio.get_running_loop()
    peer = await browsers.open(client).websocket()
    client_id = await peer.handshake("alice")
    assert (await peer.subscribe("/feed"))["successful"] is True

    started = loop.time()
    first = await peer.connect()
    assert first["successful"] is True, first
    assert loop.time() - started < hold / 1000 / 2, "the first connect must not be held"
    assert first["advice"]["timeout"] == hold

    second = connect_message(client_id, connection_type="websocket", id="second")
    await peer.send(second)
    assert await peer.quiet(0.2) == [], "the second connect must be held while there is nothing to deliver"

    published = loop.time()
    for n in range(3):
        assert await broker.publish("/feed", n) == 1
    events = await peer.events(3, on_channel("/feed"))
    assert datas(events) == [0, 1, 2]
    assert loop.time() - published < hold / 1000 / 2, "events must not wait for the held connect's timeout"

    # The held connect is eventually answered, successfully.
    reply = await peer.reply(second, timeout=hold / 1000 + WAIT)
    assert reply["successful"] is True, reply

    # Next cycle: park again, events keep flowing, the connect is answered again.
    third = connect_message(client_id, connection_type="websocket", id="third")
    await peer.send(third)
    await wait_parked(broker, client_id)
    for n in range(3, 6):
        await broker.publish("/feed", n)
    assert datas(await peer.events(3, on_channel("/feed"))) == [3, 4, 5]
    assert (await peer.reply(third, timeout=hold / 1000 + WAIT))["successful"] is True
    assert not [m for m in peer.inbox if is_event(m)], peer.inbox


async def test_events_queued_before_a_connect_ride_on_its_reply(make_client, browsers):
    client = await make_client()
    broker = broker_of(client)
    peer = await browsers.open(client).websocket()
    await peer.handshake("alice")
    assert (await peer.subscribe("/feed"))["successful"] is True
    for n in range(5):
        await broker.publish("/feed", n)
    reply = await peer.connect()
    assert reply["successful"] is True
    assert datas(await peer.events(5, on_channel("/feed"))) == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- subscribe / publish


async def test_subscribe_publish_receive_100_events_in_order(make_client, browsers):
    client = await make_client()
    publisher = await ws_session(browsers.open(client), "/chat/room", user="alice")
    listener = await ws_session(browsers.open(client), "/chat/room", user="bob")

    requests = [publish_message(publisher.client_id, "/chat/room", {"seq": n}) for n in range(100)]
    for request in requests:
        await publisher.send(request)  # one frame each, not waiting for replies
    for request in requests:
        reply = await publisher.reply(request)
        assert reply["successful"] is True, reply
        assert "data" not in reply

    expected = [{"seq": n} for n in range(100)]
    assert datas(await listener.events(100, on_channel("/chat/room"))) == expected
    assert datas(await publisher.events(100, on_channel("/chat/room"))) == expected

    # Server-side publishes interleave in order too.
    broker = broker_of(client)
    for n in range(100, 200):
        assert await broker.publish("/chat/room", {"seq": n}) == 2
    assert datas(await listener.events(100, on_channel("/chat/room"))) == [{"seq": n} for n in range(100, 200)]
    assert not [m for m in await listener.quiet(0.1) if is_event(m)]


async def test_unsubscribe_stops_delivery(make_client, browsers):
    client = await make_client()
    broker = broker_of(client)
    peer = await ws_session(browsers.open(client), "/a", "/marker", user="alice")
    await broker.publish("/a", 1)
    assert (await peer.expect(on_channel("/a")))["data"] == 1

    reply = await peer.unsubscribe("/a")
    assert reply["successful"] is True, reply
    assert reply["subscription"] == "/a"
    assert await broker.publish("/a", 2) == 0
    publish = await peer.publish("/a", 3)
    assert publish["successful"] is True
    await broker.publish("/marker", "end")
    await peer.expect(on_channel("/marker"))
    assert not [m for m in peer.inbox if on_channel("/a")(m)], peer.inbox


async def test_disconnect_answers_the_parked_connect_and_ends_the_session(make_client, browsers):
    client = await make_client()
    broker = broker_of(client)
    peer = await ws_session(browsers.open(client), "/feed", user="alice")
    client_id = peer.client_id
    await wait_parked(broker, client_id)

    disconnect = disconnect_message(client_id)
    await peer.send(disconnect)
    reply = await peer.reply(disconnect)
    assert reply["successful"] is True, reply
    parked = await peer.expect(lambda m: m.get("channel") == "/meta/connect" and m.get("id") == "parked")
    assert parked["advice"]["reconnect"] == "none", parked
    assert broker.session(client_id) is None
    assert broker.sessions_of("alice") == []
    assert await broker.publish("/feed", "late") == 0

    again = await peer.request(connect_message(client_id, connection_type="websocket"))
    assert again["successful"] is False
    assert again["error"].startswith("402:"), again

    # The socket itself stays usable: a new handshake on it works.
    new_id = await peer.handshake("alice")
    assert new_id != client_id
    assert (await peer.connect())["successful"] is True


# --------------------------------------------------------------------------- malformed frames


async def test_empty_array_frame_is_tolerated(make_client, browsers):
    client = await make_client()
    peer = await ws_session(browsers.open(client), "/feed", user="alice")
    await peer.send_text("[]")
    assert await peer.quiet(0.3) == [], "an empty batch needs no reply"
    assert not peer.ws.closed
    reply = await peer.publish("/feed", "still here")
    assert reply["successful"] is True
    assert (await peer.expect(on_channel("/feed")))["data"] == "still here"


@pytest.mark.parametrize(("frame", "detail"), [
    ("{not json", "body is not valid JSON"),
    ("42", "body must be a JSON array of messages or one message object"),
    ("[1, 2]", "message 0 must be a JSON object"),
])
async def test_invalid_frame_gets_an_error_reply_and_the_socket_keeps_working(make_client, browsers, frame, detail):
    client = await make_client()
    peer = await ws_session(browsers.open(client), "/feed", user="alice")
    await peer.send_text(frame)
    error = await peer.expect(lambda m: m.get("channel") == "/meta/unsuccessful")
    assert error["successful"] is False
    assert error["error"].startswith("400::"), error
    assert detail in error["error"], error
    assert not peer.ws.closed
    reply = await peer.publish("/feed", "after")
    assert reply["successful"] is True, reply
    assert (await peer.expect(on_channel("/feed")))["data"] == "after"


async def test_message_without_channel_gets_channel_missing(make_client, browsers):
    client = await make_client()
    peer = await ws_session(browsers.open(client), user="alice")
    await peer.send_text('[{"id": "x1", "data": 1}]')
    reply = await peer.expect(lambda m: m.get("id") == "x1")
    assert reply["successful"] is False
    assert reply["error"] == "400::channel_missing"
    assert (await peer.publish("/feed", 1))["successful"] is True


async def test_oversized_frame_closes_only_that_connection(make_client, browsers):
    client = await make_client(max_message_size=2048)
    broker = broker_of(client)
    bystander = await ws_session(browsers.open(client), "/feed", user="bob")
    peer = await ws_session(browsers.open(client), user="alice")

    await peer.send(publish_message(peer.client_id, "/feed", "x" * 8192))
    closed = await peer.closed()
    assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), closed
    assert peer.ws.close_code == WSCloseCode.MESSAGE_TOO_BIG, peer.ws.close_code
    assert not [m for m in peer.inbox if is_event(m)]
    assert not [m for m in await bystander.quiet(0.2) if is_event(m)], "the oversized publish must not be delivered"

    # The server keeps serving: the other socket works, and a new socket can handshake.
    assert (await bystander.publish("/feed", "small"))["successful"] is True
    assert (await bystander.expect(on_channel("/feed")))["data"] == "small"
    fresh = await browsers.open(client).websocket()
    new_id = await fresh.handshake("alice")
    assert broker.session(new_id) is not None
    assert (await fresh.connect())["successful"] is True


# --------------------------------------------------------------------------- reconnects and transport switches


async def test_closed_websocket_keeps_the_session_until_expiry(make_client, browsers):
    client = await make_client()
    broker = broker_of(client)
    browser = browsers.open(client)
    peer = await ws_session(browser, "/feed", user="alice")
    client_id = peer.client_id
    await wait_parked(broker, client_id)
    await peer.ws.close()

    # Published right after the close: queued for the session, not lost on the dead socket.
    for n in range(5):
        assert await broker.publish("/feed", n) == 1
    assert broker.session(client_id) is not None
    assert broker.sweep(time.monotonic()) == 0

    again = await browser.websocket()
    again.client_id = client_id
    reply = await again.connect()
    assert reply["successful"] is True, reply
    assert datas(await again.events(5, on_channel("/feed"))) == [0, 1, 2, 3, 4]
    await again.send(connect_message(client_id, connection_type="websocket"))
    await broker.publish("/feed", 5)
    assert (await again.expect(on_channel("/feed")))["data"] == 5

    # Closed again and never reconnected: the session ends at expiry.
    await again.ws.close()
    await wait_until(lambda: broker.session(client_id) is not None and broker.session(client_id).sink is None,
                     what="the server noticing the closed websocket")
    window = (broker.config.interval + broker.config.max_interval) / 1000
    assert broker.sweep(time.monotonic() + window / 2) == 0
    assert broker.sweep(time.monotonic() + window + 1) == 1
    late = await browser.websocket()
    expired = await late.request(connect_message(client_id, connection_type="websocket"))
    assert expired["successful"] is False
    assert expired["error"].startswith("402:"), expired
    assert expired["advice"]["reconnect"] == "handshake"


async def test_events_published_while_the_socket_closes_are_not_lost(make_client, browsers):
    """Close and publish back to back, many times: every event reaches the next socket."""
    client = await make_client()
    broker = broker_of(client)
    browser = browsers.open(client)
    peer = await ws_session(browser, "/feed", user="alice")
    client_id = peer.client_id
    expected = []
    for round_ in range(20):
        await peer.ws.close()
        event = {"round": round_}
        expected.append(event)
        await broker.publish("/feed", event)
        peer = await browser.websocket()
        peer.client_id = client_id
        await peer.send(connect_message(client_id, connection_type="websocket"))
        assert (await peer.expect(on_channel("/feed")))["data"] == event, f"round {round_} lost its event"


async def test_switching_websocket_to_long_polling_and_back_loses_nothing(make_client, browsers):
    client = await make_client()
    broker = broker_of(client)
    browser = browsers.open(client)
    received: list = []

    # Long-polling handshake (aiocometd style), then websocket.
    status, replies = await browser.post([handshake_message(ext=ext_auth("alice"))])
    client_id = replies[0]["clientId"]
    status, replies = await browser.post([subscribe_message(client_id, "/feed"),
                                          connect_message(client_id, connection_type="long-polling")])
    assert all(m["successful"] for m in replies if "successful" in m), replies

    peer = await browser.websocket()
    peer.client_id = client_id
    await peer.send(connect_message(client_id, connection_type="websocket", id="ws-1"))
    await wait_parked(broker, client_id)
    for n in range(0, 10):
        await broker.publish("/feed", n)
    received += datas(await peer.events(10, on_channel("/feed")))

    # Switch to long-polling while the websocket stays open (its held connect is superseded).
    poll = browser.spawn(browser.post([connect_message(client_id, connection_type="long-polling")], timeout=WAIT))
    await wait_until(lambda: broker.session(client_id).sink is None, what="the long-poll taking over")
    await wait_parked(broker, client_id)
    for n in range(10, 20):
        await broker.publish("/feed", n)
    status, replies = await poll
    assert status == 200, replies
    received += [m["data"] for m in replies if is_event(m)]
    while len(received) < 20:
        status, replies = await browser.post([connect_message(client_id, connection_type="long-polling")])
        assert status == 200, replies
        received += [m["data"] for m in replies if is_event(m)]

    # Events queued between two requests (no transport attached to the session).
    for n in range(20, 25):
        await broker.publish("/feed", n)

    # Back to the same websocket.
    reply = await peer.request(connect_message(client_id, connection_type="websocket"))
    assert reply["successful"] is True, reply
    received += datas(await peer.events(5, on_channel("/feed")))

    # Once more to long-polling and back, this time while the long-poll is held.
    poll = browser.spawn(browser.post([connect_message(client_id, connection_type="long-polling")], timeout=WAIT))
    await wait_until(lambda: broker.session(client_id).sink is None, what="the long-poll taking over")
    await wait_parked(broker, client_id)
    await peer.send(connect_message(client_id, connection_type="websocket", id="ws-2"))
    status, replies = await poll  # the held long-poll is answered (superseded), without events
    connect = [m for m in replies if m.get("channel") == "/meta/connect"]
    assert connect, (status, replies)
    if connect[0]["successful"] is False:
        assert connect[0]["advice"]["reconnect"] == "retry", replies
    received += [m["data"] for m in replies if is_event(m)]
    await wait_until(lambda: broker.session(client_id).sink is not None, what="the websocket taking over")
    for n in range(25, 30):
        await broker.publish("/feed", n)
    received += datas(await peer.events(30 - len(received), on_channel("/feed")))

    # Every held connect was answered: the first websocket one when the long-poll took over.
    superseded = await peer.expect(lambda m: m.get("channel") == "/meta/connect" and m.get("id") == "ws-1")
    if superseded["successful"] is False:
        assert superseded["advice"]["reconnect"] == "retry", superseded
    assert received == list(range(30))
    assert not [m for m in await peer.quiet(0.2) if is_event(m)], "no duplicates"


async def test_switching_after_the_websocket_dropped(make_client, browsers):
    """The websocket dies, the client falls back to long-polling: queued events come on the first poll."""
    client = await make_client()
    broker = broker_of(client)
    browser = browsers.open(client)
    peer = await ws_session(browser, "/feed", user="alice")
    client_id = peer.client_id
    await broker.publish("/feed", 0)
    assert (await peer.expect(on_channel("/feed")))["data"] == 0
    await peer.ws.close()
    for n in range(1, 6):
        await broker.publish("/feed", n)
    status, replies = await browser.post([connect_message(client_id, connection_type="long-polling")])
    assert status == 200
    connect = [m for m in replies if m.get("channel") == "/meta/connect"]
    assert connect and connect[0]["successful"] is True, replies
    assert [m["data"] for m in replies if is_event(m)] == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- shutdown


async def test_shutdown_answers_the_parked_websocket_connect_with_handshake_advice(make_client, browsers):
    client = await make_client()
    broker = broker_of(client)
    peer = await ws_session(browsers.open(client), "/feed", user="alice")
    await wait_parked(broker, peer.client_id)

    closing = asyncio.get_running_loop().create_task(client.server.close())
    try:
        reply = await peer.expect(lambda m: m.get("channel") == "/meta/connect" and m.get("id") == "parked")
        assert reply["successful"] is False, reply
        assert reply["advice"]["reconnect"] == "handshake", reply
        closed = await peer.closed()
        assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert peer.ws.close_code == WSCloseCode.GOING_AWAY, peer.ws.close_code
    finally:
        async with asyncio.timeout(WAIT):
            await closing
    assert broker.sessions == {}
