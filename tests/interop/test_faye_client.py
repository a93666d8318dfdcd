"""Faye's Node client (npm `faye` 1.4, `Faye.Client`) against a real broker subprocess.

Faye always handshakes over HTTP long-polling and then picks the best connection type both
sides offer; in Node that is `websocket` (via faye-websocket) when the server lists it. The
"long-polling" runs disable Faye's websocket transport; the "websocket" runs fail inside the
script if any /meta/connect is sent over something else.

Scripts: tests/interop/node/faye_client.mjs (one JSON line per observation).
"""

from __future__ import annotations

import pytest

pytest_plugins = ["node_harness"]  # the Node-client fixtures (tests/interop/node_harness.py)

TRANSPORTS = ["long-polling", "websocket"]
SCRIPT = "faye_client.mjs"


def meta(client, channel: str, **fields):
    return client.of("meta", channel=channel, **fields)


def connection_types(client) -> set[str]:
    return {e["connectionType"] for e in client.of("connect_sent")}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_roundtrip_50_messages_in_order(broker_process, node_client, transport):
    """Each publish is sent once the previous one was acknowledged (see publishAll in
    faye_client.mjs): the server must deliver them in that order."""
    broker = broker_process("--allow-anonymous")
    client = await node_client(SCRIPT, url=broker.url, scenario="roundtrip", transport=transport, count=50,
                               channel="/interop/faye", publish="sequential")
    await client.expect_success()

    [handshake] = meta(client, "/meta/handshake")
    assert handshake["successful"] is True
    assert handshake["supportedConnectionTypes"] == ["websocket", "long-polling", "callback-polling"]
    assert connection_types(client) == {transport}
    assert meta(client, "/meta/subscribe", successful=True, subscription="/interop/faye")
    acks = client.of("publish_ack")
    assert [a["seq"] for a in acks] == list(range(50))
    assert all(a["successful"] is True for a in acks)
    assert [m["data"] for m in client.of("message")] == [{"seq": i, "text": f"message {i}"} for i in range(50)]
    assert meta(client, "/meta/unsubscribe", successful=True, subscription="/interop/faye")
    assert meta(client, "/meta/disconnect", successful=True)
    assert client.of("disconnect", successful=True)
    assert {e["clientId"] for e in client.of("meta") if "clientId" in e} == {handshake["clientId"]}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_burst_of_50_publishes_all_delivered_once(broker_process, node_client, transport):
    """All 50 publishes at once. Over websocket Faye sends one frame per message on one socket,
    so the order holds. Over long-polling Faye sends each batch of at most 2048 bytes as its own
    HTTP request, all at the same time: the batches may reach the server in any order, so only
    "each exactly once, each batch in order" can be asserted."""
    broker = broker_process("--allow-anonymous")
    client = await node_client(SCRIPT, url=broker.url, scenario="roundtrip", transport=transport, count=50,
                               channel="/interop/burst", publish="burst")
    await client.expect_success()
    assert connection_types(client) == {transport}
    acks = client.of("publish_ack")
    assert sorted(a["seq"] for a in acks) == list(range(50))
    assert all(a["successful"] is True for a in acks)
    received = [m["data"]["seq"] for m in client.of("message")]
    assert sorted(received) == list(range(50))
    if transport == "websocket":
        assert received == list(range(50))
    else:
        # Split the received sequence into runs of consecutive numbers: each run is one batch
        # (or several in order); every run must be ascending, i.e. no batch was reordered inside.
        runs = [[received[0]]]
        for seq in received[1:]:
            if seq == runs[-1][-1] + 1:
                runs[-1].append(seq)
            else:
                runs.append([seq])
        assert len(runs) <= 5, runs  # 50 messages make about 3 batches of 2048 bytes


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
    assert connection_types(listener) == {transport}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_faye_and_cometd_clients_exchange_messages(broker_process, node_client, transport):
    """Two different client libraries on one channel, each direction."""
    broker = broker_process("--allow-anonymous")
    faye_listener = await node_client(SCRIPT, name="faye-listener", url=broker.url, scenario="listen",
                                      transport=transport, count=10, channel="/interop/mixed/to-faye")
    cometd_listener = await node_client("cometd_client.mjs", name="cometd-listener", url=broker.url,
                                        scenario="listen", transport=transport, count=10,
                                        channel="/interop/mixed/to-cometd")
    await faye_listener.wait_event("subscribe", successful=True)
    await cometd_listener.wait_event("subscribe", successful=True)
    faye_publisher = await node_client(SCRIPT, name="faye-publisher", url=broker.url, scenario="publish",
                                       transport=transport, count=10, channel="/interop/mixed/to-cometd")
    cometd_publisher = await node_client("cometd_client.mjs", name="cometd-publisher", url=broker.url,
                                         scenario="publish", transport=transport, count=10,
                                         channel="/interop/mixed/to-faye")
    for client in (faye_publisher, cometd_publisher, faye_listener, cometd_listener):
        await client.expect_success()
    for publisher in (faye_publisher, cometd_publisher):
        assert [a["seq"] for a in publisher.of("publish_ack", successful=True)] == list(range(10))
    assert [m["data"] for m in faye_listener.of("message")] == [{"seq": i, "from": "cometd"} for i in range(10)]
    assert [m["data"] for m in cometd_listener.of("message")] == [{"seq": i, "from": "faye"} for i in range(10)]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("crash", [True, False], ids=["crash", "graceful"])
