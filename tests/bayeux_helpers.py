"""Small raw-Bayeux helpers shared by the transport tests (long-polling, callback-polling, websocket).

Everything here speaks the wire protocol directly (no Bayeux client library), so tests
see exactly what the server sends.

Three layers:

* Message builders (`handshake_message`, `connect_message`, ...) return plain dicts.
  Each takes an optional `id`; by default a fresh string id is generated.
* `send(target, messages)` sends one batch and returns the parsed reply array.
  `target` is either an aiohttp `TestClient` (the batch is POSTed as JSON to
  `path`, default `/cometd`) or any async callable `messages -> reply list`
  (a websocket test passes a function that sends a frame and reads the answer).
* Conveniences built on `send`: `handshake`, `connect`, `subscribe`, `unsubscribe`,
  `publish`, `disconnect` (each returns the reply array), `open_session` (handshake +
  first connect, returns the clientId) and inspection helpers (`reply_to`, `events_in`,
  `wait_parked`, `broker_of`).

For HTTP-level assertions (status, headers, non-JSON bodies) use `post_raw` / `get_raw`,
which return an `HttpReply`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

from cometd_broker.app import BROKER
from cometd_broker.broker import Broker
from cometd_broker.exchange import Answer

Message = dict[str, Any]
Sender = Callable[[list[Message]], Awaitable[list[Message]]]
Target = TestClient | Sender

MOUNT = "/cometd"
DEFAULT_TYPES = ("long-polling",)

_ids = itertools.count(1)


def next_id() -> str:
    """A fresh alphanumeric message id (string, as real clients send)."""
    return str(next(_ids))


# --------------------------------------------------------------------------- message builders


def handshake_message(*, connection_types: Iterable[str] = DEFAULT_TYPES, ext: Mapping[str, Any] | None = None,
                      id: str | None = None, **extra: Any) -> Message:
    message: Message = {"channel": "/meta/handshake", "version": "1.0", "minimumVersion": "1.0",
                        "supportedConnectionTypes": list(connection_types), "id": id or next_id()}
    if ext is not None:
        message["ext"] = dict(ext)
    message.update(extra)
    return message


def connect_message(client_id: str, *, connection_type: str = "long-polling", timeout: int | None = None,
                    id: str | None = None, **extra: Any) -> Message:
    """A /meta/connect; `timeout` (ms) is sent as the client's `advice.timeout`."""
    message: Message = {"channel": "/meta/connect", "clientId": client_id, "connectionType": connection_type,
                        "id": id or next_id()}
    if timeout is not None:
        message["advice"] = {"timeout": timeout}
    message.update(extra)
    return message


def subscribe_message(client_id: str, subscription: str | list[str], *, id: str | None = None,
                      **extra: Any) -> Message:
    return {"channel": "/meta/subscribe", "clientId": client_id, "subscription": subscription,
            "id": id or next_id(), **extra}


def unsubscribe_message(client_id: str, subscription: str | list[str], *, id: str | None = None,
                        **extra: Any) -> Message:
    return {"channel": "/meta/unsubscribe", "clientId": client_id, "subscription": subscription,
            "id": id or next_id(), **extra}


def publish_message(client_id: str | None, channel: str, data: Any, *, id: str | None = None,
                    **extra: Any) -> Message:
    message: Message = {"channel": channel, "data": data, "id": id or next_id()}
    if client_id is not None:
        message["clientId"] = client_id
    message.update(extra)
    return message


def disconnect_message(client_id: str, *, id: str | None = None, **extra: Any) -> Message:
    return {"channel": "/meta/disconnect", "clientId": client_id, "id": id or next_id(), **extra}


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class HttpReply:
    """One HTTP response, fully read."""

    status: int
    content_type: str
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    def jsonp(self, callback: str) -> Any:
        """The JSON inside `callback(...);` (asserts the wrapping)."""
        prefix, suffix = f"{callback}(", ");"
        assert self.text.startswith(prefix) and self.text.endswith(suffix), self.text[:200]
        return json.loads(self.text[len(prefix):-len(suffix)])

    def set_cookies(self) -> list[str]:
        return self.headers.getall("Set-Cookie", [])


async def post_raw(client: TestClient, body: Any = None, *, path: str = MOUNT, data: Any = None,
                   headers: Mapping[str, str] | None = None, cookies: Mapping[str, str] | None = None,
                   method: str = "POST") -> HttpReply:
    """Send `body` JSON-encoded (or `data` verbatim: bytes, str, form fields) and read the whole reply."""
    kwargs: dict[str, Any] = {"headers": dict(headers or {}), "cookies": cookies}
    if data is not None:
        kwargs["data"] = data
    elif body is not None:
        kwargs["data"] = json.dumps(body)
        kwargs["headers"].setdefault("Content-Type", "application/json")
    async with client.request(method, path, **kwargs) as response:
        return HttpReply(response.status, response.content_type, response.headers, await response.text())


async def get_raw(client: TestClient, params: Any = None, *, path: str = MOUNT,
                  cookies: Mapping[str, str] | None = None) -> HttpReply:
    async with client.get(path, params=params, cookies=cookies) as response:
        return HttpReply(response.status, response.content_type, response.headers, await response.text())


