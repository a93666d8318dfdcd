"""The official CometD JavaScript client (npm `cometd` 9 + `cometd-nodejs-client` 2) against a
real broker subprocess, over long-polling and over websocket.

cometd-nodejs-client installs an XMLHttpRequest shim and `ws`'s WebSocket on a global
`window`, so the CometD client registers its websocket transport too; the script registers
only the transport under test, so a websocket test cannot silently fall back to HTTP.

Scripts: tests/interop/node/cometd_client.mjs (one JSON line per observation).
"""

from __future__ import annotations

import re

import aiohttp
import pytest

pytest_plugins = ["node_harness"]  # the Node-client fixtures (tests/interop/node_harness.py)

TRANSPORTS = ["long-polling", "websocket"]
USERS = "alice:alice-secret"
SCRIPT = "cometd_client.mjs"


def meta(client, channel: str, **fields):
    return client.of("meta", channel=channel, **fields)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_roundtrip_50_messages_in_order(broker_process, node_client, transport):
    broker = broker_process("--allow-anonymous")
    client = await node_client(SCRIPT, url=broker.url, scenario="roundtrip", transport=transport, count=50,
                               channel="/interop/roundtrip")
    await client.expect_success()

    [handshake] = client.of("handshake")
    assert handshake["successful"] is True
    assert handshake["transport"] == transport
    assert re.fullmatch(r"[0-9a-z]{20,}", handshake["clientId"])
    assert handshake["advice"]["reconnect"] == "retry"
    [subscribe] = client.of("subscribe")
    assert subscribe["successful"] is True and subscribe["subscription"] == "/interop/roundtrip"

    acks = client.of("publish_ack")
    assert [a["seq"] for a in acks] == list(range(50))
    assert all(a["successful"] is True and a["channel"] == "/interop/roundtrip" for a in acks)
    messages = client.of("message")
    assert [m["data"] for m in messages] == [{"seq": i, "text": f"message {i}"} for i in range(50)]
    assert all(m["channel"] == "/interop/roundtrip" for m in messages)

    [unsubscribe] = client.of("unsubscribe")
    assert unsubscribe["successful"] is True and unsubscribe["subscription"] == "/interop/roundtrip"
    [disconnect] = client.of("disconnect")
    assert disconnect["successful"] is True
    # Every reply to this client carried its own clientId, never another one.
    assert {e["clientId"] for e in client.of("meta") if "clientId" in e} == {handshake["clientId"]}
    # Nothing failed, except that the connect held while the client disconnected may be answered
    # (websocket: in the disconnect reply's frame) as ended by that disconnect.
    failures = [(e["channel"], e.get("error")) for e in client.of("meta") if e.get("successful") is False]
    assert set(failures) <= {("/meta/connect", "402::session_unknown (disconnected by the client)")}, failures
    assert len(meta(client, "/meta/handshake")) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_receives_messages_from_python_publisher(broker_process, node_client, http_publisher, transport):
    broker = broker_process("--allow-anonymous")
    listener = await node_client(SCRIPT, url=broker.url, scenario="listen", transport=transport, count=20,
                                 channel="/interop/news")
    await listener.wait_event("subscribe", successful=True)
    publisher = await http_publisher(broker.url)
    for seq in range(20):
        await publisher.publish("/interop/news", {"seq": seq, "from": "python"})
    await listener.expect_success()
    assert [m["data"] for m in listener.of("message")] == [{"seq": i, "from": "python"} for i in range(20)]
    assert {m["channel"] for m in listener.of("message")} == {"/interop/news"}
    assert len(listener.of("handshake", successful=True)) == 1
    # A delivered event must not reveal the publisher's clientId.
    assert publisher.client_id not in str(listener.of("message"))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_receives_messages_from_another_cometd_client(broker_process, node_client, transport):
    broker = broker_process("--allow-anonymous")
    listener = await node_client(SCRIPT, name="listener", url=broker.url, scenario="listen", transport=transport,
                                 count=30, channel="/interop/chat")
    await listener.wait_event("subscribe", successful=True)
    # The publisher uses the other transport, so both transports meet on one channel.
    other = TRANSPORTS[1 - TRANSPORTS.index(transport)]
    publisher = await node_client(SCRIPT, name="publisher", url=broker.url, scenario="publish", transport=other,
                                  count=30, channel="/interop/chat")
    await publisher.expect_success()
    await listener.expect_success()
    assert [a["seq"] for a in publisher.of("publish_ack", successful=True)] == list(range(30))
    assert [m["data"] for m in listener.of("message")] == [{"seq": i, "from": "cometd"} for i in range(30)]
    # A delivered event must not reveal the publisher's clientId.
    publisher_id = publisher.of("handshake")[0]["clientId"]
    assert publisher_id not in str(listener.of("message"))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_handshake_with_credentials_succeeds(broker_process, node_client, transport):
    broker = broker_process("--users", USERS)
    client = await node_client(SCRIPT, url=broker.url, scenario="handshake", transport=transport,
                               user="alice", password="alice-secret", expect="success")
    await client.expect_success()
    [handshake] = client.of("handshake")
    assert handshake["successful"] is True
    assert handshake["transport"] == transport
    assert client.of("disconnect", successful=True)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "alice-secret"), (None, None)],
                         ids=["wrong-password", "unknown-user", "no-credentials"])
