"""/api/v2/me: the agent's own resource, the contact-center session and channel readiness.

State changes of a channel are published by routing on /v2/me/channels.

In a cluster (a `store` given) each agent's session channels and readiness are written to the store
before the change is published, and a new leader restores them: the desktops stay logged in across a
leader failover (their HTTP sessions live in Redis too), so they stay Ready as well. A single process
does not keep them: its HTTP sessions end with it, and an agent restored Ready without a desktop would
be offered work nobody answers.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..auth import SessionStore, User, UserDirectory, current_session, current_user
from ..routing import ROUTED_CHANNELS, Routing
from ..store import Document, DocumentStore
from .envelope import GwsError, Status, ok, operation_name, param, read_json_object

AGENT_KIND = "agent"  # store documents: user -> {"channels": [...], "states": {channel: state}}

CHANNEL_OPERATIONS = ("Ready", "NotReady")
# Who may read another user's resource (/api/v2/users/{id}); everyone may read their own.
PRIVILEGED_ROLES = frozenset({"admin", "supervisor"})
ME_OPERATIONS = ("StartContactCenterSession", "EndContactCenterSession")


class AgentApi:
    """Who is logged in to which channels; Ready/NotReady only inside a contact-center session."""

    def __init__(self, routing: Routing, sessions: SessionStore, base_url: str,
                 store: DocumentStore | None = None, users: UserDirectory | None = None) -> None:
        """With `store`, sessions and readiness are kept there (and restored from it now). `users`: whom an
        admin or supervisor may read at /api/v2/users/{id} (without it, only oneself)."""
        self.routing = routing
        self.users = users
        self.sessions = sessions
        self.base_url = base_url
        self._logged_in: dict[str, list[str]] = {}  # user -> channels of its contact-center session
        self._store = store
        if store is not None:
            self._restore(store)
            routing.on_state_change = self._save

    def _document(self, user_id: str) -> Document:
        return {"channels": self._logged_in.get(user_id, []),
                "states": {channel: state.to_document() for channel, state in self.routing.states(user_id).items()}}

    async def _save(self, user_id: str) -> None:
        if self._store is not None:
            await self._store.apply([(AGENT_KIND, user_id, self._document(user_id))])

    def _restore(self, store: DocumentStore) -> None:
        for user_id, doc in sorted(store.load(AGENT_KIND).items()):
            if doc["channels"]:
                self._logged_in[user_id] = list(doc["channels"])
            for channel, state in doc["states"].items():
                if channel in ROUTED_CHANNELS:
                    self.routing.restore_state(user_id, channel, state)

    def user_view(self, user: User, subresources: bool) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": user.user_id, "userName": user.user_id, "firstName": user.first_name,
            "lastName": user.last_name, "roles": sorted(user.roles),
            "uri": f"{self.base_url}/api/v2/users/{user.user_id}", "path": f"/users/{user.user_id}",
        }
        if user.agent_id is not None:
            view["employeeId"] = user.agent_id
        if subresources:
            view["channels"] = self.routing.channels_view(user.user_id)
            view["devices"] = []  # no voice devices in this product
        return view

    async def get_me(self, request: web.Request) -> web.Response:
        user = current_user(request)
        return ok(user=self.user_view(user, request.query.get("subresources") == "*"))

    async def get_user(self, request: web.Request) -> web.Response:
        """`GET /api/v2/users/{id}`: the `uri` of the user resource that /api/v2/me hands out. One's own
        resource as /api/v2/me shows it; another user's only for an admin or supervisor, and otherwise the
        same 404 as for an unknown id, so an agent learns nothing about who exists."""
        user = current_user(request)
        wanted = request.match_info["id"]
        if wanted == user.user_id:
            target: User | None = user
        elif user.roles & PRIVILEGED_ROLES and self.users is not None:
            target = self.users.get(wanted)
        else:
            target = None
        if target is None:
            raise GwsError(Status.NOT_FOUND, f"user {wanted} not found")
        return ok(user=self.user_view(target, request.query.get("subresources") == "*"))

    async def post_me(self, request: web.Request) -> web.Response:
        user = current_user(request)
        body = await read_json_object(request)
        if operation_name(body, ME_OPERATIONS, on="/me") == "StartContactCenterSession":
            return await self._start(user, body)
        await self._end(user, request)
        return ok()

    async def _start(self, user: User, body: dict[str, Any]) -> web.Response:
        channels = param(body, "channels", list)
        if not channels or not all(isinstance(c, str) for c in channels):
            raise GwsError(Status.VALIDATION_ERROR, "parameter 'channels' must be a non-empty array of channel names")
        unknown = [c for c in channels if c not in ROUTED_CHANNELS]
        known = [c for c in dict.fromkeys(channels) if c in ROUTED_CHANNELS]
        if not known:
            raise GwsError(Status.VALIDATION_ERROR,
                           f"unknown channel {unknown[0]!r}: this server routes {', '.join(ROUTED_CHANNELS)}")
        before = self._logged_in.get(user.user_id)
        self._logged_in[user.user_id] = known
        try:
            for channel in known:
                await self.routing.set_not_ready(user.user_id, channel, "LoggedIn")
        except BaseException:
            if before is None:  # the store refused the first write: not logged in after all
                self._logged_in.pop(user.user_id, None)
            else:
                self._logged_in[user.user_id] = before
            raise
        if unknown:
            # GWS: some channels failed -> 7 with a status per channel.
            return ok(statusCode=Status.PARTIAL_SUCCESS.value, channels=[
                {"channel": c, "statusCode": 0} if c in known else
                {"channel": c, "statusCode": Status.VALIDATION_ERROR.value, "statusMessage": f"unknown channel {c!r}"}
                for c in channels])
        return ok()

    async def _end(self, user: User, request: web.Request) -> None:
        for channel in self._logged_in.pop(user.user_id, []):
            await self.routing.set_not_ready(user.user_id, channel, "LoggedOut")
        session = current_session(request)
        if session is not None:
            await self.sessions.end_session(session.session_id)  # GWS: ending the session invalidates the HTTP session

    async def post_channel(self, request: web.Request) -> web.Response:
        user = current_user(request)
        channel = request.match_info["channel"]
        if channel not in ROUTED_CHANNELS:
            raise GwsError(Status.NOT_FOUND, f"unknown channel {channel!r}: use one of {', '.join(ROUTED_CHANNELS)}")
        body = await read_json_object(request)
        operation = operation_name(body, CHANNEL_OPERATIONS, on="a channel")
        if channel not in self._logged_in.get(user.user_id, ()):
            raise GwsError(Status.INVALID_STATE, f"channel {channel!r} is not in your contact-center session: "
                                                 "call StartContactCenterSession with it first")
        if operation == "Ready":
            await self.routing.set_ready(user.user_id, channel)
        else:
            reason = param(body, "reason", str, required=False)
            await self.routing.set_not_ready(user.user_id, channel, reason)
        return ok()


def add_routes(app: web.Application, api: AgentApi) -> None:
    app.router.add_get("/api/v2/me", api.get_me)
    app.router.add_post("/api/v2/me", api.post_me)
    app.router.add_post("/api/v2/me/channels/{channel}", api.post_channel)
    app.router.add_get("/api/v2/users/{id}", api.get_user)
