"""cometd_broker.cluster.forwarding: relaying a request to the owner process when its connection is already closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from cometd_broker.cluster.forwarding import Forwarder, ForwardError

REQUEST = b"POST /cometd HTTP/1.1\r\nHost: owner\r\nContent-Length: 2\r\n\r\n[]"
REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}  # the broker runs on either


async def _owner() -> tuple[asyncio.Server, str, list[bytes]]:
    """A stand-in owner's private port: answers every request with REPLY and keeps the connection."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                received.append(head + await reader.readexactly(2))
                writer.write(REPLY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    return server, f"{host}:{port}", received


Check = Callable[[Forwarder, str, list[bytes]], Awaitable[None]]


def run_against_owner(new_loop: Callable[[], asyncio.AbstractEventLoop], check: Check) -> None:
    """`check(forwarder, owner_address, requests_the_owner_received)` on a fresh loop of the given kind."""
    async def main() -> None:
        server, address, received = await _owner()
        forwarder = Forwarder(read_timeout=2.0)
        try:
            await check(forwarder, address, received)
        finally:
            forwarder.close()
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())


@pytest.mark.parametrize("new_loop", LOOPS.values(), ids=LOOPS.keys())
def test_a_connection_closed_before_the_request_is_sent_fails_as_a_forward_error(
        new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """The owner reset a new connection (it was killed): a ForwardError the router answers with 402, not
    a RuntimeError from the closed transport (uvloop) or a request that silently went nowhere (asyncio)."""
    async def check(forwarder: Forwarder, address: str, received: list[bytes]) -> None:
        connection = await forwarder._open(address)
        connection.close()  # as a reset seen between connecting and writing leaves it
        with pytest.raises(ForwardError, match="closed the connection before the request was sent"):
            await forwarder._exchange(address, connection, REQUEST, reused=False)
        assert received == []

    run_against_owner(new_loop, check)


@pytest.mark.parametrize("new_loop", LOOPS.values(), ids=LOOPS.keys())
def test_a_pooled_connection_closed_while_idle_is_replaced_and_the_request_goes_through_once(
        new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def check(forwarder: Forwarder, address: str, received: list[bytes]) -> None:
        assert (await forwarder.send(address, REQUEST)).status == 200  # pools its connection
        [pooled] = forwarder._idle[address]
        pooled.close()  # closed while idle, before the next request
        pooled.idle_since = time.monotonic()
        reply = await forwarder.send(address, REQUEST)
        assert (reply.status, reply.body) == (200, b"[]")
        assert received == [REQUEST, REQUEST]  # each request reached the owner exactly once

    run_against_owner(new_loop, check)
