"""The Broker's public Python API: publishing, session lookups, lifecycle listeners, channel rules."""

from __future__ import annotations

import time

import orjson
import pytest
from bayeux_helpers import (
    broker_of,
    connect_message,
    disconnect_message,
    handshake_message,
    publish_message,
    subscribe_message,
    wait_parked,
)
from conftest import USERS, USERS_OPTION
from ws_helpers import Agent, Browsers, basic_auth, ext_auth, is_event, is_reply_to

from cometd_broker import BrokerConfig, CredentialsAuthenticator, create_app


@pytest.fixture
async def browsers(make_client):
    opened = Browsers()
    yield opened
    await opened.close()


@pytest.fixture(params=["long-polling", "websocket"])
def transport(request) -> str:
    return request.param


async def lp_session(browser, user=None, *subscriptions, first_connect=True):
    """Handshake over long-polling as `user` (None: anonymous), subscribe, do the first connect."""
    ext = ext_auth(user) if user else None
    status, replies = await browser.post([handshake_message(ext=ext)])
    assert status == 200 and replies[0]["successful"] is True, replies
    client_id = replies[0]["clientId"]
    for name in subscriptions:
        status, replies = await browser.post([subscribe_message(client_id, name)])
        assert replies[0]["successful"] is True, replies
    if first_connect:
        status, replies = await browser.post([connect_message(client_id)])
        assert replies[0]["successful"] is True, replies
    return client_id


async def poll(browser, client_id):
    """A connect asking not to be held (advice.timeout 0): the reply and whatever is queued."""
    status, replies = await browser.post([connect_message(client_id, timeout=0)])
    assert status == 200, replies
    return replies


# --------------------------------------------------------------------------- publish / publish_to_user


async def test_publish_returns_how_many_sessions_received_it(make_client, browsers):
    client = await make_client(allow_anonymous=True)
    broker = broker_of(client)
    assert await broker.publish("/news", "nobody listens") == 0
    a = browsers.open(client)
    b = browsers.open(client)
    c = browsers.open(client)
    alice = await lp_session(a, "alice", "/news")
    bob = await lp_session(b, "bob", "/news/*", "/news")
    anon = await lp_session(c, None, "/**")
    assert await broker.publish("/news", {"n": 1}, ext={"source": "api"}) == 3
    assert await broker.publish("/news/sport", {"n": 2}) == 2
    assert await broker.publish("/weather", {"n": 3}) == 1

    events = [m for m in await poll(a, alice) if is_event(m)]
    assert events == [{"channel": "/news", "data": {"n": 1}, "ext": {"source": "api", "replayId": 2}}]
    assert [m["data"] for m in await poll(b, bob) if is_event(m)] == [{"n": 1}, {"n": 2}]
    assert [m["data"] for m in await poll(c, anon) if is_event(m)] == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_publish_to_user_counts_that_users_subscribed_sessions(make_client, browsers):
    client = await make_client()
    broker = broker_of(client)
    await lp_session(browsers.open(client), "alice", "/v2/me/interactions")
    await lp_session(browsers.open(client), "alice", "/v2/me/**")
    await lp_session(browsers.open(client), "alice")  # not subscribed
    await lp_session(browsers.open(client), "bob", "/v2/me/interactions")
    assert await broker.publish_to_user("alice", "/v2/me/interactions", 1) == 2
    assert await broker.publish_to_user("alice", "/v2/me/other", 1) == 1
    assert await broker.publish_to_user("bob", "/v2/me/interactions", 1) == 1
    assert await broker.publish_to_user("carol", "/v2/me/interactions", 1) == 0
    assert await broker.publish_to_user("nobody", "/v2/me/interactions", 1) == 0


