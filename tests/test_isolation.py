"""Per-user channels, meta and service channels: who receives what, over long-polling and websocket.

Negative checks use a barrier: after the publish under test, a marker is
published on `/sync` (which every agent receives, directly or through `/**`);
a session's events arrive in order, so whatever the agent did not receive
before the marker it will never receive.
"""

from __future__ import annotations

import pytest
from bayeux_helpers import broker_of
from ws_helpers import Agent, Browsers

PERSONAL = "/v2/me/interactions"
SYNC = "/sync"


@pytest.fixture
async def browsers(make_client):
    opened = Browsers()
    yield opened
    await opened.close()


@pytest.fixture(params=["long-polling", "websocket"])
def transport(request) -> str:
    return request.param


@pytest.fixture
def agents(browsers, transport):
    """`await agents(client, user, *subscriptions, auth=...)` -> a handshaken, subscribed Agent."""

    async def open_agent(client, user, *subscriptions, auth="ext"):
        agent = Agent(browsers.open(client), transport)
        await agent.handshake(user, auth=auth)
        for name in (*subscriptions, SYNC):
            reply = await agent.subscribe(name)
            assert reply["successful"] is True, reply
        return agent

    return open_agent


async def until_sync(*agents: Agent, marker: str) -> list[list]:
    """Every agent's events up to the `/sync` marker (marker excluded)."""
    results = []
    for agent in agents:
        events = await agent.receive_until(lambda m: m["channel"] == SYNC and m["data"] == marker)
        results.append([(m["channel"], m["data"]) for m in events[:-1]])
    return results


async def barrier(client, marker: str, *agents: Agent) -> list[list]:
    await broker_of(client).publish(SYNC, marker)
    return await until_sync(*agents, marker=marker)


async def test_personal_event_reaches_all_of_alices_sessions_and_nobody_else(make_client, agents):
    client = await make_client(allow_anonymous=True)
    broker = broker_of(client)
    alice_tab1 = await agents(client, "alice", PERSONAL, auth="basic")
    alice_tab2 = await agents(client, "alice", PERSONAL)
    bob = await agents(client, "bob", PERSONAL)
    carol = await agents(client, "carol", "/**")
    anon = await agents(client, None, "/**")
    assert len(broker.sessions_of("alice")) == 2

    assert await broker.publish_to_user("alice", PERSONAL, {"call": 1}) == 2
    got = await barrier(client, "m1", alice_tab1, alice_tab2, bob, carol, anon)
    assert got == [[(PERSONAL, {"call": 1})], [(PERSONAL, {"call": 1})], [], [], []]

    assert await broker.publish_to_user("bob", PERSONAL, {"call": 2}) == 1
    got = await barrier(client, "m2", alice_tab1, alice_tab2, bob, carol, anon)
    assert got == [[], [], [(PERSONAL, {"call": 2})], [], []]

    # carol subscribed /** only: her own personal events reach her, nobody else's.
    assert await broker.publish_to_user("carol", PERSONAL, {"call": 3}) == 1
    got = await barrier(client, "m3", alice_tab1, alice_tab2, bob, carol, anon)
    assert got == [[], [], [], [(PERSONAL, {"call": 3})], []]

    assert await broker.publish_to_user("nobody", PERSONAL, {"call": 4}) == 0


async def test_shared_publish_reaches_wildcard_and_channel_subscribers(make_client, agents):
    client = await make_client(allow_anonymous=True)
    broker = broker_of(client)
    alice = await agents(client, "alice", PERSONAL)
    bob = await agents(client, "bob", "/news")
    carol = await agents(client, "carol", "/**")
    anon = await agents(client, None, "/news/*")

    assert await broker.publish("/news", {"headline": 1}) == 2
    assert await broker.publish("/news/sport", {"headline": 2}) == 2  # carol (/**) and anon (/news/*)
    got = await barrier(client, "m", alice, bob, carol, anon)
    assert got == [
        [],
        [("/news", {"headline": 1})],
        [("/news", {"headline": 1}), ("/news/sport", {"headline": 2})],
        [("/news/sport", {"headline": 2})],
    ]


@pytest.mark.parametrize("pattern", ["/v2/me/**", "/v2/**", "/**", "/v2/me/*"])
async def test_wildcard_subscription_sees_own_personal_events_only(make_client, agents, pattern):
    client = await make_client()
    broker = broker_of(client)
    alice = await agents(client, "alice", pattern)
    bob = await agents(client, "bob", pattern)

    await broker.publish_to_user("bob", PERSONAL, "for bob")
    await broker.publish_to_user("alice", PERSONAL, "for alice")
    await broker.publish_to_user("bob", "/v2/me/calls", "bob call")
    await broker.publish_to_user("alice", "/v2/me/calls", "alice call")
    got = await barrier(client, "m", alice, bob)
    assert got == [
        [(PERSONAL, "for alice"), ("/v2/me/calls", "alice call")],
        [(PERSONAL, "for bob"), ("/v2/me/calls", "bob call")],
    ]


