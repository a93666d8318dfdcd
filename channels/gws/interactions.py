"""`/api/v2/me/interactions` and `/api/v2/interactions` (seed 002): the generic interactions API over the
interactions the conversation engine holds (chat and SMS are interactions too), and the
`/v2/me/interactions` topic.

Each generic operation is the engine's operation of the same meaning, so capabilities, validation and
notifications stay in one place: PlaceInQueue is Complete with `queueName` (domain.md 2.5: the chat
equivalent), Transfer/SingleStepTransfer with `userId` is Transfer to `/users/{userId}`, DeleteUserData
takes `keys` or (as in the seed) a `userData` object whose keys are deleted, PlaceInWorkbin goes through
workbins.py. Every state notification the engine sends an agent about a chat/SMS (whichever API caused it)
is mirrored to that agent on `/v2/me/interactions` as an `InteractionStateChangeMessage`, with the same
notificationType and referenceId, right after the original.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..auth import User, current_user
from ..conversation import Conversations
from ..model import Interaction, Leg, LegState
from ..workbins import Workbins, interaction_uri
from .envelope import GwsError, Status, listing, ok, operation_name, param, read_json_object

TOPIC = "/v2/me/interactions"
MESSAGE_TYPE = "InteractionStateChangeMessage"
MIRRORED = ("StatusChange", "PropertiesUpdated", "Error")  # participants and messages stay on the media topic
PRIVILEGED_ROLES = frozenset({"admin", "supervisor"})

# Generic operation -> the engine operation that performs it; its capability gates the generic one.
ENGINE_OPERATION = {"Accept": "Accept", "Reject": "Reject", "Complete": "Complete", "PlaceInQueue": "Complete",
                    "PlaceInWorkbin": "Complete", "UpdateUserData": "UpdateUserData",
                    "AttachUserData": "AttachUserData", "DeleteUserData": "DeleteUserData",
                    "SingleStepTransfer": "Transfer", "Transfer": "Transfer"}
# Not tied to the interaction's state, so never in `capabilities`.
OTHER_OPERATIONS = ("Cancel", "GetWorkbinContent")
OPERATIONS = (*ENGINE_OPERATION, *OTHER_OPERATIONS)


def generic_capabilities(media_capabilities: list[str]) -> list[str]:
    return [op for op, engine_op in ENGINE_OPERATION.items() if engine_op in media_capabilities]


class InteractionsApi:
    """`agents_see_all`: GWS's Interactions API Operations page (seed 002) lists Agent among the permissions
    of `GET /api/v2/interactions` (every active interaction of the contact center). An agent sees each one it
    takes no part in as a summary: that it exists, its medium, its state and its uri, never who is in it,
    what was said or its user data; its uri answers GET with the same summary while it stays active. Off,
    only admins and supervisors may list, and an agent reads only the interactions it takes part in (the
    --interactions-list-supervisors-only option)."""

    def __init__(self, conversations: Conversations, workbins: Workbins, *, agents_see_all: bool = True) -> None:
        self.conversations = conversations
        self.workbins = workbins
        self.agents_see_all = agents_see_all
        conversations.add_listener(self._mirror)

    # --- views --------------------------------------------------------------------------------------------

    def _from_media(self, ix: Interaction, leg: Leg, resource: dict[str, Any]) -> dict[str, Any]:
        """The generic view of `leg`'s agent, from the engine's per-media view of the same moment."""
        workbin = self.workbins.holder(ix.id)
        if workbin is not None and workbin.owner == leg.user_id and not leg.state.active:
            return self.workbins.item_view(ix)
        view = {"id": ix.id, "mediaType": ix.media.name, "state": resource["state"],
                "capabilities": generic_capabilities(resource["capabilities"]),
                "participants": resource["participants"], "uri": interaction_uri(self.conversations.base_url, ix.id)}
        if "userData" in resource:
            view["userData"] = resource["userData"]
        return view

    def agent_view(self, ix: Interaction, leg: Leg) -> dict[str, Any]:
        return self._from_media(ix, leg, ix.view(leg, self.conversations.base_url))

    def center_view(self, ix: Interaction) -> dict[str, Any]:
        """What an admin or supervisor sees: the interaction as a whole, with every agent's state."""
        view: dict[str, Any] = {"id": ix.id, "mediaType": ix.media.name, "state": self._overall_state(ix),
                                "queue": ix.queue, "participants": ix.participants(),
                                "agents": [{"userId": leg.user_id, "state": leg.state.value, "role": leg.role.value}
                                           for leg in ix.legs.values()],
                                "uri": interaction_uri(self.conversations.base_url, ix.id)}
        if (workbin := self.workbins.holder(ix.id)) is not None:
            view["workbinId"] = workbin.id
        if ix.user_data:
            view["userData"] = dict(ix.user_data)
        return view

    def summary_view(self, ix: Interaction) -> dict[str, Any]:
        """What an agent sees of an active interaction it takes no part in: no participants, no messages,
        no user data, no agents."""
        return {"id": ix.id, "mediaType": ix.media.name, "state": self._overall_state(ix),
                "uri": interaction_uri(self.conversations.base_url, ix.id)}

    def _view_for(self, user: User, ix: Interaction) -> dict[str, Any] | None:
        """`user`'s view of `ix`, or None when `user` may not see it."""
        if (leg := ix.legs.get(user.user_id)) is not None:
            return self.agent_view(ix, leg)
        if user.roles & PRIVILEGED_ROLES:
            return self.center_view(ix)
        if self.agents_see_all and self._is_active(ix):
            return self.summary_view(ix)
        return None

    def _overall_state(self, ix: Interaction) -> str:
        if self.workbins.holder(ix.id) is not None:
            return "InWorkbin"
        states = {leg.state for leg in ix.legs.values()}
        for state in (LegState.CHATTING, LegState.LEFT_CHAT, LegState.INVITED):
            if state in states:
                return state.value
        if any(r.interaction_id == ix.id for r in self.conversations.routing.waiting()):
            return "Queued"
        return "Completed"

    def _is_open(self, ix: Interaction) -> bool:
        """Still in the contact center: the customer is there, an agent holds it, or a workbin does."""
        return not ix.ended or bool(ix.active_legs()) or self.workbins.holder(ix.id) is not None

    def _is_active(self, ix: Interaction) -> bool:
        """Being handled or waiting to be: open and not parked in a workbin (a workbin is its owner's)."""
        return self._is_open(ix) and self.workbins.holder(ix.id) is None

    def _mirror(self, ix: Interaction, leg: Leg, data: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        if data.get("notificationType") not in MIRRORED:
            return None
        mirrored = {"messageType": MESSAGE_TYPE, "notificationType": data["notificationType"],
                    "interaction": self._from_media(ix, leg, data[ix.media.resource_key])}
        for key in ("referenceId", "errorMessage"):
            if key in data:
                mirrored[key] = data[key]
        return TOPIC, mirrored

    # --- lookups ------------------------------------------------------------------------------------------

    def _leg(self, user: User, interaction_id: str) -> tuple[Interaction, Leg]:
        """The caller's leg (in any state); one message for unknown and for others', revealing nothing."""
        ix = self.conversations.interaction(interaction_id)
        leg = ix.legs.get(user.user_id) if ix is not None else None
        if ix is None or leg is None:
            raise GwsError(Status.NOT_FOUND, f"interaction {interaction_id} not found")
        return ix, leg

    # --- routes -------------------------------------------------------------------------------------------

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/api/v2/me/interactions", self.list_mine)
        app.router.add_post("/api/v2/me/interactions/{id}", self.operate)
        app.router.add_get("/api/v2/interactions", self.list_all)
        app.router.add_get("/api/v2/interactions/{id}", self.get)
        app.router.add_put("/api/v2/interactions/{id}", self.update)

    async def list_mine(self, request: web.Request) -> web.Response:
        user = current_user(request)
        views = [self.agent_view(ix, leg) for ix in self.conversations.all_interactions()
                 if (leg := ix.legs.get(user.user_id)) is not None and leg.state.active]
        return listing(request, views, "interactions")

    async def list_all(self, request: web.Request) -> web.Response:
        """Admins and supervisors: every open interaction, whole (workbins' too). Agents: every active one,
        their own as they see them and the others as summaries."""
        user = current_user(request)
        if user.roles & PRIVILEGED_ROLES:
            return listing(request, [self.center_view(ix) for ix in self.conversations.all_interactions()
                                     if self._is_open(ix)], "interactions")
        if not self.agents_see_all:
            raise GwsError(Status.NO_PERMISSION, "listing all interactions requires the admin or supervisor role")
        return listing(request, [view for ix in self.conversations.all_interactions() if self._is_active(ix)
                                 and (view := self._view_for(user, ix)) is not None], "interactions")

    async def get(self, request: web.Request) -> web.Response:
        """The uri every interaction view hands out: the caller's view, the whole for an admin or supervisor,
        a summary for an agent while it is active; otherwise the 404 of an unknown id."""
        user = current_user(request)
        interaction_id = request.match_info["id"]
        ix = self.conversations.interaction(interaction_id)
        view = self._view_for(user, ix) if ix is not None else None
        if view is None:
            raise GwsError(Status.NOT_FOUND, f"interaction {interaction_id} not found")
        return ok(interaction=view)

    async def update(self, request: web.Request) -> web.Response:
        """PUT `{"userData": {...}}`: merged into the user data (UpdateUserData of the caller's leg)."""
        user = current_user(request)
        body = await read_json_object(request)
        ix, leg = self._leg(user, request.match_info["id"])
        read_only = sorted(set(body) - {"userData"})
        if read_only:
            raise GwsError(Status.VALIDATION_ERROR, f"only userData can be updated; {read_only[0]!r} is read-only")
        user_data = param(body, "userData", dict)
        self._check_capability(ix, leg, "UpdateUserData")
        reference_id = await self.conversations.operate(user.user_id, ix.media, ix.id, "UpdateUserData",
                                                        {"userData": user_data})
        return ok(referenceId=reference_id)

    async def operate(self, request: web.Request) -> web.Response:
        user = current_user(request)
        body = await read_json_object(request)
        operation = operation_name(body, OPERATIONS)
        if operation == "GetWorkbinContent":
            # It reads a workbin, not the interaction: the id in the path (seed 002 puts the operation on
            # /me/interactions/{id}) names nothing the operation uses, so it is not looked up.
            workbin = self.workbins.find(user.user_id, param(body, "workbin", str))
            return ok(referenceId=await self.workbins.send_content(user.user_id, workbin, TOPIC))
        ix, leg = self._leg(user, request.match_info["id"])
        if operation == "Cancel":
            # Cancel abandons a draft made by Reply/ReplyAll (seed 002). Chat and SMS have no drafts, so no
            # interaction here can ever be cancelled; Complete or Reject is what the agent wants.
            raise GwsError(Status.INVALID_STATE,
                           f"operation Cancel is not valid for interaction {ix.id}: Cancel applies only to a "
                           "draft created by Reply or ReplyAll, and chat/SMS interactions have no drafts")
        self._check_capability(ix, leg, operation)
        if operation == "PlaceInWorkbin":
            workbin = self.workbins.find(user.user_id, param(body, "workbin", str))
            return ok(referenceId=await self.workbins.place(user.user_id, workbin, ix.id))
        params = _engine_params(operation, body, user)
        reference_id = await self.conversations.operate(user.user_id, ix.media, ix.id, ENGINE_OPERATION[operation],
                                                        params)
        return ok(referenceId=reference_id)

    def _check_capability(self, ix: Interaction, leg: Leg, operation: str) -> None:
        view = self.agent_view(ix, leg)
        if operation not in view["capabilities"]:
            hint = "; pull it from the workbin first" if view["state"] == "InWorkbin" else ""
            raise GwsError(Status.INVALID_STATE, f"operation {operation} is not valid in state {view['state']}{hint}")


def _engine_params(operation: str, body: dict[str, Any], user: User) -> dict[str, Any]:
    """The engine's parameters for a generic operation (statusCode 1/10 for missing/wrong ones)."""
    if operation == "PlaceInQueue":
        return {"queueName": param(body, "queueName", str)}
    if operation in ("Transfer", "SingleStepTransfer"):
        user_id = param(body, "userId", str)
        if not user_id or any(c in user_id for c in "/?#"):
            raise GwsError(Status.VALIDATION_ERROR, f"parameter 'userId' must be a user id, got {user_id!r}")
        if user_id == user.user_id:
            raise GwsError(Status.VALIDATION_ERROR, "parameter 'userId' names yourself")
        return {"targetPath": f"/users/{user_id}"}
    if operation == "DeleteUserData":
        if body.get("keys") is not None:
            return {"keys": param(body, "keys", list)}  # the engine checks the items are strings
        if body.get("userData") is None:
            raise GwsError(Status.MISSING_PARAMETER, "missing parameter 'keys' (or 'userData')")
        return {"keys": list(param(body, "userData", dict))}
    return body  # the engine reads its own parameters (nickname, saveLAR, userData, ...)


def add_routes(app: web.Application, conversations: Conversations, workbins: Workbins, *,
               agents_see_all: bool = True) -> None:
    InteractionsApi(conversations, workbins, agents_see_all=agents_see_all).add_to(app)
