"""cometd_broker.cluster.private_port and the relay client together: one private port per host serving the Bayeux
relay and named services, 421 for a service not offered, and the retry-before-send rule of relay_to_any."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from cometd_broker.cluster.forwarding import Forwarder, ForwardError, relay_request
from cometd_broker.cluster.private_port import FORWARDED_BY, RELAY_SERVICE, PrivatePort, private_port

HOST = [("Host", "gws.example")]  # every HTTP/1.1 request has one: the client's is relayed


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"method": request.method, "path": request.path_qs, "body": body.decode(),
                              "headers": dict(request.headers)}, headers={"Set-Cookie": "JSESSIONID=1"})


async def no_content(_: web.Request) -> web.Response:
    return web.Response(status=204)


async def engine_runner() -> web.AppRunner:
    """An aiohttp app as a service runs it: set up, never given a site of its own."""
    app = web.Application()
    app.router.add_route("*", "/api/echo", echo)
    app.router.add_route("*", "/api/empty", no_content)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner


@pytest.fixture
async def port() -> AsyncIterator[PrivatePort]:
    opened = PrivatePort("127.0.0.1")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    client = Forwarder(read_timeout=5.0)
    yield client
    client.close()


def test_every_part_of_a_process_binding_one_host_shares_its_port() -> None:
    app = web.Application()
    assert private_port(app, "127.0.0.1") is private_port(app, "127.0.0.1")
    assert private_port(app, "127.0.0.1") is not private_port(app, "::1")


async def test_the_port_listens_until_its_last_user_closes_it() -> None:
    shared = PrivatePort("127.0.0.1")
    await shared.open()
    await shared.open()
    host, port = shared.address.rsplit(":", 1)
    await shared.close()
    _, writer = await asyncio.open_connection(host, int(port))  # one user left: still listening
    writer.close()
    await shared.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(host, int(port))
    await shared.close()  # more closes than opens change nothing


async def test_a_service_gets_the_clients_request_and_its_reply_is_relayed(port: PrivatePort,
                                                                          forwarder: Forwarder) -> None:
    runner = await engine_runner()
    assert runner.server is not None
    port.offer("engine", runner.server)
    try:
        client_headers = [("Host", "gws.example"), ("Cookie", "JSESSIONID=1"), ("Connection", "keep-alive"),
                          (RELAY_SERVICE, "spoofed"), (FORWARDED_BY, "spoofed"), ("Expect", "100-continue")]
        request = relay_request("POST", "/api/echo?x=1", client_headers, b'{"a":1}', service="engine")
        reply = await forwarder.send(port.address, request)
        assert reply.status == 200 and ("Set-Cookie", "JSESSIONID=1") in reply.headers
        seen = orjson.loads(reply.body)  # the client's request, with the relay's own headers only
        assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/api/echo?x=1", '{"a":1}')
        assert seen["headers"]["Host"] == "gws.example" and seen["headers"]["Cookie"] == "JSESSIONID=1"
        assert seen["headers"][RELAY_SERVICE] == "engine" and FORWARDED_BY not in seen["headers"]
        assert "Expect" not in seen["headers"]
        # Replies without a body (204, or to a HEAD) are read as such, and the connection stays usable.
        for method, path in (("GET", "/api/empty"), ("HEAD", "/api/echo")):
            reply = await forwarder.send(port.address, relay_request(method, path, HOST, b"", service="engine"))
            assert (reply.status, reply.body) == ((204 if path == "/api/empty" else 200), b"")
    finally:
        await port.withdraw("engine")
        await runner.cleanup()


async def test_a_request_without_host_is_relayed_with_one(port: PrivatePort, forwarder: Forwarder) -> None:
    # An HTTP/1.0 client may leave Host out; the relay speaks HTTP/1.1, where aiohttp answers 400 without it.
    runner = await engine_runner()
    assert runner.server is not None
    port.offer("engine", runner.server)
    try:
        request = relay_request("POST", "/api/echo", [("Cookie", "JSESSIONID=1")], b"{}", service="engine")
        reply = await forwarder.send(port.address, request)
        assert reply.status == 200
        assert orjson.loads(reply.body)["headers"]["Host"] == "localhost"
    finally:
        await port.withdraw("engine")
        await runner.cleanup()


async def test_a_service_not_offered_is_421_and_relay_to_any_retries_until_it_is(port: PrivatePort,
                                                                               forwarder: Forwarder) -> None:
    request = relay_request("GET", "/api/echo", HOST, b"", service="engine")
    assert (await forwarder.send(port.address, request)).status == 421
    runner = await engine_runner()
    assert runner.server is not None
    looked_up: list[bool] = []

    async def locate(again: bool) -> str | None:
        looked_up.append(again)
        if len(looked_up) == 3:
            port.offer("engine", runner.server)  # a leader is elected meanwhile
        return port.address

    try:
        reply = await forwarder.relay_to_any(locate, request, wait=5.0)
        assert reply.status == 200 and looked_up == [False, True, True]
        await port.withdraw("engine")
        with pytest.raises(ForwardError) as failed:
            await forwarder.relay_to_any(locate, request, wait=0.3)
        assert failed.value.sent is False  # never served: the caller may say "retry later"
    finally:
        await runner.cleanup()


async def test_a_request_that_reached_its_peer_is_never_sent_twice(forwarder: Forwarder) -> None:
    received: list[bytes] = []

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()  # as a leader killed while handling it

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def locate(_: bool) -> str:
        return address

    try:
        with pytest.raises(ForwardError) as failed:
            await forwarder.relay_to_any(locate, relay_request("POST", "/api/x", HOST, b"", service="engine"), wait=5.0)
        assert failed.value.sent is True and len(received) == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_bayeux_relays_go_to_the_router_and_unmarked_requests_are_refused(port: PrivatePort,
                                                                               forwarder: Forwarder) -> None:
    async def bayeux(request: web.BaseRequest) -> web.Response:
        return web.Response(text=f"bayeux from {request.headers[FORWARDED_BY]}")

    port.bayeux = bayeux
    reply = await forwarder.send(port.address, relay_request("GET", "/cometd?message=[]", HOST, b"",
                                                             forwarded_by="abcd1234"))
    assert (reply.status, reply.body) == (200, b"bayeux from abcd1234")
    reply = await forwarder.send(port.address, relay_request("GET", "/cometd", HOST, b""))
    assert reply.status == 400


async def test_withdrawing_a_service_lets_its_requests_in_flight_finish(port: PrivatePort,
                                                                       forwarder: Forwarder) -> None:
    started, finish = asyncio.Event(), asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        started.set()
        await finish.wait()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    port.offer("engine", runner.server)
    request = relay_request("GET", "/slow", HOST, b"", service="engine")
    in_flight = asyncio.create_task(forwarder.send(port.address, request))
    await asyncio.wait_for(started.wait(), 5)
    withdrawing = asyncio.create_task(port.withdraw("engine"))
    await asyncio.sleep(0.05)
    assert not withdrawing.done()  # waits for the request in flight
    other = Forwarder()  # a connection of its own: the pooled one is busy
    assert (await other.send(port.address, request)).status == 421  # new ones: not served here now
    other.close()
    finish.set()
    assert (await in_flight).body == b"done"
    await withdrawing
    await runner.cleanup()
