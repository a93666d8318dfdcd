"""Acknowledged delivery under network faults (issue 4): connections are cut while messages flow,
and a client using the ack extension still sees every message exactly once, in order.

Setup of every test: a broker subprocess; a fault-injecting TCP proxy in front of it
(tests/interop/chaos_proxy.py); a subscriber that talks to the broker only THROUGH the proxy; a
Python publisher that publishes {"seq": 0..N-1} at a steady rate DIRECTLY to the broker, so
publishing is never disturbed. Faults start once the subscriber is subscribed and last until it
has everything.

- The official CometD JS client (npm `cometd` 9) with its unchanged AckExtension, over
  long-polling and websocket, while the proxy resets every connection periodically; while it
  kills websocket connections after a few kilobytes (mid-frame); and while it drops /meta/connect
  replies mid-response.
- The same, with the proxy cutting only the client side and black-holing the broker side, so the
  broker does not notice the cut (a NAT or load balancer in between).
- A raw Bayeux client in Python (aiohttp, ext.ack by hand) over long-polling, for a fast check of
  the same property under each kind of fault.
- Two tests of a race found while writing these (they fail until it is fixed): a /meta/connect that
  was released but not yet answered when the client's next /meta/connect arrived takes events that
  the newer connect should have had, under a batch number the client then acknowledges away.

Every wait is bounded; each test takes a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from bayeux_helpers import RecordingResponder
from chaos_proxy import ChaosProxy

from cometd_broker import BrokerConfig, create_app
from cometd_broker.broker import Broker, RequestContext
from cometd_broker.exchange import Exchange
from cometd_broker.session import TIMEOUT

pytest_plugins = ["node_harness"]  # the Node-client and publisher fixtures (tests/interop/node_harness.py)

SCRIPT = "cometd_client.mjs"
CHANNEL = "/chaos/feed"
N = 300
PUBLISH_PAUSE = 0.005  # s between publishes: ~300 messages in 2-3 s, while the faults go on
BROKER_FLAGS = ("--allow-anonymous", "--timeout", "3000", "--max-interval", "15000")


async def publish_sequence(publisher: Any, count: int = N) -> None:
    for seq in range(count):
        await publisher.publish(CHANNEL, {"seq": seq})
        await asyncio.sleep(PUBLISH_PAUSE)


def gaps_and_duplicates(seqs: list[Any], count: int = N) -> str:
    """A readable account of how `seqs` differs from [0..count-1]."""
    seen: dict[Any, int] = {}
    for seq in seqs:
        seen[seq] = seen.get(seq, 0) + 1
    missing = [s for s in range(count) if s not in seen]
    duplicated = sorted((s, n) for s, n in seen.items() if n > 1)
    disorder = next((i for i, (a, b) in enumerate(itertools.pairwise(seqs)) if b != a + 1), None)
    return (f"received {len(seqs)}; missing {missing[:20]}{'...' if len(missing) > 20 else ''}; "
            f"duplicated (seq, times) {duplicated[:20]}; first out-of-order index {disorder}")


# --------------------------------------------------------------------- the official CometD JS client


async def run_js_client(broker_process, node_client, http_publisher, chaos_proxy, transport: str,
                        arm: Callable[[ChaosProxy], None]) -> tuple[Any, ChaosProxy]:
    """Start the JS ack-listen client through a proxy, arm the faults once it is subscribed,
    publish N messages directly to the broker, and check the client got exactly [0..N-1]."""
    broker = broker_process(*BROKER_FLAGS)
    proxy = await chaos_proxy(broker.port)
    client = await node_client(SCRIPT, url=proxy.url(), scenario="ack-listen", transport=transport, count=N,
                               channel=CHANNEL, deadline_ms=22000, linger_ms=500)
    await client.wait_event("subscribe", successful=True, timeout=10)
    [handshake] = client.of("handshake")
    assert handshake["successful"] is True and handshake["ext"] == {"ack": True}, client.describe()

    arm(proxy)
    publisher = await http_publisher(broker.url)  # directly, not through the proxy
    await asyncio.wait_for(publish_sequence(publisher), 15)
    done = await client.wait_event("done", timeout=15)
    proxy.reset_every(None)
    await client.expect_success(timeout=10)

    seqs = [m["seq"] for m in client.of("message")]
    assert seqs == list(range(N)), gaps_and_duplicates(seqs) + "\n" + client.describe()[-4000:]
    assert done["seqs"] == list(range(N))
    # One session throughout: the ack extension, not a re-handshake, carried the client over.
    assert done["handshakes"] == 1 and len(client.of("handshake")) == 1, client.describe()[-4000:]
    # The faults really hit the client's /meta/connects.
    failed = client.of("meta", channel="/meta/connect", successful=False)
    assert failed, f"no /meta/connect failed: the faults never bit (proxy resets: {proxy.resets})"
    return client, proxy


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
async def test_cometd_js_ack_through_periodic_connection_resets(broker_process, node_client, http_publisher,
                                                                chaos_proxy, transport):
    """Every connection between client and broker is reset (RST) every 150 ms while 300 messages flow."""
    _, proxy = await run_js_client(broker_process, node_client, http_publisher, chaos_proxy, transport,
                                   lambda proxy: proxy.reset_every(0.15))
    assert proxy.resets >= 5, proxy.resets


async def test_cometd_js_ack_when_websockets_are_killed_mid_frame(broker_process, node_client, http_publisher,
                                                                  chaos_proxy):
    """Only websocket connections are hit, as if the server closed them: each is reset after it
    carried ~3 KB (so usually in the middle of a frame of events), and all of them every 400 ms."""

    def arm(proxy: ChaosProxy) -> None:
        proxy.websocket_only = True
        proxy.reset_after_bytes = 3000
        proxy.reset_every(0.4)

    _, proxy = await run_js_client(broker_process, node_client, http_publisher, chaos_proxy, "websocket", arm)
    assert proxy.resets >= 5, proxy.resets


async def test_cometd_js_ack_when_long_polls_drop_mid_response(broker_process, node_client, http_publisher,
                                                               chaos_proxy):
    """Every third /meta/connect reply is cut in the middle of its body and the connection reset."""

    def arm(proxy: ChaosProxy) -> None:
        proxy.kill_connect_responses = 3

    _, proxy = await run_js_client(broker_process, node_client, http_publisher, chaos_proxy, "long-polling", arm)
    assert proxy.connect_replies_cut >= 5, (proxy.connect_replies_seen, proxy.connect_replies_cut)


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
async def test_cometd_js_ack_when_the_broker_does_not_see_the_cut(broker_process, node_client, http_publisher,
                                                                   chaos_proxy, transport):
    """Every 150 ms the client's connections are reset, but the broker's side of them stays open
    and swallows what the broker writes: parked connects and websockets live on in the broker,
    and replies (with their batches) go nowhere."""

    def arm(proxy: ChaosProxy) -> None:
        proxy.blackhole = True
        proxy.reset_every(0.15)

    _, proxy = await run_js_client(broker_process, node_client, http_publisher, chaos_proxy, transport, arm)
    assert proxy.resets >= 5, proxy.resets


# --------------------------------------------------------------------- a raw Bayeux client in Python


class RawAckClient:
    """Long-polling with the ack extension, by hand: handshake `ext.ack: true`, then every
    /meta/connect carries `ext.ack` = the last batch received. A failed request (reset, cut
    body) is simply retried with the same batch."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                          timeout=aiohttp.ClientTimeout(total=6))
        self.client_id = ""
        self.batch = 0
        self.seqs: list[Any] = []
        self.failures = 0
        self._ids = 0

    def _message(self, channel: str, **fields: Any) -> dict[str, Any]:
        self._ids += 1
        return {"channel": channel, "id": str(self._ids), **fields}

    async def send(self, *messages: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.http.post(self.url, json=list(messages)) as response:
            assert response.status == 200, (response.status, await response.text())
            return await response.json()

    async def open(self) -> None:
        [reply] = await self.send(self._message("/meta/handshake", version="1.0", ext={"ack": True},
                                                supportedConnectionTypes=["long-polling"]))
        assert reply["successful"] is True and reply["ext"] == {"ack": True}, reply
        self.client_id = reply["clientId"]
        await self.connect()
        [subscribed] = await self.send(self._message("/meta/subscribe", clientId=self.client_id,
                                                     subscription=CHANNEL))
        assert subscribed["successful"] is True, subscribed

    async def connect(self, **extra: Any) -> None:
        """One /meta/connect; raises on a network failure (the caller retries)."""
        replies = await self.send(self._message("/meta/connect", clientId=self.client_id,
                                                connectionType="long-polling", ext={"ack": self.batch}, **extra))
        [reply] = [r for r in replies if r.get("channel") == "/meta/connect"]
        # A failed connect here would mean the session was lost: nothing can recover that.
        assert reply["successful"] is True, reply
        assert isinstance(reply.get("ext", {}).get("ack"), int), reply
        self.seqs.extend(r["data"]["seq"] for r in replies if r.get("channel") == CHANNEL)
        self.batch = reply["ext"]["ack"]

    async def receive(self, count: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for _ in range(20_000):  # bounded in count as well as in time
            if len(self.seqs) >= count or time.monotonic() > deadline:
                return
            try:
                await self.connect()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                self.failures += 1
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.http.close()


FAULTS: dict[str, Callable[[ChaosProxy], None]] = {
    "connect-replies-cut": lambda proxy: setattr(proxy, "kill_connect_responses", 2),
    "periodic-resets": lambda proxy: proxy.reset_every(0.05),
    "byte-budget": lambda proxy: setattr(proxy, "reset_after_bytes", 1500),
    "black-holed-resets": lambda proxy: (setattr(proxy, "blackhole", True), proxy.reset_every(0.05)),
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_raw_long_polling_ack_through_faults(broker_process, http_publisher, chaos_proxy, fault):
    broker = broker_process(*BROKER_FLAGS)
    proxy = await chaos_proxy(broker.port)
    client = RawAckClient(proxy.url())
    try:
        await client.open()
        FAULTS[fault](proxy)
        publisher = await http_publisher(broker.url)
        receiving = asyncio.create_task(client.receive(N, 20))
        try:
            await asyncio.wait_for(publish_sequence(publisher), 15)
            await asyncio.wait_for(receiving, 20)
        finally:
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
        proxy.reset_every(None)
        # Linger: one more connect, without faults, must bring nothing new (no late duplicate).
        proxy.kill_connect_responses, proxy.reset_after_bytes, proxy.blackhole = 0, None, False
        await client.connect(advice={"timeout": 0})
        seqs = client.seqs
        assert seqs == list(range(N)), gaps_and_duplicates(seqs)
        assert client.failures > 0, f"the faults never bit ({fault}: proxy resets {proxy.resets})"
    finally:
        await client.close()


# --------------------------------------------------------------------- a race: a stale connect takes events


async def test_a_stale_connect_completed_after_a_newer_connect_must_not_take_its_events():
    """Deterministic, in-process, through the exchange as every transport uses it.

    The exchange answers a released connect on the next loop turn. Before that, other work may
    run. Here: connect C1 is held on a connection that died silently (the server still sees it
    open, e.g. behind a NAT or a load balancer); its hold time passes (released, TIMEOUT); before
    C1 is answered, the client's retry C2 (acknowledging the same batch) is held, and event 0 is
    published, releasing C2. If C1's answer took event 0 as batch 2 and wrote it into the dead
    connection, C2 would get batch 3, empty; the client acknowledges 3, which also acknowledges
    batch 2: event 0 would be lost.
    """
    broker = Broker(BrokerConfig(allow_anonymous=True))
    exchange = Exchange(broker)
    [hello] = (await broker.handle([{"channel": "/meta/handshake", "version": "1.0", "id": "1", "ext": {"ack": True},
                                     "supportedConnectionTypes": ["long-polling"]}],
                                   RequestContext("long-polling"))).replies
    client_id = hello["clientId"]
    session = broker.session(client_id)
    assert session is not None and session.ack is not None

    def ctx() -> RequestContext:
        return RequestContext("long-polling", browser_id=session.browser_id)

    def connect(batch: int, **extra: Any) -> list[dict[str, Any]]:
        return [{"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling",
                 "id": f"c{batch}", "ext": {"ack": batch}, **extra}]

    # Responders whose connections never report themselves gone (they died silently behind a NAT).
    first = RecordingResponder()
    exchange.submit(connect(0), ctx(), first)
    [answer] = first.answers
    assert answer.events == [] and answer.replies[0]["ext"] == {"ack": 1}
    await broker.handle([{"channel": "/meta/subscribe", "clientId": client_id, "subscription": CHANNEL, "id": "s"}],
                        ctx())

    # C1, acknowledging batch 1, is held; its connection then dies without the server noticing.
    c1 = RecordingResponder()
    exchange.submit(connect(1), ctx(), c1)
    assert session.parked is not None and not c1.answers
    session.unpark(TIMEOUT)  # what C1's hold timer does; C1 is answered on the next loop turn

    # The client's retry, C2, acknowledging batch 1 too, is held; then event 0 is published.
    c2 = RecordingResponder()
    exchange.submit(connect(1), ctx(), c2)
    assert session.parked is not None
    await broker.publish(CHANNEL, {"seq": 0})
    await asyncio.sleep(0)  # the next loop turn: both released connects are answered, C1 first
    await asyncio.sleep(0)
    [stale], [outcome] = c1.answers, c2.answers
    assert stale.events == []
    assert outcome.status == 200 and outcome.replies[0]["successful"] is True
    received = [orjson.loads(event)["data"]["seq"] for event in outcome.events]

    # The client acknowledges the batch it received; whatever was not acknowledged comes now.
    last = RecordingResponder()
    exchange.submit(connect(outcome.replies[0]["ext"]["ack"], advice={"timeout": 0}), ctx(), last)
    [final] = last.answers
    received += [orjson.loads(event)["data"]["seq"] for event in final.events]
    assert received == [0], "event 0 was taken by the stale connect C1 and then acknowledged away"
    await broker.close()


async def test_a_stale_websocket_connect_takes_events_when_the_loop_lags(aiohttp_client):
    """The same race through the real websocket transport (in-process, so the test can make the
    event loop lag, as a GC pause or a CPU-bound burst does).

    Websocket A holds C1 (acknowledging batch 1) and then goes silent: the client gave up on it,
    the broker still sees it open. The client's C2 (acknowledging batch 1 too) arrives on a new
    websocket B and a publisher's event 0 on websocket P while the loop is stalled past C1's hold
    time. When the loop runs again, in one iteration: B's reader parks C2 (C1 is no longer parked:
    its timer fired), P's reader publishes event 0 (releasing C2), and A's writer - woken by C1's
    timer - answers C1 with event 0 as batch 2, into A. C2 is answered with batch 3, empty; the
    client acknowledges 3, and event 0 is gone.
    """
    client = await aiohttp_client(create_app(BrokerConfig(allow_anonymous=True, timeout=1000)))

    async def call(ws: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        await ws.send_str(json.dumps(messages))
        return await receive(ws)

    async def receive(ws: Any) -> list[dict[str, Any]]:
        frame = await asyncio.wait_for(ws.receive(), 5)
        assert frame.type == aiohttp.WSMsgType.TEXT, frame
        return json.loads(frame.data)

    def handshake(**ext: Any) -> list[dict[str, Any]]:
        return [{"channel": "/meta/handshake", "version": "1.0", "id": "h", "supportedConnectionTypes": ["websocket"],
                 **({"ext": ext} if ext else {})}]

    a = await client.ws_connect("/cometd")
    [hello] = await call(a, handshake(ack=True))
    assert hello["ext"] == {"ack": True}
    client_id = hello["clientId"]

    def connect(batch: int, name: str, **extra: Any) -> list[dict[str, Any]]:
        return [{"channel": "/meta/connect", "clientId": client_id, "connectionType": "websocket", "id": name,
                 "ext": {"ack": batch}, **extra}]

    [first] = await call(a, connect(0, "c0"))
    assert first["ext"] == {"ack": 1}
    [subscribed] = await call(a, [{"channel": "/meta/subscribe", "clientId": client_id, "subscription": CHANNEL,
                                   "id": "s"}])
    assert subscribed["successful"] is True
    b = await client.ws_connect("/cometd")
    p = await client.ws_connect("/cometd")
    [publisher] = await call(p, handshake())

    await a.send_str(json.dumps(connect(1, "c1")))  # C1 is held; the client then gives up on A
    await asyncio.sleep(0.3)
    # Neither send suspends (small frames): both frames wait in the broker's sockets ...
    await b.send_str(json.dumps(connect(1, "c2")))
    await p.send_str(json.dumps([{"channel": CHANNEL, "clientId": publisher["clientId"], "id": "p",
                                  "data": {"seq": 0}}]))
    time.sleep(1.0)  # ... while the loop lags past C1's hold time (1 s since C1 was parked)

    received: list[Any] = []
    replies = await receive(b)
    [c2] = [r for r in replies if r.get("channel") == "/meta/connect"]
    assert c2["successful"] is True and c2["id"] == "c2", replies
    received += [r["data"]["seq"] for r in replies if r.get("channel") == CHANNEL]
    replies = await call(b, connect(c2["ext"]["ack"], "c3", advice={"timeout": 0}))
    received += [r["data"]["seq"] for r in replies if r.get("channel") == CHANNEL]
    if received != [0]:
        abandoned = await receive(a)  # where event 0 went
        raise AssertionError(f"event 0 lost: C2 got batch {c2['ext']['ack']} and the client acknowledged it; "
                             f"the abandoned websocket A was sent {abandoned}")
