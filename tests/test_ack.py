"""The ack extension: numbered batches in connect replies, resent until acknowledged, across transports."""

from __future__ import annotations

import asyncio

from bayeux_helpers import (
    both_http_servers,  # noqa: F401  (each test runs on both HTTP paths)
    broker_of,
    connect_message,
    events_in,
    handshake_message,
    reply_to,
    send,
    subscribe_message,
)

from cometd_broker.extensions.ack import AckState

ANON = {"allow_anonymous": True}


def test_ack_state_resends_only_unacknowledged_batches_in_order():
    state = AckState()
    assert state.send([b"1", b"2"]) == 1
    assert state.send([]) == 2
    assert state.send([b"3"]) == 3
    assert state.acknowledge(1) == [b"3"]  # batch 1 acknowledged, batch 3 comes back
    assert state.acknowledge(3) == []


def test_ack_state_treats_garbage_as_no_acknowledgement():
    for garbage in (None, "3", True, 2.5):
        state = AckState()
        state.send([b"a"])
        assert state.acknowledge(garbage) == [b"a"]


async def ack_session(target, **connect_extra) -> str:
    [reply] = await send(target, handshake_message(ext={"ack": True}))
    assert reply["successful"] is True and reply["ext"] == {"ack": True}
    client_id = reply["clientId"]
    replies = await send(target, connect_message(client_id, timeout=0, ext={"ack": 0}))
    assert reply_to(replies, "/meta/connect")["ext"] == {"ack": 1}
    replies = await send(target, subscribe_message(client_id, "/feed"))
    assert replies[0]["successful"] is True
    return client_id


async def test_a_lost_connect_reply_is_sent_again_then_forgotten(make_client):
    client = await make_client(**ANON)
    broker = broker_of(client)
    client_id = await ack_session(client)
    for n in range(3):
        await broker.publish("/feed", {"n": n})

    first = await send(client, connect_message(client_id, timeout=0, ext={"ack": 1}))
    batch = reply_to(first, "/meta/connect")["ext"]["ack"]
    assert [e["data"]["n"] for e in events_in(first)] == [0, 1, 2]

    # The reply was "lost": the client still acknowledges only the previous batch.
    await broker.publish("/feed", {"n": 3})
    again = await send(client, connect_message(client_id, timeout=0, ext={"ack": 1}))
    assert [e["data"]["n"] for e in events_in(again)] == [0, 1, 2, 3]
    batch = reply_to(again, "/meta/connect")["ext"]["ack"]

    done = await send(client, connect_message(client_id, timeout=0, ext={"ack": batch}))
    assert events_in(done) == []


async def test_events_wait_for_the_connect_over_websocket_and_survive_a_switch_to_long_polling(make_client):
    client = await make_client(**ANON)
    broker = broker_of(client)
    ws = await client.ws_connect("/cometd")

    async def over_ws(messages):
        await ws.send_json(messages if isinstance(messages, list) else [messages])
        async with asyncio.timeout(3):
            return await ws.receive_json()

    [reply] = await over_ws(handshake_message(ext={"ack": True}, connection_types=["websocket"]))
    client_id = reply["clientId"]
    await over_ws(connect_message(client_id, connection_type="websocket", ext={"ack": 0}))
    await over_ws(subscribe_message(client_id, "/feed"))

    await ws.send_json([connect_message(client_id, connection_type="websocket", ext={"ack": 1})])
    await asyncio.sleep(0.05)
    for n in range(5):
        await broker.publish("/feed", {"n": n})
    async with asyncio.timeout(3):
        frame = await ws.receive_json()
    # One frame: the released connect reply with its batch number, then the events.
    assert frame[0]["channel"] == "/meta/connect" and frame[0]["ext"] == {"ack": 2}
    assert [e["data"]["n"] for e in events_in(frame)] == [0, 1, 2, 3, 4]

    # The websocket dies before the client could acknowledge batch 2; it comes back over HTTP.
    await ws.close()
    await broker.publish("/feed", {"n": 5})
    replies = await send(client, connect_message(client_id, timeout=0, ext={"ack": 1}))
    assert [e["data"]["n"] for e in events_in(replies)] == [0, 1, 2, 3, 4, 5]


async def test_without_ack_nothing_is_kept(make_client):
    client = await make_client(**ANON)
    broker = broker_of(client)
    [reply] = await send(client, handshake_message())
    assert "ext" not in reply
    client_id = reply["clientId"]
    await send(client, connect_message(client_id, timeout=0))
    await send(client, subscribe_message(client_id, "/feed"))
    await broker.publish("/feed", 1)
    first = await send(client, connect_message(client_id, timeout=0))
    assert len(events_in(first)) == 1 and "ext" not in reply_to(first, "/meta/connect")
    assert events_in(await send(client, connect_message(client_id, timeout=0))) == []
