"""Session lifecycle over long-polling: expiry, unknown sessions, superseded connects, multi-tab,
queue limits and clean shutdown."""

from __future__ import annotations

import asyncio
import time
import warnings

import aiohttp
import pytest
from bayeux_helpers import (
    both_http_servers,  # noqa: F401  (each test runs on both HTTP paths)
    broker_of,
    connect,
    connect_message,
    disconnect,
    events_in,
    handshake,
    handshake_id,
    open_session,
    post_raw,
    publish,
    reply_to,
    subscribe,
    wait_parked,
    wait_until,
)
from conftest import USERS

ANON = {"allow_anonymous": True}
HANDSHAKE_ADVICE = {"reconnect": "handshake", "interval": 0}


# --------------------------------------------------------------------------- expiry and unknown sessions


async def test_session_expires_without_connect(make_client):
    client = await make_client(max_interval=200, sweep_period=0.05, **ANON)
    broker = broker_of(client)
    client_id = await open_session(client)  # the connect reply starts the max_interval window
    started = time.monotonic()
    await wait_until(lambda: broker.session(client_id) is None, timeout=3, what="session expiry")
    assert time.monotonic() - started >= 0.15  # not before max_interval (minus scheduling slack)
    reply = reply_to(await connect(client, client_id, id="late"), "/meta/connect", "late")
    assert reply["successful"] is False
    assert reply["error"].startswith("402::session_unknown"), reply["error"]
    assert reply["advice"] == HANDSHAKE_ADVICE
    assert reply["id"] == "late"
    # Any other message of the expired session gets the same answer.
    other = reply_to(await subscribe(client, client_id, "/x"), "/meta/subscribe")
    assert other["successful"] is False and other["error"].startswith("402::session_unknown")
    # And the client can recover by handshaking again.
    assert await handshake_id(client)


async def test_session_that_keeps_connecting_does_not_expire(make_client):
    client = await make_client(max_interval=400, sweep_period=0.05, **ANON)
    client_id = await open_session(client)
    deadline = time.monotonic() + 1.0  # well past max_interval: it would have expired without connects
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        reply = reply_to(await connect(client, client_id, timeout=0), "/meta/connect")
        assert reply["successful"] is True, reply
    assert broker_of(client).session(client_id) is not None


async def test_parked_connect_longer_than_max_interval_keeps_session_alive(make_client):
    client = await make_client(timeout=600, max_interval=200, sweep_period=0.05, **ANON)
    client_id = await open_session(client)
    async with asyncio.timeout(5):
        reply = reply_to(await connect(client, client_id), "/meta/connect")  # held ~600 ms
    assert reply["successful"] is True
    assert broker_of(client).session(client_id) is not None


async def test_unknown_client_id(make_client):
    client = await make_client(**ANON)
    replies = await send_connect(client, "0123456789abcdef0123456789abcdef01234567", "u")
    assert replies == [{"channel": "/meta/connect", "successful": False, "id": "u",
                        "clientId": "0123456789abcdef0123456789abcdef01234567",
                        "error": "402::session_unknown", "advice": HANDSHAKE_ADVICE}]


async def send_connect(client, client_id: str, id: str) -> list[dict]:
    raw = await post_raw(client, [connect_message(client_id, id=id)])
    assert raw.status == 200
    return raw.json()


# --------------------------------------------------------------------------- superseded connect


@pytest.mark.parametrize("status", [None, 409])
async def test_superseded_connect_is_answered_and_newest_wins(make_client, status):
    options = {} if status is None else {"duplicate_connect_status": status}
    client = await make_client(**options, **ANON)  # 25 s hold: everything below must be released early
    broker = broker_of(client)
    subscriber = await open_session(client, subscriptions=["/dup"])
    publisher = await handshake_id(client)
    async with asyncio.timeout(10):
        first = asyncio.create_task(post_raw(client, [connect_message(subscriber, id="old")]))
        await wait_parked(broker, subscriber)
        parked_first = broker.session(subscriber).parked
        second = asyncio.create_task(post_raw(client, [connect_message(subscriber, id="new")]))
        old = await first
        await wait_until(lambda: broker.session(subscriber).parked not in (None, parked_first),
                         what="the newer connect to be parked")
        assert not second.done()
        await publish(client, publisher, "/dup", "for the newest")
        new = await second
    assert old.status == (status or 500)
    old_reply = reply_to(old.json(), "/meta/connect", "old")
    assert old_reply["successful"] is False
    assert "connect_superseded" in old_reply["error"]
    assert events_in(old.json()) == []
    assert new.status == 200
    assert reply_to(new.json(), "/meta/connect", "new")["successful"] is True
    assert [e["data"] for e in events_in(new.json())] == ["for the newest"]


