"""The Huawei agent gateway's HTTP envelope: retcodes, the JSON reply, and refusals turned into replies.

Every answer is HTTP 200 with a JSON body `{"message": ..., "retcode": ..., "result": {...}}` (event polls
carry `event` instead of `result`); `retcode` "0" is success and anything else names the failure, the way
Huawei's desktops expect it. A path under the prefix that is no interface answers 404, a method an
interface does not take 405, both in the same envelope (retcode 000-002). A refusal -- the domain's
(gateway_refusals.py) or the edge's own `GatewayError` -- becomes its retcode and message; anything
unexpected becomes 100-007 without a traceback. Each request is counted in the app's metrics (when it has
them) by route and retcode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from cometd_broker.metrics import METRICS, route_label

from ..gateway_refusals import AlreadySignedIn, GatewayRefusal, NotChairperson, NotSignedIn, ParticipantConflict
from ..store import StoreUnavailable

log = logging.getLogger("channels.agentgateway")

PREFIX = "/agentgateway/resource"
RETCODE = web.ResponseKey("agentgateway.retcode", str)  # a reply's retcode, kept on it for the metrics

# ---------------------------------------------------------------- retcodes (reference/domain.md 5.4)

SUCCESS = "0"
INVALID_PARAMETER = "000-002"
GUID_ERROR = "000-003"
ALREADY_SIGNED_IN = "100-002"
NOT_SIGNED_IN = "100-006"
OPERATION_FAILED = "100-007"  # "exception during agent operation": used only for unexpected internal errors
# Seed 003 lists 101-001 and 101-002 for the conference interfaces without saying what they mean. We give
# them the two conference failures a chairperson can hit; the message always says which one it was.
NOT_CHAIRPERSON = "101-001"  # assumed: the agent is not the chairperson of an active conference
PARTICIPANT_CONFLICT = "101-002"  # assumed: a participant is already/not in the conference, or it is full

# The retcode of each refusal of the domain.
REFUSAL_RETCODES: dict[type[GatewayRefusal], str] = {
    NotSignedIn: NOT_SIGNED_IN,
    AlreadySignedIn: ALREADY_SIGNED_IN,
    NotChairperson: NOT_CHAIRPERSON,
    ParticipantConflict: PARTICIPANT_CONFLICT,
}

Json = dict[str, Any]


class GatewayError(Exception):
    """A request refused at the edge (a malformed request, a wrong Guid or password) with a Huawei
    retcode; nothing was changed."""

    def __init__(self, retcode: str, message: str) -> None:
        super().__init__(message)
        self.retcode = retcode
        self.message = message


def invalid(message: str) -> GatewayError:
    return GatewayError(INVALID_PARAMETER, message)


def reply(retcode: str = SUCCESS, message: str = "success", result: Json | None = None,
          headers: dict[str, str] | None = None, *, status: int = 200) -> web.Response:
    """The Huawei envelope, HTTP 200 from every interface: clients branch on `retcode`, not on the HTTP
    status (only a path that is no interface, or a method it does not take, says so with 404 or 405)."""
    body = {"message": message, "retcode": retcode, "result": {} if result is None else result}
    response = web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                            headers=headers)
    response[RETCODE] = retcode  # for the metrics, without parsing the body back
    return response


def event_reply(event: Json | None) -> web.Response:
    response = web.Response(body=orjson.dumps({"message": "", "retcode": SUCCESS, "event": event}),
                            content_type="application/json")
    response[RETCODE] = SUCCESS
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(handler: Handler) -> Handler:
    """Turn refusals into the envelope, and contain bugs: a desktop never sees a traceback. Each
    request is counted in the app's metrics (when it has them) by route and retcode."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = reply(exc.retcode, exc.message)
        except GatewayRefusal as exc:
            response = reply(REFUSAL_RETCODES[type(exc)], exc.message)
        except StoreUnavailable as exc:  # a cluster's Redis is down, or this process lost the lead: retry
            log.warning("%s %s: state store unavailable: %s", request.method, request.path, exc)
            response = reply(OPERATION_FAILED, f"agent gateway state unavailable, retry later ({exc})")
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            response = reply(OPERATION_FAILED, "internal error in the agent gateway: the request was not applied")
        _count(request, response, time.monotonic() - started)
        return response

    return wrapper


@web.middleware
async def no_such_interface(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under PREFIX, a path that is no interface (404) or a method an interface does not take (405, with
    Allow) answers in the envelope too, with retcode 000-002 (invalid parameter: the one failure the
    conference pages, e.g. Inviting Participants in Batches, list for a malformed request), so a desktop
    that reads `retcode` is told what was wrong."""
    if not (request.path == PREFIX or request.path.startswith(PREFIX + "/")):
        return await handler(request)
    started = time.monotonic()
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = reply(INVALID_PARAMETER, f"{request.path} does not support {request.method}: use {allowed}",
                         headers={"Allow": allowed}, status=405)
    except web.HTTPNotFound:
        response = reply(INVALID_PARAMETER, f"no agent gateway interface at {request.path}", status=404)
    _count(request, response, time.monotonic() - started)
    return response


def _count(request: web.Request, response: web.StreamResponse, seconds: float) -> None:
    metrics = request.app.get(METRICS)
    if metrics is None:
        return
    route = route_label(request)
    metrics.counter("agentgateway_requests_total", "Huawei agent gateway requests, by route and retcode",
                    ("method", "route", "retcode")).inc((request.method, route, str(response.get(RETCODE, ""))))
    metrics.histogram("agentgateway_request_duration_seconds", "Time to answer a Huawei agent gateway request "
                      "(an event poll waits for events up to its poll time), by route",
                      ("method", "route")).observe((request.method, route), seconds)