@pytest.mark.parametrize("channel", [
    "/news/*", "/news/**", "/**", "/*",  # wildcards
    "/meta/connect", "/meta/custom",  # meta
    "/service/echo", "/service",  # service
    "/v2/me/interactions", "/v2/me/a/b",  # per-user: needs publish_to_user
    "news", "/a//b", "/", "/a/**/b", "/has space",  # not channels
])
async def test_publish_rejects_misuse(make_client, channel):
    client = await make_client()
    broker = broker_of(client)
    with pytest.raises(ValueError):
        await broker.publish(channel, "x")


@pytest.mark.parametrize("channel", [
    "/news", "/v2/me", "/v2/other/x",  # shared: needs publish
    "/v2/me/*", "/v2/me/**",  # wildcards
    "/meta/connect", "/service/echo", "bad", "/v2/me//x",
])
async def test_publish_to_user_rejects_misuse(make_client, channel):
    client = await make_client()
    broker = broker_of(client)
    with pytest.raises(ValueError):
        await broker.publish_to_user("alice", channel, "x")


async def test_rejected_publish_delivers_nothing(make_client, browsers):
    client = await make_client()
    broker = broker_of(client)
    browser = browsers.open(client)
    alice = await lp_session(browser, "alice", "/**")
    for channel in ("/news/*", "/v2/me/interactions", "/meta/connect"):
        with pytest.raises(ValueError):
            await broker.publish(channel, "x")
    with pytest.raises(ValueError):
        await broker.publish_to_user("alice", "/news", "x")
    assert not [m for m in await poll(browser, alice) if is_event(m)]
    assert len(broker.session(alice).queue) == 0


async def test_a_fanout_is_serialized_once_and_shared_by_every_queue(make_client, browsers, monkeypatch):
    client = await make_client(allow_anonymous=True)
    broker = broker_of(client)
    ids = [await lp_session(browsers.open(client), user, "/news", "/v2/me/interactions")
           for user in ("alice", "bob", "carol")]
    ids.append(await lp_session(browsers.open(client), None, "/news"))
    ids.append(await lp_session(browsers.open(client), "alice", "/**"))

    serialized = []
    real_dumps = orjson.dumps

    def counting_dumps(value, *args, **kwargs):
        result = real_dumps(value, *args, **kwargs)
        serialized.append(result)
        return result

    monkeypatch.setattr(orjson, "dumps", counting_dumps)
    assert await broker.publish("/news", {"big": "x" * 1000}) == 5
    assert len(serialized) == 1, "one publish must serialize once"
    queues = [broker.session(client_id).queue._items for client_id in ids]
    assert all(len(queue) == 1 for queue in queues)
    shared = queues[0][0]
    assert all(queue[0] is shared for queue in queues), "every queue must hold the same bytes object"
    # The one serialization, with the event's replay id spliced in (no second serialization).
    assert orjson.loads(serialized[0]) == {"channel": "/news", "data": {"big": "x" * 1000}}
    assert orjson.loads(shared) == {"channel": "/news", "data": {"big": "x" * 1000}, "ext": {"replayId": 1}}

    # Per-user fan-out to every session of one user shares one serialization too.
    serialized.clear()
    assert await broker.publish_to_user("alice", "/v2/me/interactions", "p") == 2
    monkeypatch.undo()
    assert len(serialized) == 1
    alice_queues = [session.queue._items for session in broker.sessions_of("alice")]
    assert len(alice_queues) == 2
    assert alice_queues[0][-1] is alice_queues[1][-1]
    assert orjson.loads(alice_queues[0][-1]) == {"channel": "/v2/me/interactions", "data": "p",
                                                 "ext": {"replayId": 1}}
    # Nobody else got it.
    assert all(len(broker.session(client_id).queue) == 1 for client_id in ids[1:4])


# --------------------------------------------------------------------------- lookups


