"""The per-request and per-session caps (max_batch, max_subscriptions) on long-polling over both HTTP
paths and on websocket: what passes a cap is refused whole with one specific error, nothing of it is
applied, and the session and the connection go on working."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from bayeux_helpers import both_http_servers, broker_of, get_raw  # noqa: F401  (each test runs on both HTTP paths)
from wire_clients import HttpConnection, handshake, open_connection

ANON = {"allow_anonymous": True}


@pytest.fixture(params=["long-polling", "websocket"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


def subscribes(client_id: str, *names: str) -> list[dict]:
    return [{"channel": "/meta/subscribe", "clientId": client_id, "subscription": name, "id": f"s{i}"}
            for i, name in enumerate(names)]


# --------------------------------------------------------------------------- max_batch


def too_many(count: int, limit: int) -> str:
    return (f"400::too_many_messages (this request carries {count} messages; max_batch is {limit}: "
            "send them in smaller batches)")


async def test_a_batch_over_max_batch_is_refused_whole(make_client, transport):
    client = await make_client(max_batch=5, **ANON)
    conn = await open_connection(client, transport)
    try:
        client_id = await handshake(conn)
        session = broker_of(client).session(client_id)
        names = [f"/room/{i}" for i in range(6)]
        status, replies = await conn.exchange(subscribes(client_id, *names))
        assert status == (400 if transport == "long-polling" else 200)
        assert replies == [{"channel": "/meta/unsuccessful", "successful": False, "error": too_many(6, 5),
                            "advice": {"reconnect": "retry", "interval": 0}}]
        assert session.subscriptions == set()  # none of it was processed
        status, replies = await conn.exchange(subscribes(client_id, *names[:5]))  # at the cap: accepted
        assert status == 200
        assert [r["successful"] for r in replies] == [True] * 5, replies
        assert session.subscriptions == set(names[:5])
    finally:
        await conn.close()


async def test_a_form_encoded_batch_counts_every_message_parameter(make_client):
    client = await make_client(max_batch=3, **ANON)
    conn = await HttpConnection.open(client)
    try:
        client_id = await handshake(conn)
        form = "application/x-www-form-urlencoded"
        two = json.dumps(subscribes(client_id, "/a", "/b"))
        body = urlencode([("message", two), ("message", two)]).encode()
        status, [reply] = await conn.exchange(None, raw=body, content_type=form)
        assert status == 400 and reply["error"] == too_many(4, 3)
        assert broker_of(client).session(client_id).subscriptions == set()
        status, replies = await conn.exchange(None, raw=urlencode([("message", two)]).encode(), content_type=form)
        assert status == 200 and [r["successful"] for r in replies] == [True, True]
    finally:
        await conn.close()


async def test_a_callback_polling_batch_over_max_batch_is_refused_inside_the_callback(make_client):
    client = await make_client(max_batch=2, **ANON)
    message = json.dumps([{"channel": "/meta/handshake", "version": "1.0",
                            "supportedConnectionTypes": ["callback-polling"]}] * 3)
    raw = await get_raw(client, {"message": message, "jsonp": "cb"})
    assert raw.status == 200  # a script tag cannot read the status: the error is in the callback
    [reply] = raw.jsonp("cb")
    assert reply["successful"] is False and reply["error"] == too_many(3, 2)
    assert not broker_of(client).sessions


async def test_a_body_of_tiny_messages_gets_one_small_error_by_default(make_client):
    """A 256 KiB body of `{}` messages used to earn a reply per message: megabytes for one request."""
    client = await make_client(**ANON)
    conn = await HttpConnection.open(client)
    try:
        limit = broker_of(client).config.max_batch
        count = (broker_of(client).config.max_message_size - 2) // 3
        assert count > limit
        status, replies = await conn.exchange(None, raw=b"[" + b",".join([b"{}"] * count) + b"]")
        assert status == 400 and replies[0]["error"] == too_many(count, limit)
        assert len(json.dumps(replies)) < 300
        await handshake(conn)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- max_subscriptions


def over_the_limit(held: int, added: int, limit: int) -> str:
    return (f"403::subscription_limit (this session holds {held} subscriptions and this subscribe adds {added}; "
            f"max_subscriptions is {limit}: unsubscribe first)")


async def test_a_subscribe_past_max_subscriptions_is_refused_whole(make_client, transport):
    client = await make_client(max_subscriptions=3, **ANON)
    conn = await open_connection(client, transport)
    try:
        client_id = await handshake(conn)
        session = broker_of(client).session(client_id)

        async def subscribe(subscription: str | list[str]) -> dict:
            _, [reply] = await conn.exchange([{"channel": "/meta/subscribe", "clientId": client_id,
                                               "subscription": subscription, "id": "s"}])
            return reply

        assert (await subscribe(["/a", "/b"]))["successful"] is True
        reply = await subscribe(["/c", "/d"])  # would make 4: none of it is applied
        assert reply["successful"] is False and reply["error"] == over_the_limit(2, 2, 3)
        assert reply["subscription"] == ["/c", "/d"]
        assert session.subscriptions == {"/a", "/b"}
        # What the session already holds and /service channels (request/response, nothing recorded)
        # do not count.
        assert (await subscribe(["/a", "/c", "/c", "/service/echo"]))["successful"] is True
        assert session.subscriptions == {"/a", "/b", "/c"}
        reply = await subscribe("/d/**")
        assert reply["error"] == over_the_limit(3, 1, 3)
        _, [reply] = await conn.exchange([{"channel": "/meta/unsubscribe", "clientId": client_id,
                                           "subscription": "/a", "id": "u"}])
        assert reply["successful"] is True
        assert (await subscribe("/d/**"))["successful"] is True  # room again after an unsubscribe
        assert session.subscriptions == {"/b", "/c", "/d/**"}
        _, [reply] = await conn.exchange([{"channel": "/d/x", "clientId": client_id, "data": "hi", "id": "p"}])
        assert reply["successful"] is True
        assert len(session.queue) == 1  # the new subscription works: the event waits for the next connect
    finally:
        await conn.close()
