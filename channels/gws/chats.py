"""`/api/v2/me/chats`: the agent's chat operations and reads, thin over the conversation engine.

The HTTP surface of every chat-like medium is the same (GWS gives SMS the chat operations under another
collection name), so `MediaRoutes` lives here and `smssessions.py` mounts it for SMS.
"""

from __future__ import annotations

from aiohttp import web

from ..auth import current_user
from ..conversation import Conversations
from ..model import CHAT, MediaKind
from .envelope import GwsError, Status, ok, param, read_json_object


class MediaRoutes:
    """`POST /api/v2/me/<collection>/{id}` (operationName), `GET /api/v2/me/<collection>[/{id}]`.

    `/api/v2/<collection>/{id}` (no `/me`) is the resource's `uri`, the one every notification and listing
    hands out: GET there answers what GET under /me answers, and POST takes the same operations on the
    caller's own part of it (the SMS Invite page's sample posts to `api/v2/smssessions/{id}`). Both act
    for the caller only: an interaction the caller holds no part of is 404, as under /me."""

    def __init__(self, conversations: Conversations, media: MediaKind) -> None:
        self.conversations = conversations
        self.media = media

    def add_to(self, app: web.Application) -> None:
        base = f"/api/v2/me/{self.media.collection}"
        app.router.add_get(base, self.list)
        for resource in (base + "/{id}", f"/api/v2/{self.media.collection}/{{id}}"):
            app.router.add_get(resource, self.get)
            app.router.add_post(resource, self.operate)

    async def operate(self, request: web.Request) -> web.Response:
        user = current_user(request)
        body = await read_json_object(request)
        operation = param(body, "operationName", str)
        reference_id = await self.conversations.operate(user.user_id, self.media, request.match_info["id"],
                                                        operation, body)
        return ok(referenceId=reference_id)

    async def get(self, request: web.Request) -> web.Response:
        user = current_user(request)
        view = self.conversations.resource(user.user_id, self.media, request.match_info["id"])
        return ok(**{self.media.resource_key: view})

    async def list(self, request: web.Request) -> web.Response:
        """Plain GET gives `uris`; `fields=*` the full resources; `fields=a,b` just those fields."""
        user = current_user(request)
        views = self.conversations.active(user.user_id, self.media)
        fields = request.query.get("fields")
        if fields is None:
            return ok(uris=[view["uri"] for view in views])
        if fields == "*":
            return ok(**{self.media.collection: views})
        wanted = [name.strip() for name in fields.split(",") if name.strip()]
        if not wanted:
            raise GwsError(Status.VALIDATION_ERROR, "fields must be * or a comma-separated list of field names")
        return ok(**{self.media.collection: [{k: v[k] for k in wanted if k in v} for v in views]})


def add_routes(app: web.Application, conversations: Conversations) -> None:
    MediaRoutes(conversations, CHAT).add_to(app)
