"""The lean long-polling path in front of aiohttp (http/lean_http.py), spoken to over raw sockets.

What a client relies on: plain long-polls are answered correctly whatever way their bytes arrive;
every other request on the same connection, before or after, is served by aiohttp unchanged;
requests on one connection are answered in order; a client that goes away costs nothing.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
from aiohttp import web
from conftest import USERS, LeanTestServer
from ws_helpers import client_frame

from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER, add_mount
from cometd_broker.serving import LeanAppRunner, lean_mounts

AUTH = "Basic " + base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()


class RawConnection:
    """One keep-alive TCP connection; reads whole HTTP/1.1 responses with a Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.setdefault(name.strip().lower(), value.strip())
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", 0))), timeout)
        return status, headers, body

    async def closed(self, timeout: float = 5.0) -> bool:
        return await asyncio.wait_for(self.reader.read(1), timeout) == b""

    def close(self) -> None:
        self.writer.close()


def post(messages: Any, *, path: str = "/cometd", extra: str = "", version: str = "HTTP/1.1",
         content_type: str = "application/json") -> bytes:
    body = messages if isinstance(messages, bytes) else orjson.dumps(messages)
    return (f"POST {path} {version}\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Authorization: {AUTH}\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


HANDSHAKE = {"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]}


def connect(client_id: str, **extra: Any) -> dict[str, Any]:
    return {"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling", **extra}


@pytest.fixture
async def lean_server(aiohttp_server):
    """A broker served the way `cometd-broker serve` does; yields (port, broker)."""
    app = create_app(BrokerConfig(users=",".join(f"{u}:{p}" for u, p in USERS.items()), timeout=2000,
                                  admin_token="a-long-admin-token-for-tests"))
    server = LeanTestServer(app)
    await server.start_server()
    assert isinstance(server.runner, LeanAppRunner) and server.runner.lean is not None
    yield server.port, app[BROKER]
    await server.close()


async def handshake(conn: RawConnection) -> str:
    conn.send(post([HANDSHAKE]))
    status, headers, body = await conn.response()
    assert status == 200
    assert headers["set-cookie"].startswith("BAYEUX_BROWSER=") and "HttpOnly" in headers["set-cookie"]
    return orjson.loads(body)[0]["clientId"]


async def test_handshake_and_first_connect_are_plain_json_replies(lean_server) -> None:
    port, _ = lean_server
    conn = await RawConnection.open(port)
    client_id = await handshake(conn)
    conn.send(post([connect(client_id)]))
    status, headers, body = await conn.response()
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    assert "date" in headers
    [reply] = orjson.loads(body)
    assert reply["channel"] == "/meta/connect" and reply["successful"] is True and reply["clientId"] == client_id
    conn.close()


async def test_a_request_split_into_many_writes_is_served_once_whole(lean_server) -> None:
    port, _ = lean_server
    conn = await RawConnection.open(port)
    data = post([HANDSHAKE])
    for i in range(0, len(data), 7):  # the head and the body arrive in pieces
        conn.send(data[i:i + 7])
        await conn.writer.drain()
        await asyncio.sleep(0.001)
    status, _, body = await conn.response()
    assert status == 200 and orjson.loads(body)[0]["successful"] is True
    conn.close()


async def test_pipelined_requests_are_answered_in_order(lean_server) -> None:
    port, _ = lean_server
    conn = await RawConnection.open(port)
    client_id = await handshake(conn)
    subscribe = {"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/news", "id": "s"}
    # Three requests in one write: a connect, a subscribe (which waits on the broker) and a publish.
    conn.send(post([connect(client_id, id="c")]) + post([subscribe])
              + post([{"channel": "/news", "clientId": client_id, "data": {"n": 1}, "id": "p"}]))
    ids = []
    for _ in range(3):
        status, _, body = await conn.response()
        assert status == 200
        ids.append([m.get("id") for m in orjson.loads(body) if m.get("channel", "").startswith("/meta")
                    or m.get("id") == "p"])
    assert ids == [["c"], ["s"], ["p"]]
    conn.close()


async def test_a_held_connect_is_answered_with_the_event_published_to_it(lean_server) -> None:
    port, broker = lean_server
    conn = await RawConnection.open(port)
    client_id = await handshake(conn)
    conn.send(post([{"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/news"}]))
    await conn.response()
    conn.send(post([connect(client_id)]))
    await conn.response()  # the first connect is answered at once
    conn.send(post([connect(client_id, id="held")]))
    await asyncio.sleep(0.05)
    assert broker.session(client_id).parked is not None
    await broker.publish("/news", {"headline": "lean"})
    status, _, body = await conn.response()
    messages = orjson.loads(body)
    assert status == 200
    assert [m["channel"] for m in messages] == ["/meta/connect", "/news"]
    assert messages[0]["id"] == "held" and messages[1]["data"] == {"headline": "lean"}
    conn.close()


async def test_a_client_gone_during_a_held_connect_leaves_the_session_to_expire(lean_server) -> None:
    port, broker = lean_server
    conn = await RawConnection.open(port)
    client_id = await handshake(conn)
    conn.send(post([connect(client_id)]))
    await conn.response()
    conn.send(post([connect(client_id)]))
    await asyncio.sleep(0.05)
    assert broker.session(client_id).parked is not None
    conn.close()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if broker.session(client_id).parked is None:
            break
    session = broker.session(client_id)
    assert session is not None and session.parked is None  # not held for a dead connection ...
    assert session.expires_at != float("inf")  # ... and it expires unless the client comes back


async def test_other_requests_on_the_same_connection_are_served_by_aiohttp(lean_server) -> None:
    port, _ = lean_server
    conn = await RawConnection.open(port)
    client_id = await handshake(conn)
    # JSONP (callback-polling) after a long-poll on the same connection: handed to aiohttp with its bytes.
    message = orjson.dumps([connect(client_id, connectionType="callback-polling")]).decode()
    conn.send(f"GET /cometd?jsonp=cb&message={quote(message)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, headers, body = await conn.response()
    assert status == 200 and body.startswith(b"cb(") and headers["content-type"].startswith("text/javascript")
    # ... and the connection stays with aiohttp, which still serves long-polls correctly.
    conn.send(post([connect(client_id)]))
    status, _, body = await conn.response()
    assert status == 200 and orjson.loads(body)[0]["channel"] == "/meta/connect"
    conn.close()


async def test_routes_outside_the_mount_reach_aiohttp(lean_server) -> None:
    port, _ = lean_server
    conn = await RawConnection.open(port)
    conn.send(b"GET /admin/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-long-admin-token-for-tests\r\n\r\n")
    status, _, body = await conn.response()
    assert status == 200 and isinstance(orjson.loads(body), (dict, list))
    conn.send(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]")
    status, _, _ = await conn.response()
    assert status == 404
    conn.close()


@pytest.mark.parametrize("framing", ["chunked", "expect"])
async def test_bodies_the_lean_path_does_not_frame_are_served_by_aiohttp(lean_server, framing: str) -> None:
    port, _ = lean_server
    conn = await RawConnection.open(port)
    body = orjson.dumps([HANDSHAKE])
    if framing == "chunked":
        conn.send(f"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: {AUTH}"
                  f"\r\nTransfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    else:
        conn.send(post([HANDSHAKE], extra="Expect: 100-continue\r\n"))
    status, _, reply = await conn.response()
    if status == 100:
        status, _, reply = await conn.response()
    assert status == 200 and orjson.loads(reply)[0]["successful"] is True
    conn.close()


async def test_a_body_over_the_limit_gets_the_bayeux_413_error(lean_server) -> None:
    port, broker = lean_server
    conn = await RawConnection.open(port)
    size = broker.config.max_message_size + 1
    conn.send(f"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}"
              f"\r\n\r\n".encode())
    status, _, body = await conn.response()
    assert status == 413 and "message_too_large" in orjson.loads(body)[0]["error"]
    conn.close()


async def test_a_body_that_is_not_json_gets_a_bayeux_400_and_the_connection_stays_usable(lean_server) -> None:
    port, _ = lean_server
    conn = await RawConnection.open(port)
    conn.send(post(b"{not json"))
    status, _, body = await conn.response()
    [reply] = orjson.loads(body)
    assert status == 400 and reply["successful"] is False and "not valid JSON" in reply["error"]
    await handshake(conn)
    conn.close()


async def test_form_encoded_long_polls_are_served(lean_server) -> None:
    port, _ = lean_server
    conn = await RawConnection.open(port)
    form = urlencode({"message": orjson.dumps([HANDSHAKE]).decode()}).encode()
    conn.send(post(form, content_type="application/x-www-form-urlencoded"))
    status, _, body = await conn.response()
    assert status == 200 and orjson.loads(body)[0]["successful"] is True
    conn.close()


@pytest.mark.parametrize(("version", "extra"), [("HTTP/1.1", "Connection: close\r\n"), ("HTTP/1.0", "")])
async def test_connection_close_is_honoured(lean_server, version: str, extra: str) -> None:
    port, _ = lean_server
    conn = await RawConnection.open(port)
    conn.send(post([HANDSHAKE], version=version, extra=extra))
    status, headers, _ = await conn.response()
    assert status == 200 and headers.get("connection") == "close"
    assert await conn.closed()


async def test_a_malformed_head_is_refused_by_aiohttp_not_crashed_on(lean_server) -> None:
    port, _ = lean_server
    conn = await RawConnection.open(port)
    conn.send(b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    status, _, _ = await conn.response()
    assert status == 400
    conn.close()


async def test_the_broker_answers_held_connects_when_the_server_stops(aiohttp_server) -> None:
    app = create_app(BrokerConfig(users=",".join(f"{u}:{p}" for u, p in USERS.items())))
    server = LeanTestServer(app)
    await server.start_server()
    conn = await RawConnection.open(server.port)
    client_id = await handshake(conn)
    conn.send(post([connect(client_id)]))
    await conn.response()
    conn.send(post([connect(client_id)]))
    await asyncio.sleep(0.05)
    closing = asyncio.ensure_future(server.close())
    status, _, body = await conn.response()
    [reply] = orjson.loads(body)
    assert status == 200 and "server_shutdown" in reply["error"] and reply["advice"]["reconnect"] == "handshake"
    await closing
    assert await conn.closed()


def test_the_lean_path_takes_only_mounts_no_other_route_lives_under() -> None:
    app = create_app(BrokerConfig(allow_anonymous=True))
    add_mount(app, "/")  # a second mount at the root: every path, left to aiohttp's router
    add_mount(app, "/bayeux")

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hi")

    app.router.add_get("/bayeux/status", hello)  # a route under a mount: that mount stays on aiohttp
    assert lean_mounts(app) == ["/cometd"]


# --------------------------------------------------------------------------- websocket framing


async def upgraded(port: int) -> RawConnection:
    conn = await RawConnection.open(port)
    conn.send(b"GET /cometd HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Authorization: " + AUTH.encode() + b"\r\n\r\n")
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455's own example
    return conn


async def server_frame(conn: RawConnection) -> tuple[int, bytes]:
    first, second = await asyncio.wait_for(conn.reader.readexactly(2), 5)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await conn.reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await conn.reader.readexactly(8), "big")
    assert not second & 0x80  # server frames are never masked
    return first & 0x0F, await conn.reader.readexactly(size)


async def test_websocket_messages_split_into_fragments_are_reassembled(lean_server) -> None:
    port, _ = lean_server
    conn = await upgraded(port)
    body = orjson.dumps([{**HANDSHAKE, "supportedConnectionTypes": ["websocket"]}])
    conn.send(client_frame(1, body[:10], fin=False) + client_frame(9, b"hi")  # a ping between fragments
              + client_frame(0, body[10:30], fin=False) + client_frame(0, body[30:]))
    opcode, payload = await server_frame(conn)
    assert (opcode, payload) == (0xA, b"hi")  # the pong
    opcode, payload = await server_frame(conn)
    assert opcode == 1 and orjson.loads(payload)[0]["successful"] is True
    conn.close()


async def test_websocket_close_is_echoed_and_the_connection_ends(lean_server) -> None:
    port, _ = lean_server
    conn = await upgraded(port)
    conn.send(client_frame(8, (1000).to_bytes(2, "big")))
    opcode, payload = await server_frame(conn)
    assert opcode == 8 and payload == (1000).to_bytes(2, "big")
    assert await conn.closed()


@pytest.mark.parametrize(("frame_bytes", "code"), [
    (client_frame(1, b"[]", masked=False), 1002),  # clients must mask
    (client_frame(0, b"[]"), 1002),  # a continuation with nothing to continue
])
async def test_websocket_protocol_errors_close_with_the_rfc_code(lean_server, frame_bytes: bytes, code: int) -> None:
    port, _ = lean_server
    conn = await upgraded(port)
    conn.send(frame_bytes)
    opcode, payload = await server_frame(conn)
    assert opcode == 8 and int.from_bytes(payload[:2], "big") == code
    assert await conn.closed()


async def test_a_websocket_message_over_the_limit_closes_with_1009(lean_server) -> None:
    port, broker = lean_server
    conn = await upgraded(port)
    conn.send(client_frame(1, b" " * (broker.config.max_message_size + 1)))
    opcode, payload = await server_frame(conn)
    assert opcode == 8 and int.from_bytes(payload[:2], "big") == 1009
    assert await conn.closed()


async def test_an_upgrade_with_a_bad_key_is_refused_by_aiohttp(lean_server) -> None:
    port, _ = lean_server
    conn = await RawConnection.open(port)
    conn.send(b"GET /cometd HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n")
    status, _, _ = await conn.response()
    assert status == 400
    conn.close()