# --------------------------------------------------------------------------- multiple tabs of one browser


async def test_second_tab_is_told_multiple_clients(make_client):
    client = await make_client(max_sessions_per_browser=1, multi_session_interval=1234, **ANON)
    broker = broker_of(client)
    # One TestClient = one cookie jar = one browser: both sessions share the BAYEUX_BROWSER cookie.
    tab1 = await open_session(client)
    tab2 = await open_session(client)
    assert broker.session(tab1).browser_id == broker.session(tab2).browser_id is not None
    async with asyncio.timeout(10):
        held = asyncio.create_task(connect(client, tab1, id="tab1"))
        await wait_parked(broker, tab1)
        started = time.monotonic()
        replies = await connect(client, tab2, id="tab2")  # would be held 25 s if parked
        assert time.monotonic() - started < 2
        assert not held.done()
        reply = reply_to(replies, "/meta/connect", "tab2")
        assert reply["successful"] is True
        assert reply["advice"]["multiple-clients"] is True
        assert reply["advice"]["interval"] == 1234
        assert reply["advice"]["reconnect"] == "retry"
        assert broker.session(tab2).parked is None
        held.cancel()


async def test_other_browser_is_not_limited_by_first_browsers_tabs(make_client):
    client = await make_client(max_sessions_per_browser=1, **ANON)
    broker = broker_of(client)
    tab1 = await open_session(client)
    async with asyncio.timeout(10):
        held = asyncio.create_task(connect(client, tab1))
        await wait_parked(broker, tab1)
        client.session.cookie_jar.clear()  # a different browser from here on
        other = await open_session(client)
        assert broker.session(other).browser_id != broker.session(tab1).browser_id
        held_other = asyncio.create_task(connect(client, other))
        await wait_parked(broker, other)
        held.cancel()
        held_other.cancel()


async def test_more_tabs_may_park_when_allowed(make_client):
    client = await make_client(max_sessions_per_browser=2, **ANON)
    broker = broker_of(client)
    tab1 = await open_session(client)
    tab2 = await open_session(client)
    async with asyncio.timeout(10):
        held1 = asyncio.create_task(connect(client, tab1))
        await wait_parked(broker, tab1)
        held2 = asyncio.create_task(connect(client, tab2))
        await wait_parked(broker, tab2)
        held1.cancel()
        held2.cancel()


async def test_browser_slot_is_freed_when_the_parked_connect_ends(make_client):
    client = await make_client(timeout=300, max_sessions_per_browser=1, **ANON)
    broker = broker_of(client)
    tab1 = await open_session(client)
    tab2 = await open_session(client)
    async with asyncio.timeout(10):
        await connect(client, tab1)  # parks ~300 ms, then answered: the slot is free again
        held = asyncio.create_task(connect(client, tab2))
        await wait_parked(broker, tab2)
        reply = reply_to(await held, "/meta/connect")
    assert "multiple-clients" not in reply["advice"]


# --------------------------------------------------------------------------- queue limits


async def test_full_queue_disconnects_slow_consumer(make_client):
    client = await make_client(max_queue=5, queue_full="disconnect", **ANON)
    broker = broker_of(client)
    slow = await open_session(client, subscriptions=["/flood"])
    fast = await open_session(client, subscriptions=["/flood"])
    publisher = await handshake_id(client)
    for n in range(10):
        ack = reply_to(await publish(client, publisher, "/flood", n), "/flood")
        assert ack["successful"] is True
        # The fast consumer keeps up; the slow one never connects.
        received = events_in(await connect(client, fast, timeout=0))
        assert [e["data"] for e in received] == [n]
    assert broker.session(slow) is None
    reply = reply_to(await connect(client, slow, id="c"), "/meta/connect", "c")
    assert reply["successful"] is False
    assert reply["error"].startswith("402::session_unknown")
    assert "slow consumer" in reply["error"]
    assert reply["advice"] == HANDSHAKE_ADVICE
    assert broker.session(fast) is not None


async def test_full_queue_drop_oldest_keeps_newest_in_order(make_client):
    client = await make_client(max_queue=5, queue_full="drop-oldest", **ANON)
    slow = await open_session(client, subscriptions=["/flood"])
    publisher = await handshake_id(client)
    for n in range(10):
        await publish(client, publisher, "/flood", n)
    async with asyncio.timeout(10):
        replies = await connect(client, slow, id="c")
    assert reply_to(replies, "/meta/connect", "c")["successful"] is True
    assert [e["data"] for e in events_in(replies)] == [5, 6, 7, 8, 9]
    assert broker_of(client).session(slow) is not None


# --------------------------------------------------------------------------- shutdown