async def test_alice_with_both_exact_and_wildcard_gets_each_event_once(make_client, agents):
    client = await make_client()
    broker = broker_of(client)
    alice = await agents(client, "alice", PERSONAL, "/v2/me/**", "/**")
    assert await broker.publish_to_user("alice", PERSONAL, "once") == 1
    assert await barrier(client, "m", alice) == [[(PERSONAL, "once")]]


async def test_anonymous_cannot_subscribe_personal_channels_and_never_sees_them(make_client, agents):
    client = await make_client(allow_anonymous=True)
    broker = broker_of(client)
    alice = await agents(client, "alice", PERSONAL)
    anon = await agents(client, None)

    for name in (PERSONAL, "/v2/me/**", "/v2/me/*", [PERSONAL, "/news"]):
        reply = await anon.subscribe(name)
        assert reply["successful"] is False, reply
        assert reply["error"].startswith("403:"), reply
        assert "subscribe_denied" in reply["error"], reply
        assert reply["subscription"] == name
    # The denied batch subscribed nothing, not even its allowed part.
    await broker.publish("/news", "n")
    assert await barrier(client, "m0", alice, anon) == [[], []]

    for name in ("/**", "/v2/**"):
        reply = await anon.subscribe(name)
        assert reply["successful"] is True, reply

    assert await broker.publish_to_user("alice", PERSONAL, "secret") == 1
    await broker.publish("/news", "shared")
    got = await barrier(client, "m1", alice, anon)
    assert got == [[(PERSONAL, "secret")], [("/news", "shared")]]


async def test_client_publish_on_a_personal_channel_is_denied_and_delivered_to_nobody(make_client, agents):
    client = await make_client(allow_anonymous=True)
    alice = await agents(client, "alice", PERSONAL, "/v2/me/**")
    alice2 = await agents(client, "alice", "/**")
    bob = await agents(client, "bob", PERSONAL)
    carol = await agents(client, "carol", "/**")
    anon = await agents(client, None, "/**")

    for sender in (alice, bob, anon):
        for channel in (PERSONAL, "/v2/me/bob/x"):
            reply = await sender.publish(channel, {"forged": True})
            assert reply["successful"] is False, reply
            assert reply["error"].startswith("403:"), reply
            assert "publish_denied" in reply["error"], reply
    got = await barrier(client, "m", alice, alice2, bob, carol, anon)
    assert got == [[], [], [], [], []]


@pytest.mark.parametrize("meta", ["/meta/connect", "/meta/handshake", "/meta/**", "/meta/*", "/meta/custom"])
async def test_meta_channels_cannot_be_subscribed(make_client, agents, meta):
    client = await make_client()
    alice = await agents(client, "alice")
    reply = await alice.subscribe(meta)
    assert reply["successful"] is False, reply
    assert reply["error"].startswith("403:"), reply


async def test_meta_channels_cannot_be_published_and_are_never_broadcast(make_client, agents):
    client = await make_client()
    alice = await agents(client, "alice")
    carol = await agents(client, "carol", "/**")
    reply = await alice.publish("/meta/custom", {"x": 1})
    assert reply["successful"] is False, reply
    assert reply["error"].split(":")[0] in ("403", "405"), reply
    # A subscribe (a meta message) of alice is not seen by carol's /**.
    assert (await alice.subscribe("/news"))["successful"] is True
    got = await barrier(client, "m", alice, carol)
    assert got == [[], []]


async def test_service_channels_go_to_the_handler_and_back_to_the_caller_only(make_client, agents):
    client = await make_client(allow_anonymous=True)
    broker = broker_of(client)
    calls = []

    async def echo(session, message):
        calls.append((session.client_id, session.user_id, message["channel"], message["data"]))
        return {"echo": message["data"]}

    broker.on_service("/service/echo", echo)
    alice = await agents(client, "alice")
    bob = await agents(client, "bob", "/service/**")
    carol = await agents(client, "carol", "/**")

    reply = await alice.publish("/service/echo", {"q": 1})
    assert reply["successful"] is True, reply
    assert calls == [(alice.client_id, "alice", "/service/echo", {"q": 1})]
    got = await barrier(client, "m", alice, bob, carol)
    assert got == [[("/service/echo", {"echo": {"q": 1}})], [], []]

    # A service channel without a handler: acknowledged, broadcast to nobody.
    reply = await bob.publish("/service/other", "hello")
    assert reply["successful"] is True, reply
    got = await barrier(client, "m2", alice, bob, carol)
    assert got == [[], [], []]