# --------------------------------------------------------------------------- batches


async def send(target: Target, messages: Message | list[Message], *, expect_status: int | None = 200,
               **http: Any) -> list[Message]:
    """Send one batch; return the parsed reply array.

    With a TestClient, extra keyword arguments (path, headers, cookies) go to `post_raw`
    and the HTTP status is checked against `expect_status` (None: not checked).
    """
    batch = messages if isinstance(messages, list) else [messages]
    if isinstance(target, TestClient):
        reply = await post_raw(target, batch, **http)
        if expect_status is not None:
            assert reply.status == expect_status, (reply.status, reply.text)
        assert reply.content_type == "application/json", reply.content_type
        parsed = reply.json()
        assert isinstance(parsed, list), parsed
        return parsed
    assert not http, f"HTTP options {sorted(http)} need a TestClient target"
    return await target(batch)


async def handshake(target: Target, *, connection_types: Iterable[str] = DEFAULT_TYPES,
                    ext: Mapping[str, Any] | None = None, id: str | None = None, **http: Any) -> list[Message]:
    return await send(target, handshake_message(connection_types=connection_types, ext=ext, id=id), **http)


async def connect(target: Target, client_id: str, *, connection_type: str = "long-polling",
                  timeout: int | None = None, id: str | None = None, **http: Any) -> list[Message]:
    return await send(target, connect_message(client_id, connection_type=connection_type, timeout=timeout, id=id),
                      **http)


async def subscribe(target: Target, client_id: str, subscription: str | list[str], *, id: str | None = None,
                    **http: Any) -> list[Message]:
    return await send(target, subscribe_message(client_id, subscription, id=id), **http)


async def unsubscribe(target: Target, client_id: str, subscription: str | list[str], *, id: str | None = None,
                      **http: Any) -> list[Message]:
    return await send(target, unsubscribe_message(client_id, subscription, id=id), **http)


async def publish(target: Target, client_id: str | None, channel: str, data: Any, *, id: str | None = None,
                  **http: Any) -> list[Message]:
    return await send(target, publish_message(client_id, channel, data, id=id), **http)


async def disconnect(target: Target, client_id: str, *, id: str | None = None, **http: Any) -> list[Message]:
    return await send(target, disconnect_message(client_id, id=id), **http)


async def handshake_id(target: Target, **kwargs: Any) -> str:
    """Handshake (asserting success) and return the new clientId."""
    replies = await handshake(target, **kwargs)
    assert len(replies) == 1 and replies[0].get("successful") is True, replies
    return replies[0]["clientId"]


async def open_session(target: Target, *, connection_type: str = "long-polling",
                       subscriptions: Iterable[str] = (), **kwargs: Any) -> str:
    """Handshake, subscribe to `subscriptions`, do the first (immediately answered) connect; return clientId."""
    http = {k: kwargs.pop(k) for k in ("path", "headers", "cookies") if k in kwargs}
    client_id = await handshake_id(target, connection_types=kwargs.pop("connection_types", (connection_type,)),
                                   **kwargs, **http)
    for name in subscriptions:
        reply = reply_to(await subscribe(target, client_id, name, **http), "/meta/subscribe")
        assert reply["successful"] is True, reply
    reply = reply_to(await connect(target, client_id, connection_type=connection_type, **http), "/meta/connect")
    assert reply["successful"] is True, reply
    return client_id


# --------------------------------------------------------------------------- inspection


def reply_to(replies: list[Message], channel: str, id: str | None = None) -> Message:
    """The single reply (has `successful`) on `channel` (and with `id`, if given)."""
    found = [m for m in replies if m.get("channel") == channel and "successful" in m
             and (id is None or m.get("id") == id)]
    assert len(found) == 1, f"expected one reply on {channel} id={id}: {replies}"
    return found[0]


def events_in(replies: list[Message]) -> list[Message]:
    """Delivered events: messages that are not replies (no `successful`) and carry `data`."""
    return [m for m in replies if "successful" not in m and "data" in m]


def broker_of(client: TestClient) -> Broker:
    return client.app[BROKER]


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0, what: str = "condition") -> None:
    """Poll `predicate` every 5 ms until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_parked(broker: Broker, client_id: str, timeout: float = 2.0) -> None:
    """Wait until the session's /meta/connect is held by the server."""
    def parked() -> bool:
        session = broker.session(client_id)
        return session is not None and session.parked is not None

    await wait_until(parked, timeout, f"a parked /meta/connect of {client_id}")


@pytest.fixture(params=["lean", "aiohttp"], name="http_server")
def both_http_servers(request: pytest.FixtureRequest) -> str:
    """Import into a test module to run each of its tests on both HTTP paths `serve` can use:
    the lean long-polling path and plain aiohttp (see conftest.make_client)."""
    return request.param


class RecordingResponder:
    """An exchange responder that keeps its answers: a request's side of the exchange without sockets,
    whose connection never reports itself gone."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []

    def writable(self) -> bool:
        return True

    def respond(self, answer: Answer) -> None:
        self.answers.append(answer)


def hold_loop_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Block the calling thread (in a test, the loop: held in this turn, as a busy loop is) until
    `condition()`, polling; fails after `timeout`. Sleeping releases the GIL, so other threads move."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
