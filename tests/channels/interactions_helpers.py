"""The gws_stack end-to-end stack plus the generic interactions and workbins APIs, an admin and a supervisor,
and desks that also listen on /v2/me/interactions and /v2/me/workbins. Every wait is bounded (gws_stack.WAIT)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
from aiohttp import web
from bayeux_helpers import open_session
from gws_stack import BASE_URL, MEDIA_TOKEN, MOUNT, Desk, Stack

from channels import workbins
from channels.auth import GwsAuthenticator, HttpSessions, User, UserDirectory, auth_middleware, hash_password
from channels.conversation import Conversations
from channels.gws import chats, interactions, media, smssessions, workbins_api
from channels.gws.envelope import envelope_middleware
from channels.routing import Routing
from cometd_broker import Broker, BrokerConfig
from cometd_broker.app import add_bayeux_endpoint

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "ada": "ada-pw", "sam": "sam-pw"}
ROLES = {"ada": {"agent", "admin"}, "sam": {"agent", "supervisor"}}
IX_TOPIC, WB_TOPIC = interactions.TOPIC, workbins.TOPIC
CHAT_TOPIC, SMS_TOPIC = "/v2/me/chats", "/v2/me/smssessions"
TOPICS = (SMS_TOPIC, CHAT_TOPIC, "/v2/me/channels", IX_TOPIC, WB_TOPIC)
__all__ = ["BASE_URL", "CHAT_TOPIC", "IX_TOPIC", "SMS_TOPIC", "WB_TOPIC", "IxDesk", "IxStack", "make_ix_stack"]


class IxDesk(Desk):
    async def open(self) -> None:
        self.client_id = await open_session(
            self.client, subscriptions=TOPICS, path=MOUNT,
            ext={"authentication": {"user": self.user, "password": PASSWORDS[self.user]}})


@dataclass
class IxStack(Stack):
    workbins: workbins.Workbins | None = None

    passwords: ClassVar[dict[str, str]] = PASSWORDS

    async def desk(self, user: str) -> IxDesk:
        desk = IxDesk(self.client, user)
        await desk.open()
        return desk

    async def ix(self, user: str, interaction_id: str, operation: str, **params: Any) -> dict[str, Any]:
        """POST /api/v2/me/interactions/{id} as `user`."""
        return await self.operate(user, "interactions", interaction_id, operation, **params)

    async def wb(self, user: str, workbin_id: str, operation: str, **params: Any) -> dict[str, Any]:
        """POST /api/v2/me/workbins/{id} as `user`."""
        return await self.operate(user, "workbins", workbin_id, operation, **params)

    async def accepted(self, desk: IxDesk, medium: str = "chat") -> str:
        """An inbound interaction offered to and accepted by `desk`'s agent (through the generic API);
        everything delivered so far is drained."""
        await self.routing.set_ready(desk.user, medium)
        interaction_id = await self.inbound(medium)
        await desk.next(1, IX_TOPIC)
        reply = await self.ix(desk.user, interaction_id, "Accept")
        assert reply["statusCode"] == 0, reply
        await desk.next(1, IX_TOPIC)
        await desk.drain()
        return interaction_id


async def make_ix_stack(aiohttp_client: Any, *, offer_timeout: float = 30.0, capacity: int = 1,
                        agents_see_all: bool = True) -> IxStack:
    users = UserDirectory(User(name, hash_password(password, iterations=1), frozenset(ROLES.get(name, {"agent"})),
                               first_name=name.capitalize()) for name, password in PASSWORDS.items())
    sessions = HttpSessions()
    broker = Broker(BrokerConfig(), authenticator=GwsAuthenticator(users, sessions))
    app = web.Application(middlewares=[
        envelope_middleware,
        auth_middleware(users, sessions, csrf=False, exempt=("/api/v2/notifications", "/api/v2/media")),
    ])
    add_bayeux_endpoint(app, broker, MOUNT)
    routing = Routing(broker.publish_to_user, queues=("default", "sales"), offer_timeout=offer_timeout,
                      capacity=capacity)
    refs = itertools.count(1)  # shared, as the app must: referenceIds unique across the APIs
    conversations = Conversations(broker.publish_to_user, routing, users, base_url=BASE_URL, reference_ids=refs)
    bins = workbins.Workbins(conversations, broker.publish_to_user, reference_ids=refs)
    chats.add_routes(app, conversations)
    smssessions.add_routes(app, conversations)
    media.add_routes(app, conversations, MEDIA_TOKEN)
    interactions.add_routes(app, conversations, bins, agents_see_all=agents_see_all)
    workbins_api.add_routes(app, bins)

    async def close(_: web.Application) -> None:
        await conversations.close()

    app.on_cleanup.append(close)
    client = await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())
    return IxStack(client, broker, routing, conversations, bins)
