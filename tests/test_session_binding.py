"""A session is bound to its browser cookie: knowing a clientId is not enough to drive it.

A clientId is no secret (log lines and the admin API show it). Once a session has been used with the
BAYEUX_BROWSER cookie it is bound to, every request naming it must carry that cookie, over
long-polling, callback-polling and websocket alike, on both HTTP paths and through the cluster's
relay; a session never used with a cookie (a client that keeps none) goes on without one.

Each test speaks raw Bayeux through `Client`: a browser with its own cookie jar, or a stranger who
sends a fixed cookie (or none) whatever the server sets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp.test_utils import TestClient
from bayeux_helpers import (
    MOUNT,
    both_http_servers,  # noqa: F401  (each test runs on both HTTP paths)
    broker_of,
    connect_message,
    disconnect_message,
    events_in,
    handshake_message,
    publish_message,
    reply_to,
    subscribe_message,
    unsubscribe_message,
)
from conftest import TOKENS_OPTION, USERS_OPTION, LeanTestServer
from ws_helpers import COOKIE, WAIT, WsPeer, ext_auth, is_event

from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import ENDPOINT

Message = dict[str, Any]
TRANSPORTS = ("long-polling", "callback-polling", "websocket")
EVENTS = "/v2/me/interactions"  # a per-user channel: alice's events reach only alice's sessions
KEEP = "keep"  # a Client that keeps the cookies the server sets, as a browser does
# What a stranger presents with a victim's clientId. "another-browser" is the cookie the broker
# issued to another real browser (bob's); the others were never issued by the broker.
HIJACKS = ("no-cookie", "made-up", "never-issued", "another-browser")


class Client:
    """Raw Bayeux over any of the three transports, with a real cookie jar (`cookie=KEEP`) or a
    fixed cookie (a value, or None for none) sent on every request and every websocket upgrade."""

    def __init__(self, url: str, cookie: str | None = KEEP) -> None:
        self.url = url
        keep = cookie == KEEP
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True) if keep else aiohttp.DummyCookieJar())
        self.headers = {} if keep or cookie is None else {"Cookie": f"{COOKIE}={cookie}"}
        self.peer: WsPeer | None = None

    def cookie(self) -> str | None:
        return next((m.value for m in self.http.cookie_jar if m.key == COOKIE), None)

    async def send(self, transport: str, *messages: Message) -> list[Message]:
        """One batch; its replies, and any events that came with them."""
        batch = json.dumps(list(messages))
        async with asyncio.timeout(WAIT):
            if transport == "long-polling":
                async with self.http.post(self.url, data=batch, headers={
                        "Content-Type": "application/json", **self.headers}) as response:
                    assert response.status == 200, await response.text()
                    return await response.json()
            if transport == "callback-polling":
                async with self.http.get(self.url, params={"message": batch, "jsonp": "cb"},
                                         headers=self.headers) as response:
                    text = await response.text()
                assert response.status == 200 and text.startswith("cb(") and text.endswith(");"), text
                return json.loads(text[3:-2])
        peer = await self.websocket()
        await peer.send_text(batch)
        got = [await peer.reply(message) for message in messages]
        events = [m for m in peer.inbox if is_event(m)]
        peer.inbox[:] = [m for m in peer.inbox if not is_event(m)]
        return got + events

    async def websocket(self) -> WsPeer:
        if self.peer is None:
            self.peer = WsPeer(await self.http.ws_connect(self.url, headers=self.headers))
        return self.peer

    async def handshake(self, transport: str, user: str) -> str:
        [reply] = await self.send(transport, handshake_message(connection_types=(transport,), ext=ext_auth(user)))
        assert reply["successful"] is True, reply
        return reply["clientId"]

    async def close(self) -> None:
        if self.peer is not None:
            await self.peer.ws.close()
        await self.http.close()


@pytest.fixture
async def clients():
    """`clients(server, cookie=KEEP)` -> a new Client of that server, closed at teardown."""
    opened: list[Client] = []

    def open_client(server: TestClient, cookie: str | None = KEEP) -> Client:
        opened.append(Client(str(server.make_url(MOUNT)), cookie))
        return opened[-1]

    yield open_client
    for client in opened:
        await client.close()


def refused(reply: Message) -> bool:
    return (reply["successful"] is False and reply["error"].startswith("402::session_unknown")
            and reply["advice"]["reconnect"] == "handshake")


async def open_victim(server: TestClient, clients, transport: str) -> tuple[Client, str]:
    """Alice's browser: handshaken, subscribed to her events and used with its cookie (first connect).
    Over websocket the browser already holds its cookie from the page's HTTP handshake, and the
    upgrade carries it."""
    victim = clients(server)
    if transport == "websocket":
        await victim.handshake("long-polling", "alice")
        assert victim.cookie() is not None
    client_id = await victim.handshake(transport, "alice")
    [sub] = await victim.send(transport, subscribe_message(client_id, EVENTS))
    assert sub["successful"] is True, sub
    first = reply_to(await victim.send(transport, connect_message(client_id, connection_type=transport)),
                     "/meta/connect")
    assert first["successful"] is True, first
    assert broker_of(server).session(client_id).cookie_seen
    return victim, client_id


async def hijack_cookie(server: TestClient, clients, hijack: str) -> str | None:
    if hijack == "no-cookie":
        return None
    if hijack == "made-up":
        return "deadbeef"
    if hijack == "never-issued":
        return secrets.token_hex(16)  # well-formed: 32 hex digits, as the broker's own
    other = clients(server)  # another real browser, with a cookie the broker issued to it
    await other.handshake("long-polling", "bob")
    assert other.cookie() is not None
    return other.cookie()


async def attempt_everything(stranger: Client, transport: str, client_id: str) -> list[Message]:
    """Every request a stranger might send naming the session, each alone; all the answers."""
    got: list[Message] = []
    for message in (subscribe_message(client_id, "/v2/me/stolen"), connect_message(client_id, connection_type=transport,
                    timeout=0), unsubscribe_message(client_id, EVENTS), publish_message(client_id, "/chat", "x"),
                    disconnect_message(client_id)):
        got += await stranger.send(transport, message)
    return got


async def victim_receives(victim: Client, transport: str, client_id: str) -> list[Any]:
    """Alice's browser connects again: the events it gets."""
    if transport == "websocket":  # pushed at once, or with the connect's reply
        peer = await victim.websocket()
        await peer.send(connect_message(client_id, connection_type=transport, timeout=0))
        return [(await peer.expect(is_event))["data"]]
    replies = await victim.send(transport, connect_message(client_id, connection_type=transport, timeout=0))
    assert reply_to(replies, "/meta/connect")["successful"] is True, replies
    return [event["data"] for event in events_in(replies)]