async def test_handshake_denied(broker_process, node_client, transport, user, password):
    broker = broker_process("--users", USERS)
    client = await node_client(SCRIPT, url=broker.url, scenario="handshake", transport=transport,
                               user=user, password=password, expect="denied")
    await client.expect_success()
    [handshake] = client.of("handshake")
    assert handshake["successful"] is False
    assert handshake["error"] == "403::handshake_denied"
    assert handshake["advice"]["reconnect"] == "none"
    assert "clientId" not in handshake
    # reconnect=none: the client gave up instead of retrying the handshake.
    assert len(meta(client, "/meta/handshake")) == 1
    assert [e["status"] for e in client.of("status")] == ["disconnected"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_throttled_handshake_backs_off_for_the_lockout_then_handshakes_again(broker_process, node_client,
                                                                                   transport):
    broker = broker_process("--users", USERS, "--login-max-failures", "2", "--login-window", "2")
    async with aiohttp.ClientSession() as http:  # someone guessed alice's password from this address
        for _ in range(2):
            async with http.post(broker.url, json=[{"channel": "/meta/handshake", "version": "1.0",
                                                    "supportedConnectionTypes": ["long-polling"],
                                                    "ext": {"authentication": {"user": "alice",
                                                                               "password": "guess"}}}]) as response:
                assert (await response.json())[0]["error"] == "403::handshake_denied"
    # The handshake callback runs for each attempt; linger past the lockout so the retry is seen.
    client = await node_client(SCRIPT, url=broker.url, scenario="handshake", transport=transport,
                               user="alice", password="alice-secret", expect="success", linger_ms=10000)
    await client.expect_success()
    throttled, accepted = client.of("handshake")
    assert throttled["successful"] is False
    assert throttled["error"].startswith("429::too_many_failed_logins"), throttled
    assert throttled["advice"]["reconnect"] == "handshake" and 0 < throttled["advice"]["interval"] <= 2000
    assert accepted["successful"] is True
    # The client waited out the advised interval instead of hammering the locked handshake.
    assert accepted["t"] - throttled["t"] >= throttled["advice"]["interval"] - 50
    assert len(meta(client, "/meta/handshake")) == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("crash", [True, False], ids=["crash", "graceful"])
async def test_rehandshake_after_broker_restart(broker_process, restart_broker, node_client, http_publisher,
                                                transport, crash):
    """The broker restarts (SIGKILL, or SIGTERM with its shutdown advice): the new broker does not
    know the clientId, the client re-handshakes by itself, re-subscribes from its /meta/handshake
    listener and receives what is published afterwards."""
    broker = broker_process("--allow-anonymous")
    client = await node_client(SCRIPT, url=broker.url, scenario="listen", transport=transport, count=2,
                               channel="/interop/restart")
    await client.wait_event("subscribe", successful=True, handshake=1)
    before = await http_publisher(broker.url)
    await before.publish("/interop/restart", {"seq": 0})
    await client.wait_event("message", handshake=1)
    first_id = client.of("handshake")[0]["clientId"]
    await client.held_connect()  # so that a graceful stop has a parked connect to answer

    broker = restart_broker(broker, crash=crash)
    resubscribed = await client.wait_event("subscribe", successful=True, handshake=2, timeout=15)
    assert resubscribed["transport"] == transport
    after = await http_publisher(broker.url)
    await after.publish("/interop/restart", {"seq": 1})
    await client.expect_success()

    assert [(m["data"], m["handshake"]) for m in client.of("message")] == [({"seq": 0}, 1), ({"seq": 1}, 2)]
    handshakes = meta(client, "/meta/handshake", successful=True)
    assert len(handshakes) == 2
    assert handshakes[1]["clientId"] != first_id
    assert handshakes[1]["reestablish"] is True
    failed_connects = meta(client, "/meta/connect", successful=False)
    if crash:
        # The new broker never saw the old clientId: 402 with advice to handshake again.
        unknown = [c for c in failed_connects if c.get("clientId") == first_id and c["error"].startswith("402:")]
        assert len(unknown) == 1, client.describe()
        assert unknown[0]["error"] == "402::session_unknown"
        assert unknown[0]["advice"] == {"reconnect": "handshake", "interval": 0}
    else:
        # A graceful stop answers the parked connect itself and asks for a new handshake.
        shutdown = [c for c in failed_connects if c.get("clientId") == first_id and c["error"].startswith("503:")]
        assert len(shutdown) == 1, client.describe()
        assert shutdown[0]["error"] == "503::server_shutdown (the broker is stopping)"
        assert shutdown[0]["advice"]["reconnect"] == "handshake"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_rehandshake_after_server_side_session_expiry(broker_process, node_client, http_publisher,
                                                            wait_for_log, transport):
    """The client's process is frozen (SIGSTOP) longer than the broker's max-interval, so the
    broker expires the session for real; once thawed, the client's next /meta/connect gets 402
    and the client re-handshakes, re-subscribes and receives new messages."""
    broker = broker_process("--allow-anonymous", "--timeout", "500", "--max-interval", "1000",
                            "--sweep-period", "0.1", "--log-level", "DEBUG")
    client = await node_client(SCRIPT, url=broker.url, scenario="listen", transport=transport, count=1,
                               channel="/interop/expiry")
    await client.wait_event("subscribe", successful=True, handshake=1)
    first_id = client.of("handshake")[0]["clientId"]

    client.pause()
    try:
        await wait_for_log(broker, "session removed: 402::session_unknown (expired", f"clientId={first_id}")
    finally:
        client.resume()

    await client.wait_event("subscribe", successful=True, handshake=2, timeout=10)
    publisher = await http_publisher(broker.url)
    await publisher.publish("/interop/expiry", {"after": "expiry"})
    await client.expect_success()

    assert [(m["data"], m["handshake"]) for m in client.of("message")] == [({"after": "expiry"}, 2)]
    [expired] = [c for c in meta(client, "/meta/connect", successful=False) if c.get("clientId") == first_id]
    assert expired["error"] == "402::session_unknown (expired: no /meta/connect within 1000 ms)"
    assert expired["advice"] == {"reconnect": "handshake", "interval": 0}
    handshakes = meta(client, "/meta/handshake", successful=True)
    assert [h["clientId"] == first_id for h in handshakes] == [True, False]


def tab_events(client, event: str, tab: int, **fields):
    return [e for e in client.of(event, **fields) if e.get("tab") == tab]


async def test_tabs_of_one_browser_share_the_connection_slot(broker_process, node_client, http_publisher):
    """Three CometD objects sharing one cookie jar (tabs of one browser, opened one after the
    other): only one may hold a long-poll, the others are told `multiple-clients` and poll at
    the multi-session interval, and every tab still receives every message, in order."""
    broker = broker_process("--allow-anonymous", "--multi-session-interval", "300")
    tabs = await node_client(SCRIPT, url=broker.url, scenario="tabs", clients=3, stagger="true", count=5,
                             channel="/interop/tabs")
    for tab in range(3):
        await tabs.wait_for(lambda e, tab=tab: e.get("event") == "subscribe" and e.get("tab") == tab
                            and e["successful"] is True, what=f"tab {tab} subscribed")
    await tabs.wait_for(lambda e: e.get("event") == "meta" and e["channel"] == "/meta/connect"
                        and e.get("advice", {}).get("multiple-clients") is True, what="multiple-clients advice")
    publisher = await http_publisher(broker.url)
    for seq in range(5):
        await publisher.publish("/interop/tabs", {"seq": seq})
    await tabs.expect_success()

    for tab in range(3):
        assert [m["data"] for m in tab_events(tabs, "message", tab)] == [{"seq": i} for i in range(5)]
        assert len(tab_events(tabs, "handshake", tab, successful=True)) == 1, tabs.describe()
    assert not tabs.of("meta", channel="/meta/connect", successful=False), tabs.describe()
    told = [e for e in tabs.of("meta", channel="/meta/connect", successful=True)
            if e.get("advice", {}).get("multiple-clients") is True]
    assert told, tabs.describe()
    assert all(e["advice"] == {"reconnect": "retry", "interval": 300, "timeout": 25000, "multiple-clients": True}
               for e in told)


async def test_concurrent_first_handshakes_of_one_browser_keep_their_sessions(broker_process, node_client):
    """Three tabs of one browser handshake at the same time, before any cookie exists (a browser
    restoring its tabs). Once every handshake reply (and its Set-Cookie) has arrived, the jar
    holds one cookie; each tab's next /meta/connect must still be accepted."""
    broker = broker_process("--allow-anonymous", "--timeout", "300", "--multi-session-interval", "300")
    tabs = await node_client(SCRIPT, url=broker.url, scenario="tabs", clients=3, count=1, channel="/interop/tabs")
    firsts = [await tabs.wait_for(lambda e, tab=tab: e.get("event") == "handshake" and e.get("tab") == tab,
                                  what=f"tab {tab} handshake") for tab in range(3)]
    assert all(h["successful"] is True for h in firsts)
    last = max(firsts, key=lambda h: next(i for i, e in enumerate(tabs.events) if e is h))
    replies = []
    for tab in range(3):
        sent = await tabs.wait_for(lambda e, tab=tab: e.get("event") == "connect_sent" and e.get("tab") == tab,
                                   after=last, what=f"tab {tab} connect after every handshake reply")
        replies.append(await tabs.wait_for(
            lambda e, sent=sent: e.get("event") == "meta" and e["channel"] == "/meta/connect"
            and e.get("clientId") == sent["clientId"] and e.get("id") == sent["id"],
            what=f"reply to tab {tab} connect {sent['id']}"))
    rejected = [(r["tab"], r.get("error")) for r in replies if r["successful"] is not True]
    assert rejected == [], tabs.describe()
