"""`/api/v2/me/smssessions`: the agent's SMS operations (the chat operations under the SMS names)."""

from __future__ import annotations

from aiohttp import web

from .chats import MediaRoutes
from .conversation import Conversations
from .model import SMS


def add_routes(app: web.Application, conversations: Conversations) -> None:
    MediaRoutes(conversations, SMS).add_to(app)
