"""The inbound side: the media gateway (SMS aggregator, web-chat widget server) brings customers in.

`/api/v2/media/{sms|chat}/interactions[...]`, authenticated by a bearer token from configuration rather
than an agent login: the gateway is a service, not a person. The GWS session middleware must exempt
`/api/v2/media` (it authenticates agents) so that this token check is the one that applies.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..conversation import Conversations
from ..model import MEDIA, MediaKind
from .envelope import GwsError, Status, ok, param, read_json_object

BASE = "/api/v2/media/{media}/interactions"
TYPING_STATES = {"started": True, "stopped": False}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MediaGatewayApi:
    def __init__(self, conversations: Conversations, token: str) -> None:
        if not token:
            raise ValueError("the media gateway token must not be empty")
        self.conversations = conversations
        self._token = token.encode()

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(BASE, self._guard(self.create))
        app.router.add_post(BASE + "/{id}/messages", self._guard(self.message))
        app.router.add_post(BASE + "/{id}/typing", self._guard(self.typing))
        app.router.add_post(BASE + "/{id}/end", self._guard(self.end))
        app.router.add_get(BASE + "/{id}/transcript", self._guard(self.transcript))

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self._token):
                raise GwsError(Status.NOT_AUTHENTICATED, "media gateway token required: Authorization: Bearer <token>")
            return await handler(request)

        return guarded

    @staticmethod
    def _media(request: web.Request) -> MediaKind:
        name = request.match_info["media"]
        if name not in MEDIA:
            raise GwsError(Status.NOT_FOUND, f"unknown media {name!r} (known: {', '.join(MEDIA)})")
        return MEDIA[name]

    async def create(self, request: web.Request) -> web.Response:
        """`{"nickname", "text"?, "queue"?, "contactId"?}` -> `{"statusCode":0, "id", "uri"}`."""
        media = self._media(request)
        body = await read_json_object(request)
        nickname = param(body, "nickname", str)
        if not nickname.strip():
            raise GwsError(Status.VALIDATION_ERROR, "parameter 'nickname' must not be empty")
        text = param(body, "text", str, required=False)
        queue = param(body, "queue", str, required=False, default="default")
        contact_id = param(body, "contactId", str, required=False)
        ix = await self.conversations.create_inbound(media, nickname, text=text, queue=queue, contact_id=contact_id)
        return ok(id=ix.id, uri=media.uri(self.conversations.base_url, ix.id))

    async def message(self, request: web.Request) -> web.Response:
        media = self._media(request)
        text = param(await read_json_object(request), "text", str)
        await self.conversations.customer_message(media, request.match_info["id"], text)
        return ok()

    async def typing(self, request: web.Request) -> web.Response:
        """`{"state": "started"|"stopped"}`."""
        media = self._media(request)
        state = param(await read_json_object(request), "state", str)
        if state not in TYPING_STATES:
            raise GwsError(Status.VALIDATION_ERROR, "parameter 'state' must be 'started' or 'stopped'")
        await self.conversations.customer_typing(media, request.match_info["id"], TYPING_STATES[state])
        return ok()

    async def end(self, request: web.Request) -> web.Response:
        await self.conversations.customer_left(self._media(request), request.match_info["id"])
        return ok()

    async def transcript(self, request: web.Request) -> web.Response:
        """What the customer sees: the messages with visibility All."""
        messages = self.conversations.transcript(self._media(request), request.match_info["id"])
        return ok(messages=messages)


def add_routes(app: web.Application, conversations: Conversations, token: str) -> None:
    MediaGatewayApi(conversations, token).add_to(app)