async def test_sessions_of_principal_of_and_session(make_client, browsers):
    client = await make_client(allow_anonymous=True)
    broker = broker_of(client)
    tab1 = await lp_session(browsers.open(client), "alice")
    tab2_browser = browsers.open(client)
    status, replies = await tab2_browser.post([handshake_message()], headers=basic_auth("alice"))
    tab2 = replies[0]["clientId"]
    bob = await lp_session(browsers.open(client), "bob")
    anon_browser = browsers.open(client)
    anon = await lp_session(anon_browser, None)

    assert {s.client_id for s in broker.sessions_of("alice")} == {tab1, tab2}
    assert [s.client_id for s in broker.sessions_of("bob")] == [bob]
    assert broker.sessions_of("carol") == []
    assert broker.sessions_of("unknown") == []

    assert broker.principal_of(tab1).user_id == "alice"
    assert broker.principal_of(tab2).user_id == "alice"
    assert broker.principal_of(bob).user_id == "bob"
    assert broker.principal_of(anon).user_id is None
    assert broker.principal_of(anon).anonymous is True
    assert broker.principal_of("no-such-client") is None

    session = broker.session(tab1)
    assert session is not None and session.client_id == tab1 and session.user_id == "alice"
    assert broker.session("no-such-client") is None
    # sessions_of returns a copy: mutating it does not touch the broker.
    broker.sessions_of("alice").clear()
    assert len(broker.sessions_of("alice")) == 2

    status, replies = await tab2_browser.post([disconnect_message(tab2)])
    assert status == 200, replies
    assert replies[0]["successful"] is True
    assert [s.client_id for s in broker.sessions_of("alice")] == [tab1]
    assert broker.session(tab2) is None and broker.principal_of(tab2) is None


# --------------------------------------------------------------------------- listeners


async def test_session_added_and_removed_on_disconnect(make_client, browsers):
    client = await make_client()
    broker = broker_of(client)
    added, removed = [], []
    broker.on_session_added(added.append)
    broker.on_session_removed(lambda session, reason: removed.append((session, reason)))

    browser = browsers.open(client)
    client_id = await lp_session(browser, "alice", "/news")
    assert [s.client_id for s in added] == [client_id]
    assert added[0].user_id == "alice"
    assert removed == []

    status, replies = await browser.post([disconnect_message(client_id)])
    assert status == 200, replies
    assert replies[0]["successful"] is True
    assert len(removed) == 1
    session, reason = removed[0]
    assert session is added[0]
    assert reason.startswith("402:") and "disconnect" in reason, reason
    assert await broker.publish("/news", "after") == 0


async def test_session_removed_on_expiry_via_sweep(make_client, browsers):
    client = await make_client(max_interval=2000)
    broker = broker_of(client)
    removed = []
    broker.on_session_removed(lambda session, reason: removed.append((session.client_id, reason)))
    browser = browsers.open(client)
    client_id = await lp_session(browser, "alice", "/news")

    assert broker.sweep(time.monotonic()) == 0
    assert removed == []
    assert broker.sweep(time.monotonic() + 2 + 1) == 1
    assert len(removed) == 1
    assert removed[0][0] == client_id
    assert "expired" in removed[0][1], removed
    assert broker.session(client_id) is None
    assert broker.sessions_of("alice") == []
    assert await broker.publish("/news", "x") == 0

    replies = await poll(browser, client_id)
    assert replies[0]["successful"] is False
    assert replies[0]["error"].startswith("402:"), replies
    assert replies[0]["advice"]["reconnect"] == "handshake"


async def test_a_parked_connect_keeps_the_session_alive_through_sweeps(make_client, browsers):
    client = await make_client(max_interval=1000)
    broker = broker_of(client)
    browser = browsers.open(client)
    client_id = await lp_session(browser, "alice", "/news")
    parked = browser.spawn(browser.post([connect_message(client_id)]))
    await wait_parked(broker, client_id)
    assert broker.sweep(time.monotonic() + 3600) == 0
    await broker.publish("/news", "kept")
    status, replies = await parked
    assert status == 200, replies
    assert [m["data"] for m in replies if is_event(m)] == ["kept"]