# --------------------------------------------------------------------------- hijack attempts


@pytest.mark.parametrize("hijack", HIJACKS)
@pytest.mark.parametrize("attacker_transport", TRANSPORTS)
@pytest.mark.parametrize("victim_transport", TRANSPORTS)
async def test_a_session_used_with_its_cookie_cannot_be_driven_without_it(
        make_client, clients, victim_transport, attacker_transport, hijack):
    server = await make_client()
    broker = broker_of(server)
    victim, client_id = await open_victim(server, clients, victim_transport)
    stranger = clients(server, await hijack_cookie(server, clients, hijack))
    await broker.publish_to_user("alice", EVENTS, {"n": 1})  # queued (or pushed): alice's alone

    answers = await attempt_everything(stranger, attacker_transport, client_id)
    replies = [m for m in answers if "successful" in m]
    assert len(replies) == 5 and all(refused(reply) for reply in replies), replies
    assert events_in(answers) == []
    if stranger.peer is not None:
        assert not [m for m in await stranger.peer.quiet(0.1) if is_event(m)]

    # The session is untouched: same subscriptions, still alive, and its own browser gets the event.
    session = broker.session(client_id)
    assert session is not None and session.subscriptions == {EVENTS}
    assert await victim_receives(victim, victim_transport, client_id) == [{"n": 1}]
    assert broker.stats.unknown_sessions == 5


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_owner_drives_its_session_across_transports_with_its_cookie(make_client, clients, transport):
    """The cookie, not the connection, is what counts: the same browser may use any transport."""
    server = await make_client()
    victim, client_id = await open_victim(server, clients, "long-polling")
    for other in TRANSPORTS:
        reply = reply_to(await victim.send(other, subscribe_message(client_id, f"/v2/me/{other}")), "/meta/subscribe")
        assert reply["successful"] is True, reply
    await broker_of(server).publish_to_user("alice", EVENTS, {"n": 2})
    if transport == "websocket":
        peer = await victim.websocket()
        await peer.send(connect_message(client_id, connection_type="websocket", timeout=0))
        assert (await peer.expect(is_event))["data"] == {"n": 2}
    else:
        assert await victim_receives(victim, transport, client_id) == [{"n": 2}]


