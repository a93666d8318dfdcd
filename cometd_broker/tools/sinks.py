"""Where `events replay` sends recorded events: a broker's admin API (the main path) or a Bayeux session.

Both take events in order, a batch at a time, and raise ToolError with one clear line on failure.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

import aiohttp
import orjson

from .errors import ToolError, http_error_text
from .filters import split_stream

TIMEOUT = aiohttp.ClientTimeout(total=30)  # one request; a broker that stops answering fails the run


class Sink(Protocol):
    async def send(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Publish (stream, message) pairs in order."""
        ...

    async def close(self) -> None: ...


class AdminSink:
    """POST /admin/publish: per-user events go back to the same user's channel."""

    def __init__(self, base_url: str, token: str) -> None:
        self.url = base_url.rstrip("/") + "/admin/publish"
        self.http = aiohttp.ClientSession(timeout=TIMEOUT, headers={"Authorization": f"Bearer {token}"})

    async def send(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        items = []
        for stream, message in batch:
            item: dict[str, Any] = {"channel": message["channel"], "data": message.get("data")}
            user, _ = split_stream(stream)
            if user is not None:
                item["user"] = user
            ext = {k: v for k, v in (message.get("ext") or {}).items() if k != "replayId"}
            if ext:
                item["ext"] = ext  # the target broker numbers the events itself
            items.append(item)
        try:
            async with self.http.post(self.url, data=orjson.dumps(items),
                                      headers={"Content-Type": "application/json"}) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ToolError(f"cannot publish to {self.url}: {exc or type(exc).__name__}") from None
        if response.status != 200:
            raise ToolError(f"publish to {self.url} failed: {http_error_text(response.status, body, excerpt=True)}")

    async def close(self) -> None:
        await self.http.close()


class BayeuxSink:
    """A fresh long-polling Bayeux session that publishes each event on its channel, so a broker
    without the admin API (or its subscribers' own authorization) sees a real client's publishes.
    Per-user events cannot be published for another user this way; they are counted and skipped."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token
        self.http = aiohttp.ClientSession(timeout=TIMEOUT)
        self.client_id: str | None = None
        self.skipped = 0
        self._ids = itertools.count(1)

    async def _post(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            async with self.http.post(self.url, data=orjson.dumps(messages),
                                      headers={"Content-Type": "application/json"}) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ToolError(f"cannot reach Bayeux endpoint {self.url}: {exc or type(exc).__name__}") from None
        if response.status != 200:
            answer = http_error_text(response.status, body, excerpt=True)
            raise ToolError(f"Bayeux endpoint {self.url} answered {answer}")
        try:
            replies = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ToolError(f"Bayeux endpoint {self.url} did not answer JSON") from None
        return replies if isinstance(replies, list) else [replies]

    async def _handshake(self) -> str:
        message: dict[str, Any] = {"channel": "/meta/handshake", "version": "1.0", "minimumVersion": "1.0",
                                   "supportedConnectionTypes": ["long-polling"], "id": str(next(self._ids))}
        if self.token:
            message["ext"] = {"authentication": {"token": self.token}}
        reply = (await self._post([message]))[0]
        if not reply.get("successful") or not isinstance(reply.get("clientId"), str):
            raise ToolError(f"handshake with {self.url} failed: {reply.get('error', reply)}")
        return reply["clientId"]

    async def send(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        if self.client_id is None:
            self.client_id = await self._handshake()
        messages = []
        for stream, message in batch:
            if split_stream(stream)[0] is not None:
                self.skipped += 1
                continue
            messages.append({"channel": message["channel"], "data": message.get("data"),
                             "clientId": self.client_id, "id": str(next(self._ids))})
        if not messages:
            return
        for reply in await self._post(messages):
            if not reply.get("successful"):
                raise ToolError(f"publish to {reply.get('channel')} refused: {reply.get('error', reply)}")

    async def close(self) -> None:
        try:
            if self.client_id is not None:
                await self._post([{"channel": "/meta/disconnect", "clientId": self.client_id,
                                   "id": str(next(self._ids))}])
        except ToolError:
            pass  # the session expires on its own
        finally:
            await self.http.close()