async def test_shutdown_answers_parked_connect_with_handshake_advice(make_client):
    client = await make_client(**ANON)  # 25 s hold: only the shutdown can answer it in time
    broker = broker_of(client)
    client_id = await open_session(client)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with asyncio.timeout(10):
            held = asyncio.create_task(post_raw(client, [connect_message(client_id, id="held")]))
            await wait_parked(broker, client_id)
            await client.app.shutdown()
            raw = await held
    assert caught == [], [str(w.message) for w in caught]
    assert raw.status == 200
    reply = reply_to(raw.json(), "/meta/connect", "held")
    assert reply["successful"] is False
    assert reply["advice"]["reconnect"] == "handshake"
    assert reply["error"].startswith("503::server_shutdown")
    assert broker.sessions == {}
    # While stopping, new handshakes are refused with advice to handshake later.
    refused = (await handshake(client))[0]
    assert refused["successful"] is False
    assert refused["advice"]["reconnect"] == "handshake"


async def test_closing_the_server_answers_parked_connect(make_client):
    client = await make_client(**ANON)
    broker = broker_of(client)
    client_id = await open_session(client)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with asyncio.timeout(10):
            held = asyncio.create_task(post_raw(client, [connect_message(client_id, id="held")]))
            await wait_parked(broker, client_id)
            await client.server.close()
            raw = await held
    assert caught == [], [str(w.message) for w in caught]
    reply = reply_to(raw.json(), "/meta/connect", "held")
    assert reply["successful"] is False
    assert reply["advice"]["reconnect"] == "handshake"


async def test_disconnect_releases_a_parked_connect(make_client):
    client = await make_client(**ANON)  # 25 s hold: only the disconnect can answer it in time
    broker = broker_of(client)
    client_id = await open_session(client)
    async with asyncio.timeout(10):
        held = asyncio.create_task(connect(client, client_id, id="held"))
        await wait_parked(broker, client_id)
        reply = reply_to(await disconnect(client, client_id, id="bye"), "/meta/disconnect", "bye")
        assert reply["successful"] is True
        replies = await held
    answer = reply_to(replies, "/meta/connect", "held")
    assert answer["successful"] is False
    assert answer["error"].startswith("402::session_unknown")
    assert broker.session(client_id) is None


async def test_session_whose_client_vanished_mid_poll_still_expires(make_client):
    # The client goes away while its connect is parked (tab closed, network lost). aiohttp's test
    # server cancels the handler when the connection drops; the session must then expire after
    # max_interval like any other session that stops connecting.
    client = await make_client(timeout=20000, max_interval=200, sweep_period=0.05, **ANON)
    broker = broker_of(client)
    client_id = await open_session(client)
    async with asyncio.timeout(10):
        held = asyncio.create_task(connect(client, client_id))
        await wait_parked(broker, client_id)
        held.cancel()  # closes the HTTP connection
        await wait_until(lambda: broker.session(client_id) is None or broker.session(client_id).parked is None,
                         what="the server to notice the abandoned connect")
        await wait_until(lambda: broker.session(client_id) is None, timeout=3,
                         what="the abandoned session to expire (max_interval=200 ms)")
    reply = reply_to(await connect(client, client_id), "/meta/connect")
    assert reply["error"].startswith("402::session_unknown")


async def test_tabs_handshaking_at_once_keep_their_sessions_under_the_last_cookie(make_client):
    """A browser restoring tabs: each cookie-less handshake gets its own cookie and the browser keeps
    the last. Every tab's session must accept that cookie; another user's fresh cookie must not."""
    client = await make_client()
    url = client.make_url("/cometd")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async def handshake_as(user: str) -> tuple[str, str]:
            body = [{"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"],
                     "ext": {"authentication": {"user": user, "password": USERS[user]}}}]
            async with http.post(url, json=body) as response:
                reply = (await response.json())[0]
                return reply["clientId"], response.cookies["BAYEUX_BROWSER"].value

        tabs = [await handshake_as("alice") for _ in range(3)]
        last_cookie = tabs[-1][1]
        for client_id, _ in tabs:
            connect = [{"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"}]
            async with http.post(url, json=connect, headers={"Cookie": f"BAYEUX_BROWSER={last_cookie}"}) as response:
                assert (await response.json())[0]["successful"] is True

        _, bobs_cookie = await handshake_as("bob")
        connect = [{"channel": "/meta/connect", "clientId": tabs[0][0], "connectionType": "long-polling"}]
        async with http.post(url, json=connect, headers={"Cookie": f"BAYEUX_BROWSER={bobs_cookie}"}) as response:
            reply = (await response.json())[0]
        assert reply["successful"] is False and reply["error"].startswith("402::session_unknown"), reply