# --------------------------------------------------------------------------- clients that keep no cookies


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_client_that_keeps_no_cookies_works_end_to_end(make_client, clients, transport):
    server = await make_client()
    broker = broker_of(server)
    cookieless = clients(server, None)  # ignores the cookie the HTTP handshake sets
    client_id = await cookieless.handshake(transport, "alice")
    for message in (subscribe_message(client_id, EVENTS), subscribe_message(client_id, "/chat"),
                    connect_message(client_id, connection_type=transport)):
        reply = reply_to(await cookieless.send(transport, message), message["channel"])
        assert reply["successful"] is True, reply
    for n in range(3):
        await broker.publish_to_user("alice", EVENTS, {"n": n})
        answers = await cookieless.send(transport, publish_message(client_id, "/chat", n))
        assert reply_to(answers, "/chat")["successful"] is True, answers
        got = [event["data"] for event in events_in(answers)]  # a websocket's pushed events may come first
        if transport == "websocket":
            peer = await cookieless.websocket()
            await peer.send(connect_message(client_id, connection_type="websocket", timeout=0))
            got += [(await peer.expect(is_event))["data"] for _ in range(2 - len(got))]
        else:
            got += await victim_receives(cookieless, transport, client_id)
        assert got == [{"n": n}, n]
    session = broker.session(client_id)
    assert session is not None and not session.cookie_seen
    [bye] = await cookieless.send(transport, disconnect_message(client_id))
    assert bye["successful"] is True and broker.session(client_id) is None


async def test_a_client_that_keeps_no_cookies_still_refuses_another_browsers_cookie(make_client, clients):
    server = await make_client()
    cookieless = clients(server, None)
    client_id = await cookieless.handshake("long-polling", "alice")
    stranger = clients(server, await hijack_cookie(server, clients, "another-browser"))
    for transport in TRANSPORTS:
        answers = await stranger.send(transport, connect_message(client_id, connection_type=transport, timeout=0))
        assert refused(reply_to(answers, "/meta/connect")), answers
    reply = reply_to(await cookieless.send("long-polling", connect_message(client_id, timeout=0)), "/meta/connect")
    assert reply["successful"] is True, reply


async def test_the_cookie_is_required_from_the_first_request_that_carried_it(make_client, clients):
    """An HTTP handshake without a cookie is issued one; until a request carries it the session
    goes on without; after that, not."""
    server = await make_client()
    cookieless = clients(server, None)
    client_id = await cookieless.handshake("long-polling", "alice")
    issued = broker_of(server).session(client_id).browser_id
    for _ in range(2):
        reply = reply_to(await cookieless.send("long-polling", connect_message(client_id, timeout=0)), "/meta/connect")
        assert reply["successful"] is True, reply
    keeping = clients(server, issued)  # the client starts sending the cookie it was given
    reply = reply_to(await keeping.send("long-polling", connect_message(client_id, timeout=0)), "/meta/connect")
    assert reply["successful"] is True, reply
    reply = reply_to(await cookieless.send("long-polling", connect_message(client_id, timeout=0)), "/meta/connect")
    assert refused(reply), reply


async def test_a_websocket_session_handshaken_without_a_cookie_is_never_bound_later(make_client, clients):
    """Its upgrade carried no cookie and none can be set now: the first cookie that comes along
    must not bind it, or a stranger's cookie would lock its cookie-less owner out."""
    server = await make_client()
    cookieless = clients(server, None)
    client_id = await cookieless.handshake("websocket", "alice")
    assert broker_of(server).session(client_id).browser_id is None
    stranger = clients(server, await hijack_cookie(server, clients, "another-browser"))
    # Its clientId is all it has: whoever knows it may drive it (as any client that keeps no cookies).
    reply = reply_to(await stranger.send("long-polling", connect_message(client_id, timeout=0)), "/meta/connect")
    assert reply["successful"] is True, reply
    reply = reply_to(await cookieless.send("websocket", connect_message(client_id, connection_type="websocket",
                                                                        timeout=0)), "/meta/connect")
    assert reply["successful"] is True, reply
    assert broker_of(server).session(client_id).browser_id is None


# --------------------------------------------------------------------------- tabs of one browser


