"""Recovery from a network outage longer than the session's lifetime, with real third-party clients.

Each client talks to a broker subprocess only through the fault proxy (tests/interop/chaos_proxy.py).
The outage resets every connection and then refuses new ones (a closed listener: ECONNREFUSED, as
after a laptop lid closes or the Wi-Fi changes) for longer than the broker keeps a silent session
(the held connect's timeout, then maxInterval, both short here). When traffic passes again the
client must learn that its session is gone (402 session_unknown, reconnect "handshake"), handshake
again (a new clientId), subscribe again and receive what is published afterwards, within seconds.

Every case runs against both HTTP servers of `serve` (`--http-server lean`, the default, and
`aiohttp`). CometD JS in Node sends its bodies chunked, which the lean path hands to aiohttp;
`--content-length=true` makes it send them as browsers do, so the lean path serves them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import aiocometd_ng
import pytest

pytest_plugins = ["node_harness"]  # the Node-client and publisher fixtures (tests/interop/node_harness.py)

TIMEOUT_MS = 1500  # the broker's hold of a /meta/connect
MAX_INTERVAL_MS = 1500  # then a silent session expires after this
SWEEP = "0.2"  # seconds between expiry sweeps
# The outage outlasts a held connect's timeout plus maxInterval plus a sweep: every session expires
# during it on both servers (aiohttp keeps holding a connect whose client went away until its timeout).
OUTAGE = (TIMEOUT_MS + MAX_INTERVAL_MS) / 1000 + 1.5
RECOVERY = 6.0  # seconds from the end of the outage to a new session with its subscription
DELIVERY = 3.0  # seconds for an event published after recovery to arrive
SERVERS = ["lean", "aiohttp"]
CHANNEL = "/interop/outage"


def broker_flags(http_server: str) -> tuple[str, ...]:
    return ("--allow-anonymous", "--http-server", http_server, "--timeout", str(TIMEOUT_MS),
            "--max-interval", str(MAX_INTERVAL_MS), "--sweep-period", SWEEP)


async def publish_after_recovery(http_publisher: Callable[..., Any], broker: Any) -> None:
    """One event on CHANNEL, published straight to the broker (not through the proxy)."""
    publisher = await http_publisher(broker.url)
    await publisher.publish(CHANNEL, {"after": "outage"})


# ----------------------------------------------------------------------------- CometD JS


@pytest.mark.parametrize("http_server", SERVERS)
@pytest.mark.parametrize(("transport", "content_length"), [
    ("long-polling", False), ("long-polling", True), ("websocket", False)],
    ids=["long-polling", "long-polling-content-length", "websocket"])
async def test_cometd_js_recovers_from_outage(broker_process, node_client, http_publisher, chaos_proxy,
                                              http_server, transport, content_length):
    broker = broker_process(*broker_flags(http_server))
    proxy = await chaos_proxy(broker.port)
    client = await node_client("cometd_client.mjs", url=proxy.url(), scenario="listen", transport=transport,
                               count=1, channel=CHANNEL, max_backoff=500, deadline_ms=30000,
                               content_length="true" if content_length else None)
    first = await client.wait_event("subscribe", successful=True)
    await client.wait_event("meta", channel="/meta/connect", successful=True)
    await client.held_connect()  # the steady state: a /meta/connect held by the broker

    assert await proxy.outage(OUTAGE) >= 1

    again = await client.wait_for(
        lambda e: e.get("event") == "subscribe" and e.get("successful") is True
        and e.get("clientId") != first["clientId"], RECOVERY, "a subscription on a new session", after=first)
    assert again["handshake"] == 2 and again["transport"] == transport
    # The old session was gone: the client was told so, with advice to handshake again.
    expired = [e for e in client.of("meta", channel="/meta/connect", successful=False)
               if e.get("error", "").startswith("402::session_unknown")]
    assert expired and expired[-1]["advice"]["reconnect"] == "handshake", client.describe()

    await publish_after_recovery(http_publisher, broker)
    message = await client.wait_event("message", DELIVERY)
    assert message["data"] == {"after": "outage"} and message["handshake"] == 2
    await client.expect_success()


# ----------------------------------------------------------------------------- Faye


@pytest.mark.parametrize("http_server", SERVERS)
async def test_faye_recovers_from_outage(broker_process, node_client, http_publisher, chaos_proxy, http_server):
    broker = broker_process(*broker_flags(http_server))
    proxy = await chaos_proxy(broker.port)
    client = await node_client("faye_client.mjs", url=proxy.url(), scenario="listen", transport="long-polling",
                               count=1, channel=CHANNEL, retry="0.2", deadline_ms=30000)
    subscribed = await client.wait_event("subscribe", successful=True)
    [handshake] = client.of("meta", channel="/meta/handshake", successful=True)

    assert await proxy.outage(OUTAGE) >= 1

    # Faye renews its subscriptions itself after a re-handshake.
    again = await client.wait_for(
        lambda e: e.get("event") == "meta" and e.get("channel") == "/meta/subscribe" and e.get("successful") is True
        and e.get("clientId") != handshake["clientId"], RECOVERY, "a subscription on a new session",
        after=subscribed)
    assert again["subscription"] == CHANNEL

    await publish_after_recovery(http_publisher, broker)
    message = await client.wait_event("message", DELIVERY)
    assert message["data"] == {"after": "outage"}
    await client.expect_success()


# ----------------------------------------------------------------------------- aiocometd


class _WireLog(aiocometd_ng.Extension):
    """Every payload aiocometd receives, for the assertions and as evidence in a failure."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def outgoing(self, payload: list[dict[str, Any]], headers: dict[str, str]) -> None:
        return None

    async def incoming(self, payload: list[dict[str, Any]], headers: Any = None) -> None:
        self.received.extend(payload)

    def replies(self, channel: str, since: int = 0) -> list[dict[str, Any]]:
        return [m for m in self.received[since:] if m.get("channel") == channel and m.get("successful")]

    def dump(self, since: int = 0) -> str:
        return "\n".join(json.dumps(m) for m in self.received[since:])


