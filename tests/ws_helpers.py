"""Raw Bayeux over websockets (and per-browser long-polling) for the broker tests.

`Browser` is one simulated browser: its own aiohttp ClientSession and cookie
jar (so its BAYEUX_BROWSER cookie is its own), able to POST long-polling
batches and open websockets on the mount URL. `WsPeer` wraps one websocket:
it keeps every message received in an inbox, in arrival order, and lets a test
wait (always bounded) for a reply or for events. `Agent` is a transport-neutral
Bayeux client (long-polling or websocket) used by the tests that must run over
both transports.

Message builders come from `bayeux_helpers`; nothing here knows the server's internals.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from bayeux_helpers import (
    MOUNT,
    connect_message,
    handshake_message,
    publish_message,
    subscribe_message,
    unsubscribe_message,
)
from conftest import USERS

Message = dict[str, Any]
Predicate = Callable[[Message], bool]

WAIT = 5.0  # upper bound for anything the server should do "at once"
COOKIE = "BAYEUX_BROWSER"



CLIENT_MASK = b"\x37\xfa\x21\x3d"


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool = True,
                 mask: bytes = CLIENT_MASK, length_bytes: int | None = None) -> bytes:
    """One raw client websocket frame (RFC 6455 section 5.2); `length_bytes` forces the length form
    (0: 7-bit, 2: 16-bit, 8: 64-bit), otherwise the shortest is used."""
    size = len(payload)
    if length_bytes is None:
        length_bytes = 0 if size < 126 else 2 if size < 65536 else 8
    bit = 0x80 if masked else 0
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    if length_bytes == 0:
        head += bytes([bit | size])
    elif length_bytes == 2:
        head += bytes([bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def basic_auth(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def ext_auth(user: str) -> dict[str, Any]:
    return {"authentication": {"user": user, "password": USERS[user]}}


def is_event(message: Message) -> bool:
    """A delivered message (not a reply): carries data and no `successful`."""
    return "successful" not in message and "data" in message


def is_reply_to(request: Message) -> Predicate:
    def match(message: Message) -> bool:
        return ("successful" in message and message.get("channel") == request["channel"]
                and message.get("id") == request.get("id"))
    return match


def on_channel(channel: str) -> Predicate:
    return lambda message: is_event(message) and message["channel"] == channel


def datas(events: Iterable[Message]) -> list[Any]:
    return [event["data"] for event in events]


class WsClosed(AssertionError):
    """The websocket closed (or errored) while a test waited for a message."""

    def __init__(self, frame: aiohttp.WSMessage) -> None:
        super().__init__(f"websocket closed: {frame.type!r} data={frame.data!r} extra={frame.extra!r}")
        self.frame = frame


class WsPeer:
    """One client websocket speaking raw Bayeux."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.inbox: list[Message] = []  # received, not yet taken by a test, in arrival order
        self.frames: list[list[Message]] = []  # every frame received
        self.client_id: str | None = None

    # -- sending

    async def send(self, *messages: Message) -> None:
        await self.ws.send_str(json.dumps(list(messages)))

    async def send_text(self, text: str) -> None:
        await self.ws.send_str(text)

    # -- receiving

    async def _read_frame(self, timeout: float) -> list[Message]:
        async with asyncio.timeout(timeout):
            frame = await self.ws.receive()
        if frame.type is not WSMsgType.TEXT:
            raise WsClosed(frame)
        messages = json.loads(frame.data)
        assert isinstance(messages, list), f"a frame must be a JSON array: {frame.data!r}"
        self.frames.append(messages)
        self.inbox.extend(messages)
        return messages

    async def expect(self, predicate: Predicate, timeout: float = WAIT, what: str = "a message") -> Message:
        """Take the first message in the inbox matching `predicate`, reading frames until one arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for index, message in enumerate(self.inbox):
                if predicate(message):
                    return self.inbox.pop(index)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout}s; inbox: {self.inbox}")
            try:
                await self._read_frame(remaining)
            except TimeoutError:
                raise AssertionError(f"no {what} within {timeout}s; inbox: {self.inbox}") from None

    async def reply(self, request: Message, timeout: float = WAIT) -> Message:
        return await self.expect(is_reply_to(request), timeout, f"reply to {request['channel']} id={request.get('id')}")

    async def request(self, message: Message, timeout: float = WAIT) -> Message:
        """Send one message alone in a frame and return its reply."""
        await self.send(message)
        return await self.reply(message, timeout)

    async def events(self, count: int, predicate: Predicate = is_event, timeout: float = WAIT) -> list[Message]:
        """Take the next `count` events matching `predicate`, in arrival order."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        taken = []
        for _ in range(count):
            remaining = max(deadline - loop.time(), 0.001)
            try:
                taken.append(await self.expect(predicate, remaining, "event"))
            except AssertionError as exc:
                raise AssertionError(f"got {len(taken)} of {count} events ({datas(taken)}): {exc}") from None
        return taken

    async def quiet(self, seconds: float) -> list[Message]:
        """Read for `seconds`; return what arrived (it also stays in the inbox)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        arrived: list[Message] = []
        while (remaining := deadline - loop.time()) > 0:
            try:
                arrived.extend(await self._read_frame(remaining))
            except TimeoutError:
                break
        return arrived

    async def closed(self, timeout: float = WAIT) -> aiohttp.WSMessage:
        """Read until the server closes; return the close frame (text frames go to the inbox)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await self._read_frame(max(deadline - loop.time(), 0.001))
            except WsClosed as closed:
                return closed.frame
            except TimeoutError:
                raise AssertionError(f"websocket still open after {timeout}s; inbox: {self.inbox}") from None

    # -- Bayeux conveniences

    async def handshake(self, user: str | None = None, **kwargs: Any) -> str:
        ext = ext_auth(user) if user is not None else None
        reply = await self.request(handshake_message(connection_types=("websocket", "long-polling"), ext=ext,
                                                     **kwargs))
        assert reply["successful"] is True, reply
        self.client_id = reply["clientId"]
        return reply["clientId"]

    async def connect(self, client_id: str | None = None, timeout: float = WAIT) -> Message:
        reply = await self.request(connect_message(client_id or self._cid(), connection_type="websocket"), timeout)
        return reply

    async def subscribe(self, subscription: str | list[str]) -> Message:
        return await self.request(subscribe_message(self._cid(), subscription))

    async def unsubscribe(self, subscription: str | list[str]) -> Message:
        return await self.request(unsubscribe_message(self._cid(), subscription))

    async def publish(self, channel: str, data: Any) -> Message:
        return await self.request(publish_message(self._cid(), channel, data))

    def _cid(self) -> str:
        assert self.client_id is not None, "handshake first"
        return self.client_id