async def test_sibling_tabs_handshaking_at_once_each_move_to_the_cookie_the_browser_kept(make_client, clients):
    """Two tabs handshake before the browser has a cookie: each reply sets a new one and the browser
    keeps the last, which both tabs then send. Each session may move to it (same user, both just
    issued), even one already used with its own cookie; from then on it needs the kept one."""
    server = await make_client()
    broker = broker_of(server)
    first_tab, second_tab = clients(server, None), clients(server, None)
    first = await first_tab.handshake("long-polling", "alice")
    second = await second_tab.handshake("long-polling", "alice")
    cookie_a, cookie_b = broker.session(first).browser_id, broker.session(second).browser_id
    assert cookie_a != cookie_b
    with_a, with_b = clients(server, cookie_a), clients(server, cookie_b)
    reply = reply_to(await with_a.send("long-polling", connect_message(first, timeout=0)), "/meta/connect")
    assert reply["successful"] is True and broker.session(first).cookie_seen  # used with its own cookie
    for client_id in (first, second):
        reply = reply_to(await with_b.send("long-polling", connect_message(client_id, timeout=0)), "/meta/connect")
        assert reply["successful"] is True, reply
        assert broker.session(client_id).browser_id == cookie_b
    for client_id in (first, second):  # no cookie: no longer good for either
        reply = reply_to(await first_tab.send("long-polling", connect_message(client_id, timeout=0)), "/meta/connect")
        assert refused(reply), reply


async def test_a_just_issued_cookie_of_another_user_is_no_sibling(make_client, clients):
    server = await make_client()
    broker = broker_of(server)
    alice_tab, bob_tab = clients(server, None), clients(server, None)
    alice = await alice_tab.handshake("long-polling", "alice")
    bob = await bob_tab.handshake("long-polling", "bob")
    bobs_cookie = clients(server, broker.session(bob).browser_id)
    reply = reply_to(await bobs_cookie.send("long-polling", connect_message(alice, timeout=0)), "/meta/connect")
    assert refused(reply), reply


async def test_a_flood_of_refused_messages_logs_a_few_lines_not_one_each(make_client, clients, caplog):
    """Anyone who knows a clientId can send refused messages; the log stays readable: at most a
    burst of lines, and the next line says how many were held back."""
    server = await make_client()
    _, client_id = await open_victim(server, clients, "long-polling")
    stranger = clients(server, None)
    batch = [publish_message(client_id, "/chat", n) for n in range(300)]
    with caplog.at_level(logging.INFO, logger="cometd_broker"):
        replies = await stranger.send("long-polling", *batch)
    assert len(replies) == 300 and all(refused(reply) for reply in replies)
    lines = [r for r in caplog.records if "not its browser cookie" in r.getMessage()]
    assert 1 <= len(lines) <= 10, len(lines)


async def test_the_browser_cookie_is_httponly_and_same_site_lax(make_client):
    """No cross-site page's request carries the cookie (SameSite=Lax), and no script reads it."""
    server = await make_client()
    response = await server.post(MOUNT, json=[handshake_message(ext=ext_auth("alice"))])
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("BAYEUX_BROWSER=")
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=lax", "path=/"} <= attributes


# --------------------------------------------------------------------------- the cluster's relay


@pytest.fixture
async def two_processes(aiohttp_client, http_server, redis_server):
    """Two brokers on one Redis: a long-poll naming a session of the other is relayed to its owner."""
    with redis.Redis.from_url(redis_server.url) as admin:
        admin.flushall()

    async def make() -> TestClient:
        app = create_app(BrokerConfig(redis=redis_server.url, users=USERS_OPTION, tokens=TOKENS_OPTION))
        return await aiohttp_client(LeanTestServer(app) if http_server == "lean" else app)

    return await make(), await make()


@pytest.mark.parametrize("transport", ("long-polling", "callback-polling"))
async def test_a_relayed_request_needs_the_cookie_as_a_direct_one(two_processes, clients, transport):
    owner, relay = two_processes
    victim, client_id = await open_victim(owner, clients, transport)
    assert client_id[:8] == owner.app[ENDPOINT].router.tag != relay.app[ENDPOINT].router.tag
    await broker_of(owner).publish_to_user("alice", EVENTS, {"n": 3})
    for hijack in HIJACKS:
        stranger = clients(relay, await hijack_cookie(relay, clients, hijack))
        answers = await stranger.send(transport, connect_message(client_id, connection_type=transport, timeout=0))
        assert refused(reply_to(answers, "/meta/connect")), (hijack, answers)
        assert events_in(answers) == []
    assert broker_of(relay).stats.forwarded == len(HIJACKS)  # each was relayed and refused by the owner
    # The victim's own browser, through the other process: a cookie is sent to a host whatever its port.
    through_relay = Client(str(relay.make_url(MOUNT)))
    through_relay.http = victim.http
    replies = await through_relay.send(transport, connect_message(client_id, connection_type=transport, timeout=0))
    assert reply_to(replies, "/meta/connect")["successful"] is True, replies
    assert [event["data"] for event in events_in(replies)] == [{"n": 3}]
    assert broker_of(relay).stats.forwarded == len(HIJACKS) + 1