async def _receive(client: Any, timeout: float) -> dict[str, Any]:
    """`client.receive()`, tolerating the TransportTimeoutError aiocometd-ng raises while it
    reconnects (see test_aiocometd.receive_surviving_reconnects)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await client.receive()
            except aiocometd_ng.exceptions.TransportTimeoutError:
                await asyncio.sleep(0.05)


async def _wait(predicate: Callable[[], Any], what: str, timeout: float) -> Any:
    async with asyncio.timeout(timeout):
        while not (value := predicate()):
            await asyncio.sleep(0.02)
        return value


@pytest.mark.filterwarnings("ignore:coroutine 'TransportBase.wait_for_state' was never awaited:RuntimeWarning")
@pytest.mark.parametrize("http_server", SERVERS)
async def test_aiocometd_recovers_from_outage(broker_process, http_publisher, chaos_proxy, http_server):
    broker = broker_process(*broker_flags(http_server))
    proxy = await chaos_proxy(broker.port)
    wire = _WireLog()
    client = aiocometd_ng.Client(proxy.url(), connection_types=[aiocometd_ng.ConnectionType.LONG_POLLING],
                                 connection_timeout=10, extensions=[wire])
    async with asyncio.timeout(30):
        await client.open()
        try:
            await client.subscribe(CHANNEL)
            [handshake] = wire.replies("/meta/handshake")
            mark = len(wire.received)

            assert await proxy.outage(OUTAGE) >= 1

            # aiocometd re-sends its subscriptions batched with the connect after a re-handshake.
            try:
                again = await _wait(lambda: [m for m in wire.replies("/meta/subscribe", mark)
                                             if m.get("clientId") != handshake["clientId"]],
                                    "a subscription on a new session", RECOVERY)
            except TimeoutError:
                raise AssertionError(f"no subscription on a new session:\n{wire.dump(mark)}\n"
                                     f"--- broker log ---\n{broker.log()[-3000:]}") from None
            assert again[0]["subscription"] == CHANNEL
            assert [m for m in wire.received[mark:] if m.get("channel") == "/meta/connect"
                    and str(m.get("error", "")).startswith("402::session_unknown")], wire.dump(mark)

            await publish_after_recovery(http_publisher, broker)
            message = await _receive(client, DELIVERY)
            assert message["channel"] == CHANNEL and message["data"] == {"after": "outage"}
        finally:
            with contextlib.suppress(Exception):
                await client.close()
