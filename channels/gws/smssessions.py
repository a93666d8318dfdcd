"""`/api/v2/me/smssessions`: the agent's SMS operations (the chat operations under the SMS names)."""

from __future__ import annotations

from aiohttp import web

from ..conversation import Conversations
from ..model import SMS
from .chats import MediaRoutes


def add_routes(app: web.Application, conversations: Conversations) -> None:
    MediaRoutes(conversations, SMS).add_to(app)