async def test_rehandshake_after_broker_restart(broker_process, restart_broker, node_client, http_publisher,
                                                transport, crash):
    """After a broker restart the clientId is unknown: Faye follows the advice to handshake
    again, renews its subscriptions by itself and receives what is published afterwards.

    A short --timeout: after any handshake Faye polls over HTTP until its websocket is open
    again, and it only moves back to the websocket when a held long-poll returns."""
    broker = broker_process("--allow-anonymous", "--timeout", "1000")
    client = await node_client(SCRIPT, url=broker.url, scenario="listen", transport=transport, count=2,
                               channel="/interop/restart")
    await client.wait_event("subscribe", successful=True)
    before = await http_publisher(broker.url)
    await before.publish("/interop/restart", {"seq": 0})
    await client.wait_event("message")
    [first] = meta(client, "/meta/handshake", successful=True)
    await client.held_connect()  # so that a graceful stop has a parked connect to answer
    sent_before = client.of("connect_sent")

    broker = restart_broker(broker, crash=crash)
    second = await client.wait_for(
        lambda e: e.get("event") == "meta" and e["channel"] == "/meta/subscribe" and e["successful"] is True
        and e["clientId"] != first["clientId"], timeout=15, what="a subscribe renewed under a new clientId")
    # Faye sends the first /meta/connect after any handshake over HTTP; with websocket it then
    # reopens its socket and moves back to it.
    await client.wait_for(lambda e: e.get("event") == "connect_sent" and e["clientId"] == second["clientId"]
                          and e["connectionType"] == transport, what=f"a {transport} /meta/connect")
    after = await http_publisher(broker.url)
    await after.publish("/interop/restart", {"seq": 1})
    await client.expect_success()

    assert [(m["data"], m["handshake"]) for m in client.of("message")] == [({"seq": 0}, 1), ({"seq": 1}, 2)]
    handshakes = meta(client, "/meta/handshake", successful=True)
    assert [h["clientId"] for h in handshakes] == [first["clientId"], second["clientId"]]
    # (Around the restart Faye may resend a pending connect over HTTP: not asserted.)
    assert {c["connectionType"] for c in sent_before} == {transport}, client.describe()
    assert client.of("connect_sent")[-1]["connectionType"] == transport, client.describe()
    failed = [c for c in meta(client, "/meta/connect", successful=False) if c.get("clientId") == first["clientId"]]
    if crash:
        assert [(c["error"], c["advice"]) for c in failed] == [
            ("402::session_unknown", {"reconnect": "handshake", "interval": 0})], client.describe()
    else:
        assert [(c["error"], c["advice"]) for c in failed] == [
            ("503::server_shutdown (the broker is stopping)", {"reconnect": "handshake", "interval": 0})
        ], client.describe()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_rehandshake_after_server_side_session_expiry(broker_process, node_client, http_publisher,
                                                            wait_for_log, transport):
    """Faye's process is frozen (SIGSTOP) past the broker's max-interval; once thawed its next
    /meta/connect gets 402 and it re-handshakes and renews its subscription by itself."""
    broker = broker_process("--allow-anonymous", "--timeout", "500", "--max-interval", "1000",
                            "--sweep-period", "0.1", "--log-level", "DEBUG")
    client = await node_client(SCRIPT, url=broker.url, scenario="listen", transport=transport, count=1,
                               channel="/interop/expiry")
    await client.wait_event("subscribe", successful=True)
    [first] = meta(client, "/meta/handshake", successful=True)

    client.pause()
    try:
        await wait_for_log(broker, "session removed: 402::session_unknown (expired", f"clientId={first['clientId']}")
    finally:
        client.resume()

    second = await client.wait_for(
        lambda e: e.get("event") == "meta" and e["channel"] == "/meta/subscribe" and e["successful"] is True
        and e["clientId"] != first["clientId"], timeout=10, what="a subscribe renewed under a new clientId")
    await client.wait_for(lambda e: e.get("event") == "connect_sent" and e["clientId"] == second["clientId"]
                          and e["connectionType"] == transport, what=f"a {transport} /meta/connect")
    publisher = await http_publisher(broker.url)
    await publisher.publish("/interop/expiry", {"after": "expiry"})
    await client.expect_success()

    assert [(m["data"], m["handshake"]) for m in client.of("message")] == [({"after": "expiry"}, 2)]
    failed = [c for c in meta(client, "/meta/connect", successful=False) if c.get("clientId") == first["clientId"]]
    assert [(c["error"], c["advice"]) for c in failed] == [
        ("402::session_unknown (expired: no /meta/connect within 1000 ms)", {"reconnect": "handshake", "interval": 0})
    ], client.describe()
