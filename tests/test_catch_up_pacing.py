"""A replay larger than a session's queue is paced by the queue draining, on every transport.

The broker's catch-up reads the event log a page at a time and waits for the session's queue to
drain before the next page. Whatever takes events out of the queue (an HTTP answer, a websocket
push) must say so, or the catch-up waits for the next connect (up to its hold time) per page. The
hold time here is 20 s: a replay of 10 x max_queue events must finish well inside one of them.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import orjson
from bayeux_helpers import both_http_servers, broker_of, connect_message, events_in, handshake_message, send
from ws_helpers import WsPeer, is_event

MAX_QUEUE = 10
EVENTS = 10 * MAX_QUEUE
HOLD_MS = 20_000
BOUND = 5.0  # seconds: a quarter of one hold
OPTIONS = {"allow_anonymous": True, "max_queue": MAX_QUEUE, "replay_page": 5, "timeout": HOLD_MS}

__all__ = ["both_http_servers"]  # every test below runs on the lean path and on aiohttp


async def _publish_all(client) -> None:
    broker = broker_of(client)
    for n in range(1, EVENTS + 1):
        await broker.publish("/feed", {"n": n})


def _replay_subscribe(client_id: str) -> dict:
    return {"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/feed",
            "ext": {"replay": {"/feed": 0}}}


async def test_long_polling_catch_up_is_paced_by_answers(make_client):
    client = await make_client(**OPTIONS)
    await _publish_all(client)
    [hello] = await send(client, handshake_message(ext={"replay": True}))
    client_id = hello["clientId"]
    await send(client, connect_message(client_id, timeout=0))
    await send(client, _replay_subscribe(client_id))
    started, seen = time.monotonic(), []
    async with asyncio.timeout(BOUND):
        while len(seen) < EVENTS:
            seen += [e["data"]["n"] for e in events_in(await send(client, connect_message(client_id)))]
    assert seen == list(range(1, EVENTS + 1))
    assert time.monotonic() - started < BOUND


async def test_callback_polling_catch_up_is_paced_by_answers(make_client):
    client = await make_client(**OPTIONS)
    await _publish_all(client)

    async def jsonp(message: dict) -> list[dict]:
        text = quote(orjson.dumps([message]).decode())
        response = await client.get(f"/cometd?jsonp=cb&message={text}")
        body = await response.read()
        assert body.startswith(b"cb(") and body.endswith(b");"), body[:80]
        return orjson.loads(body[3:-2])

    [hello] = await jsonp(handshake_message(connection_types=("callback-polling",), ext={"replay": True}))
    client_id = hello["clientId"]
    await jsonp(connect_message(client_id, connection_type="callback-polling", timeout=0))
    await jsonp(_replay_subscribe(client_id))
    seen: list[int] = []
    async with asyncio.timeout(BOUND):
        while len(seen) < EVENTS:
            replies = await jsonp(connect_message(client_id, connection_type="callback-polling"))
            seen += [e["data"]["n"] for e in events_in(replies)]
    assert seen == list(range(1, EVENTS + 1))


async def test_websocket_catch_up_is_paced_by_pushes(make_client):
    client = await make_client(**OPTIONS)
    await _publish_all(client)
    async with client.ws_connect("/cometd") as ws:
        peer = WsPeer(ws)
        hello = await peer.request(handshake_message(connection_types=("websocket",), ext={"replay": True}))
        peer.client_id = hello["clientId"]
        await peer.connect()
        await peer.send(connect_message(peer.client_id, connection_type="websocket"))  # held: pushes go out
        reply = await peer.request(_replay_subscribe(peer.client_id))
        assert reply["successful"] is True, reply
        events = await peer.events(EVENTS, is_event, timeout=BOUND)
    assert [e["data"]["n"] for e in events] == list(range(1, EVENTS + 1))
