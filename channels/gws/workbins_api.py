"""`/api/v2/me/workbins` (GWS Workbins API): the HTTP routes over the agent's workbins (workbins.py).

`GET /api/v2/me/workbins[/{id}]` lists them or reads one with its content; `POST /api/v2/me/workbins/{id}`
runs an operationName on one (AddInteraction, Pull, Subscribe, Unsubscribe).
"""

from __future__ import annotations

from aiohttp import web

from ..auth import current_user
from ..workbins import OPERATIONS, Workbins
from .envelope import listing, ok, operation_name, param, read_json_object


class WorkbinRoutes:
    """`GET /api/v2/me/workbins[/{id}]`, `POST /api/v2/me/workbins/{id}` (operationName)."""

    def __init__(self, workbins: Workbins) -> None:
        self.workbins = workbins

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/api/v2/me/workbins", self.list)
        app.router.add_get("/api/v2/me/workbins/{id}", self.get)
        app.router.add_post("/api/v2/me/workbins/{id}", self.operate)

    async def list(self, request: web.Request) -> web.Response:
        views = [b.view(self.workbins.base_url) for b in self.workbins.of(current_user(request).user_id)]
        return listing(request, views, "workbins")

    async def get(self, request: web.Request) -> web.Response:
        workbin = self.workbins.find(current_user(request).user_id, request.match_info["id"])
        return ok(workbin=self.workbins.content(workbin))

    async def operate(self, request: web.Request) -> web.Response:
        user = current_user(request)
        body = await read_json_object(request)
        operation = operation_name(body, OPERATIONS)
        workbin = self.workbins.find(user.user_id, request.match_info["id"])
        if operation in ("Subscribe", "Unsubscribe"):
            return ok(referenceId=await self.workbins.subscribe(workbin, operation == "Subscribe"))
        interaction_id = param(body, "id", str)
        if operation == "AddInteraction":
            return ok(referenceId=await self.workbins.place(user.user_id, workbin, interaction_id))
        return ok(referenceId=await self.workbins.pull(user.user_id, workbin, interaction_id))


def add_routes(app: web.Application, workbins: Workbins) -> None:
    WorkbinRoutes(workbins).add_to(app)