async def test_session_removed_as_a_slow_consumer(make_client, browsers):
    client = await make_client(max_queue=3)
    broker = broker_of(client)
    removed = []
    broker.on_session_removed(lambda session, reason: removed.append((session.client_id, reason)))
    slow_browser = browsers.open(client)
    slow = await lp_session(slow_browser, "alice", "/news")
    fast_browser = browsers.open(client)
    fast = await lp_session(fast_browser, "bob", "/news")

    for n in range(3):
        assert await broker.publish("/news", n) == 2
        assert [m["data"] for m in await poll(fast_browser, fast) if is_event(m)] == [n]
    assert removed == []
    assert await broker.publish("/news", 3) == 1  # only bob's queue took it
    assert len(removed) == 1
    assert removed[0][0] == slow
    assert "slow consumer" in removed[0][1], removed
    assert broker.session(slow) is None
    assert broker.session(fast) is not None

    replies = await poll(slow_browser, slow)
    assert replies[0]["successful"] is False
    assert "slow consumer" in replies[0]["error"], replies
    assert replies[0]["advice"]["reconnect"] == "handshake"
    assert [m["data"] for m in await poll(fast_browser, fast) if is_event(m)] == [3]


async def test_a_failing_listener_does_not_break_removal(make_client, browsers):
    client = await make_client()
    broker = broker_of(client)
    seen = []

    def broken(session, reason):
        raise RuntimeError("listener bug")

    broker.on_session_removed(broken)
    broker.on_session_removed(lambda session, reason: seen.append(session.client_id))
    browser = browsers.open(client)
    client_id = await lp_session(browser, "alice")
    status, replies = await browser.post([disconnect_message(client_id)])
    assert status == 200 and replies[0]["successful"] is True
    assert seen == [client_id]
    assert broker.session(client_id) is None


async def test_a_failing_session_added_listener_does_not_break_the_handshake(make_client, browsers, transport):
    """Like removal listeners, a buggy added-listener must not cost the client its reply or its socket."""
    client = await make_client()
    broker = broker_of(client)

    def broken(session):
        raise RuntimeError("listener bug")

    broker.on_session_added(broken)
    agent = Agent(browsers.open(client), transport)
    client_id = await agent.handshake("alice")
    assert broker.session(client_id) is not None
    assert [s.client_id for s in broker.sessions_of("alice")] == [client_id], "no orphaned half-made session"


# --------------------------------------------------------------------------- service handlers


async def test_service_handler_gets_the_session_and_its_answer_goes_to_the_caller(make_client, browsers, transport):
    client = await make_client()
    broker = broker_of(client)
    seen = []

    def add(session, message):
        seen.append((session.user_id, message["data"]))
        return sum(message["data"])

    broker.on_service("/service/add", add)
    alice = Agent(browsers.open(client), transport)
    await alice.handshake("alice")
    bob = Agent(browsers.open(client), transport)
    await bob.handshake("bob")
    assert (await bob.subscribe("/**"))["successful"] is True
    reply = await alice.publish("/service/add", [1, 2, 3])
    assert reply["successful"] is True, reply
    assert seen == [("alice", [1, 2, 3])]
    answer = (await alice.receive_until(lambda m: m["channel"] == "/service/add"))[-1]
    assert answer["data"] == 6
    await broker.publish("/sync", "m")
    assert [m["channel"] for m in await bob.receive_until(lambda m: m["channel"] == "/sync")] == ["/sync"]


@pytest.mark.parametrize("pattern", ["/news", "/service/*/x", "/meta/x", "service"])
async def test_on_service_rejects_non_service_patterns(make_client, pattern):
    client = await make_client()
    with pytest.raises(ValueError):
        broker_of(client).on_service(pattern, lambda session, message: None)


