"""An end-to-end stack for the chat/SMS tests: a real Broker behind aiohttp, the GWS auth middleware, the
chat/SMS/media routes, and agent desks that listen over real CometD long-polling. Every wait is bounded."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from bayeux_helpers import connect, events_in, open_session

from channels.app import ContactCenterConfig, install_contact_center
from channels.auth import GwsAuthenticator, HttpSessions, User, UserDirectory, auth_middleware, hash_password
from channels.conversation import Conversations
from channels.gws import chats, media, smssessions
from channels.gws.envelope import envelope_middleware
from channels.model import InteractionLimits
from channels.routing import Routing
from cometd_broker import Broker, BrokerConfig, create_app
from cometd_broker.app import BROKER, add_bayeux_endpoint

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
MEDIA_TOKEN = "gateway-secret"
MOUNT = "/cometd"
BASE_URL = "http://localhost:8080"
TOPICS = ("/v2/me/smssessions", "/v2/me/chats", "/v2/me/channels")
WAIT = 3.0  # seconds: the upper bound for anything the server does "at once"


@dataclass
class Stack:
    client: TestClient
    broker: Broker
    routing: Routing
    conversations: Conversations

    passwords: ClassVar[dict[str, str]] = PASSWORDS  # of the users `rest` may act as

    async def rest(self, method: str, path: str, user: str | None = None, body: Any = None, *,
                   data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """One REST call as `user` (Basic, no cookies kept); (HTTP status, JSON body)."""
        sent = dict(headers or {})
        if user is not None:
            sent["Authorization"] = "Basic " + base64.b64encode(f"{user}:{self.passwords[user]}".encode()).decode()
        async with self.client.request(method, path, json=body if data is None else None, data=data,
                                       headers=sent) as response:
            return response.status, await response.json()

    async def operate(self, user: str, collection: str, interaction_id: str, operation: str,
                      **params: Any) -> dict[str, Any]:
        _, reply = await self.rest("POST", f"/api/v2/me/{collection}/{interaction_id}", user,
                                   {"operationName": operation, **params})
        return reply

    async def gateway(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        return await self.rest(method, f"/api/v2/media/{path}", body=body,
                               headers={"Authorization": f"Bearer {MEDIA_TOKEN}"})

    async def inbound(self, medium: str = "sms", **body: Any) -> str:
        status, reply = await self.gateway("POST", f"{medium}/interactions",
                                           {"nickname": "PersonP", "text": "Hello World", **body})
        assert status == 200 and reply["statusCode"] == 0, reply
        return reply["id"]

    async def desk(self, user: str) -> Desk:
        desk = Desk(self.client, user)
        await desk.open()
        return desk


class Desk:
    """One agent's CometD session subscribed to their chat, SMS and channel topics."""

    def __init__(self, client: TestClient, user: str) -> None:
        self.client = client
        self.user = user
        self.client_id = ""
        self.pending: list[tuple[str, dict[str, Any]]] = []

    async def open(self) -> None:
        self.client_id = await open_session(
            self.client, subscriptions=TOPICS, path=MOUNT,
            ext={"authentication": {"user": self.user, "password": PASSWORDS[self.user]}})

    async def _poll(self, hold_ms: int) -> None:
        replies = await connect(self.client, self.client_id, timeout=hold_ms, path=MOUNT)
        self.pending += [(m["channel"], m["data"]) for m in events_in(replies)]

    async def next(self, count: int, channel: str | None = None, timeout: float = WAIT) -> list[dict[str, Any]]:
        """The next `count` events (on `channel` if given; others on the way are dropped), in order."""
        deadline = time.monotonic() + timeout

        def matching() -> list[int]:
            return [i for i, (ch, _) in enumerate(self.pending) if channel is None or ch == channel]

        while len(matching()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user}: expected {count} events on {channel}, got {self.pending}")
            await self._poll(100)
        taken = matching()[:count]
        events = [self.pending[i][1] for i in taken]
        self.pending = self.pending[taken[-1] + 1:]
        return events

    async def drain(self) -> None:
        """Forget everything delivered so far (polls until a short poll brings nothing)."""
        await self._poll(0)
        while self.pending:
            self.pending.clear()
            await self._poll(50)

    async def quiet(self, hold_ms: int = 150) -> None:
        """Nothing arrives within `hold_ms`."""
        await self._poll(hold_ms)
        assert self.pending == [], f"{self.user} received {self.pending}"


async def make_stack(aiohttp_client: Any, *, offer_timeout: float = 30.0, capacity: int = 1,
                     limits: InteractionLimits | None = None) -> Stack:
    users = UserDirectory(User(name, hash_password(password, iterations=1), first_name=name.capitalize())
                          for name, password in PASSWORDS.items())
    sessions = HttpSessions()
    broker = Broker(BrokerConfig(), authenticator=GwsAuthenticator(users, sessions))
    app = web.Application(middlewares=[
        envelope_middleware,
        auth_middleware(users, sessions, csrf=False, exempt=("/api/v2/notifications", "/api/v2/media")),
    ])
    add_bayeux_endpoint(app, broker, MOUNT)
    routing = Routing(broker.publish_to_user, queues=("default", "sales"), offer_timeout=offer_timeout,
                      capacity=capacity)
    conversations = Conversations(broker.publish_to_user, routing, users, base_url=BASE_URL, limits=limits)
    chats.add_routes(app, conversations)
    smssessions.add_routes(app, conversations)
    media.add_routes(app, conversations, MEDIA_TOKEN)

    async def close(_: web.Application) -> None:
        await conversations.close()

    app.on_cleanup.append(close)
    client = await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())
    return Stack(client, broker, routing, conversations)


@dataclass
class ServedCenter:
    """A process's own app (`create_app`, as `cometd-broker serve` builds it) with the contact center on a
    SQLite state file, and a test client; `media` authorizes the media gateway API."""

    app: web.Application
    client: TestClient
    broker: Broker
    config: ContactCenterConfig
    media: ClassVar[dict[str, str]] = {"Authorization": f"Bearer {MEDIA_TOKEN}"}


async def served_center(aiohttp_client: Any, state_db: Path) -> ServedCenter:
    app = create_app(BrokerConfig())
    config = ContactCenterConfig(csrf=False, state_db=str(state_db), media_token=MEDIA_TOKEN)
    install_contact_center(app, app[BROKER], config, users=UserDirectory())
    return ServedCenter(app, await aiohttp_client(app), app[BROKER], config)


async def settle() -> None:
    await asyncio.sleep(0)