class Browser:
    """A simulated browser: own cookie jar, long-polling POSTs and websockets to the mount URL."""

    def __init__(self, client: TestClient, path: str = MOUNT) -> None:
        self.url = str(client.make_url(path))
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.tasks: list[asyncio.Task[Any]] = []

    def cookie(self, name: str = COOKIE) -> str | None:
        for morsel in self.http.cookie_jar:
            if morsel.key == name:
                return morsel.value
        return None

    async def post(self, messages: list[Message], *, headers: dict[str, str] | None = None,
                   timeout: float = WAIT) -> tuple[int, list[Message]]:
        """POST one batch as JSON; (HTTP status, parsed reply array)."""
        async with asyncio.timeout(timeout), self.http.post(
                self.url, data=json.dumps(messages),
                headers={"Content-Type": "application/json", **(headers or {})}) as response:
            body = await response.read()
        try:
            parsed = json.loads(body)
        except ValueError:
            raise AssertionError(f"HTTP {response.status} {response.content_type}: not JSON: {body[:200]!r}") from None
        assert isinstance(parsed, list), parsed
        return response.status, parsed

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        """A background request (a parked connect), cancelled when the browser closes."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.append(task)
        return task

    async def websocket(self, headers: dict[str, str] | None = None) -> WsPeer:
        ws = await self.http.ws_connect(self.url, headers=headers, autoping=True)
        self.sockets.append(ws)
        return WsPeer(ws)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for ws in self.sockets:
            if not ws.closed:
                try:
                    async with asyncio.timeout(2):
                        await ws.close()
                except (TimeoutError, aiohttp.ClientError, ConnectionError):
                    pass
        await self.http.close()


class Browsers:
    """Every browser a test opened, closed together at teardown."""

    def __init__(self) -> None:
        self.opened: list[Browser] = []

    def open(self, client: TestClient) -> Browser:
        browser = Browser(client)
        self.opened.append(browser)
        return browser

    async def close(self) -> None:
        for browser in self.opened:
            await browser.close()


class Agent:
    """A Bayeux client over one transport, in its own browser: the same test runs over both.

    `receive_until(predicate)` returns every event delivered up to and including
    the first one matching `predicate` (a marker published after what is checked:
    a session's events are delivered in order, so the marker is a barrier).
    """

    def __init__(self, browser: Browser, transport: str) -> None:
        assert transport in ("long-polling", "websocket"), transport
        self.browser = browser
        self.transport = transport
        self.peer: WsPeer | None = None
        self.client_id: str | None = None
        self.pending: list[Message] = []  # events seen in replies, not yet taken

    async def handshake(self, user: str | None = None, *, auth: str = "ext") -> str:
        """Handshake as `user` (ext.authentication or a Basic header) and do the first connect."""
        headers = basic_auth(user) if user is not None and auth == "basic" else None
        ext = ext_auth(user) if user is not None and auth == "ext" else None
        message = handshake_message(connection_types=(self.transport,), ext=ext)
        if self.transport == "websocket":
            self.peer = await self.browser.websocket(headers=headers)
            reply = await self.peer.request(message)
        else:
            status, replies = await self.browser.post([message], headers=headers)
            assert status == 200, (status, replies)
            reply = replies[0]
        assert reply.get("successful") is True, reply
        self.client_id = reply["clientId"]
        first = await self.request(connect_message(self.client_id, connection_type=self.transport))
        assert first["successful"] is True, first
        if self.peer is not None:
            # Keep a connect parked, as real websocket clients do; events are pushed meanwhile.
            await self.peer.send(connect_message(self.client_id, connection_type="websocket"))
        return self.client_id

    async def request(self, message: Message) -> Message:
        """Send one message and return its reply (events in the same response are kept)."""
        if self.peer is not None:
            return await self.peer.request(message)
        status, replies = await self.browser.post([message])
        match = is_reply_to(message)
        found = [m for m in replies if match(m)]
        assert len(found) == 1, (status, replies)
        self.pending.extend(m for m in replies if is_event(m))
        return found[0]

    async def subscribe(self, subscription: str | list[str]) -> Message:
        return await self.request(subscribe_message(self._cid(), subscription))

    async def unsubscribe(self, subscription: str | list[str]) -> Message:
        return await self.request(unsubscribe_message(self._cid(), subscription))

    async def publish(self, channel: str, data: Any) -> Message:
        return await self.request(publish_message(self._cid(), channel, data))

    async def receive_until(self, predicate: Predicate, timeout: float = WAIT) -> list[Message]:
        received: list[Message] = []
        async with asyncio.timeout(timeout):
            while True:
                while self.pending:
                    event = self.pending.pop(0)
                    received.append(event)
                    if predicate(event):
                        return received
                if self.peer is not None:
                    self.pending.append(await self.peer.expect(is_event, timeout, "event"))
                else:
                    status, replies = await self.browser.post(
                        [connect_message(self._cid(), connection_type="long-polling")], timeout=timeout)
                    assert status == 200, (status, replies)
                    connect_reply = [m for m in replies if m.get("channel") == "/meta/connect"]
                    assert connect_reply and connect_reply[0]["successful"] is True, replies
                    self.pending.extend(m for m in replies if is_event(m))

    def _cid(self) -> str:
        assert self.client_id is not None, "handshake first"
        return self.client_id
