"""One connection to the broker under test, kept for many requests: raw HTTP/1.1 keep-alive long-polling
or a websocket. Tests of bad input use it to show that the server answers on the very connection that
carried the bad request, and keeps serving it (a fresh connection per request would hide a connection
the server dropped)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from bayeux_helpers import MOUNT

Message = dict[str, Any]
WAIT = 5.0  # seconds: anything here is answered at once


class HttpConnection:
    """Long-polling POSTs over one keep-alive TCP connection, read as they come off the wire."""

    transport = "long-polling"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, client: TestClient) -> HttpConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        return cls(reader, writer)

    async def exchange(self, messages: Any, *, content_type: str = "application/json",
                       raw: bytes | None = None) -> tuple[int, list[Message]]:
        """Send one body (`messages` as JSON, or `raw` bytes); the HTTP status and the reply array."""
        body = raw if raw is not None else json.dumps(messages).encode()
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                          % (MOUNT.encode(), content_type.encode(), len(body)) + body)
        try:
            async with asyncio.timeout(WAIT):
                head = await self.reader.readuntil(b"\r\n\r\n")
                length = _content_length(head)
                data = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise AssertionError(f"the server closed the connection instead of answering {body[:200]!r}") from exc
        status = int(head.split(b" ", 2)[1])
        replies = json.loads(data)
        assert isinstance(replies, list), replies
        return status, replies

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


class WebSocketConnection:
    """Bayeux over one websocket: each request frame is answered by one frame."""

    transport = "websocket"

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws

    @classmethod
    async def open(cls, client: TestClient) -> WebSocketConnection:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(str(client.make_url(MOUNT)))
        return cls(session, ws)

    async def exchange(self, messages: Any, *, raw: bytes | None = None) -> tuple[int, list[Message]]:
        """Send one frame; (200, the messages of the frame that answers it)."""
        await self.ws.send_str(raw.decode() if raw is not None else json.dumps(messages))
        async with asyncio.timeout(WAIT):
            frame = await self.ws.receive()
        assert frame.type is aiohttp.WSMsgType.TEXT, f"websocket closed instead of answering: {frame!r}"
        replies = json.loads(frame.data)
        assert isinstance(replies, list), replies
        return 200, replies

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


Connection = HttpConnection | WebSocketConnection


async def open_connection(client: TestClient, transport: str) -> Connection:
    if transport == "websocket":
        return await WebSocketConnection.open(client)
    return await HttpConnection.open(client)


async def handshake(conn: Connection) -> str:
    """A session handshaken on `conn`; its clientId."""
    _, [reply] = await conn.exchange([{"channel": "/meta/handshake", "version": "1.0", "id": "h",
                                       "supportedConnectionTypes": [conn.transport]}])
    assert reply["successful"] is True, reply
    return reply["clientId"]


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise AssertionError(f"a reply without Content-Length: {head!r}")