async def test_a_failing_service_handler_fails_only_that_publish(make_client, browsers, transport):
    """A handler that raises must cost its caller one publish, not the connection or the rest of the batch."""
    client = await make_client()
    broker = broker_of(client)

    def broken(session, message):
        raise RuntimeError("handler bug")

    broker.on_service("/service/broken", broken)
    agent = Agent(browsers.open(client), transport)
    client_id = await agent.handshake("alice")
    assert (await agent.subscribe("/news"))["successful"] is True

    failing = publish_message(client_id, "/service/broken", 1)
    after = publish_message(client_id, "/news", "after")
    if agent.peer is not None:
        await agent.peer.send(failing, after)
        replies = [await agent.peer.reply(failing), await agent.peer.reply(after)]
        assert not agent.peer.ws.closed
    else:
        status, body = await agent.browser.post([failing, after])
        assert status == 200, body
        replies = [next(m for m in body if is_reply_to(request)(m)) for request in (failing, after)]
    if replies[0]["successful"] is False:
        assert replies[0]["error"].split(":")[0].isdigit(), replies[0]
    assert replies[1]["successful"] is True, replies
    events = await agent.receive_until(lambda m: m["channel"] == "/news")
    assert [m["data"] for m in events] == ["after"]
    assert broker.session(client_id) is not None


# --------------------------------------------------------------------------- channel rules


RULES = "/announce/** subscribe=anyone publish=role:supervisor; /staff/** subscribe=authenticated"


async def rules_client(aiohttp_client):
    config = BrokerConfig(users=USERS_OPTION, allow_anonymous=True, channel_rules=RULES)
    authenticator = CredentialsAuthenticator(config.user_map, allow_anonymous=True,
                                             roles={"carol": ["supervisor"]})
    return await aiohttp_client(create_app(config, authenticator=authenticator))


async def test_channel_rules_are_enforced_for_clients(aiohttp_client, browsers):
    client = await rules_client(aiohttp_client)
    broker = broker_of(client)
    anon_browser, alice_browser, carol_browser = (browsers.open(client) for _ in range(3))
    anon = await lp_session(anon_browser, None, "/announce/**")  # subscribe=anyone
    alice = await lp_session(alice_browser, "alice", "/announce/all", "/staff/room")
    carol = await lp_session(carol_browser, "carol")

    # publish=role:supervisor: alice and anonymous are denied and nothing is delivered.
    for browser, client_id in ((alice_browser, alice), (anon_browser, anon)):
        status, replies = await browser.post([publish_message(client_id, "/announce/all", "forged")])
        assert replies[0]["successful"] is False, replies
        assert replies[0]["error"].startswith("403:"), replies
        assert "publish_denied" in replies[0]["error"], replies
    assert not [m for m in await poll(anon_browser, anon) if is_event(m)]
    assert not [m for m in await poll(alice_browser, alice) if is_event(m)]

    # carol has the supervisor role.
    status, replies = await carol_browser.post([publish_message(carol, "/announce/all", "real")])
    assert replies[0]["successful"] is True, replies
    assert [m["data"] for m in await poll(anon_browser, anon) if is_event(m)] == ["real"]
    assert [m["data"] for m in await poll(alice_browser, alice) if is_event(m)] == ["real"]

    # subscribe=authenticated: anonymous is denied, also through a wildcard reaching the channel.
    for pattern in ("/staff/room", "/staff/**", "/**"):
        status, replies = await anon_browser.post([subscribe_message(anon, pattern)])
        assert replies[0]["successful"] is False, (pattern, replies)
        assert "subscribe_denied" in replies[0]["error"], replies
    status, replies = await carol_browser.post([subscribe_message(carol, "/staff/**")])
    assert status == 200, replies
    assert replies[0]["successful"] is True, replies

    # Rules bind clients, not the server's own API.
    assert await broker.publish("/announce/all", "from the server") == 2
    assert await broker.publish("/staff/room", "memo") == 2


async def test_role_rule_without_roles_denies_everyone(make_client, browsers):
    client = await make_client(channel_rules="/announce/** subscribe=anyone publish=role:supervisor")
    browser = browsers.open(client)
    for user in USERS:
        client_id = await lp_session(browser, user, first_connect=False)
        status, replies = await browser.post([publish_message(client_id, "/announce/x", 1)])
        assert status == 200, replies
        assert replies[0]["successful"] is False, replies
        assert "publish_denied" in replies[0]["error"], replies
