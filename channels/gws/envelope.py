"""The GWS reply envelope: `statusCode` 0 on success; otherwise `statusMessage` and nothing else.

Handlers raise `GwsError` for any failure, and the domain its own errors (errors.py); `envelope_middleware`
turns both (and anything unexpected) into the envelope, so a client never sees a traceback and a failed
request never half-applies. A domain error is answered with the GWS statusCode of its kind (`DOMAIN_STATUS`).
It also counts every request by route, operationName and status in the app's metrics (when the app
has them: `cometd_broker.metrics`), as `gws_requests_total` and `gws_request_duration_seconds`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from enum import IntEnum
from typing import Any

import orjson
from aiohttp import web

from cometd_broker.engine import EngineUnavailable
from cometd_broker.eventlog import EventLogUnavailable
from cometd_broker.metrics import METRICS, Metrics, route_label

from ..errors import ContactCenterError, Kind
from ..params import param, unknown_operation  # `param` too for handlers: they read parameters as the domain does
from ..store import StoreUnavailable

log = logging.getLogger("channels")


class Status(IntEnum):
    """GWS statusCode values (docs.genesys.com ReturnValues)."""

    OK = 0
    MISSING_PARAMETER = 1
    INVALID_STATE = 2
    FORBIDDEN = 3
    INTERNAL_ERROR = 4
    NO_PERMISSION = 5
    NOT_FOUND = 6
    PARTIAL_SUCCESS = 7
    VALIDATION_ERROR = 10
    ALREADY_EXISTS = 18
    IN_USE = 19
    NOT_AUTHENTICATED = 20


# The HTTP status that goes with each failure; GWS answers most failures with 200 and the code.
_HTTP_STATUS = {
    Status.NOT_AUTHENTICATED: 401,
    Status.NOT_FOUND: 404,
    Status.NO_PERMISSION: 403,
    Status.INTERNAL_ERROR: 500,
}


# The statusCode that answers each kind of domain error.
DOMAIN_STATUS = {
    Kind.MISSING_PARAMETER: Status.MISSING_PARAMETER,
    Kind.INVALID_PARAMETER: Status.VALIDATION_ERROR,
    Kind.INVALID_STATE: Status.INVALID_STATE,
    Kind.NOT_FOUND: Status.NOT_FOUND,
    Kind.IN_USE: Status.IN_USE,
}


class GwsError(Exception):
    """A request that failed with a GWS statusCode; nothing was changed."""

    def __init__(self, status: Status, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.http_status = http_status if http_status is not None else _HTTP_STATUS.get(status, 400)

    @classmethod
    def of(cls, error: ContactCenterError) -> GwsError:
        """The GWS answer to a domain error."""
        return cls(DOMAIN_STATUS[error.kind], error.message)


# The statusCode of an envelope, kept on its response for the metrics (no re-parsing of the body).
STATUS_CODE = web.ResponseKey("gws.status_code", int)
# The request's operationName once `check_operation` accepted it; set per request by the middleware.
_OPERATION: ContextVar[list[str] | None] = ContextVar("gws_operation", default=None)


def json_response(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(body=orjson.dumps(payload), status=status, content_type="application/json",
                            headers=headers)
    code = payload.get("statusCode")
    if isinstance(code, int):
        response[STATUS_CODE] = code
    return response


def ok(**fields: Any) -> web.Response:
    """`{"statusCode": 0, ...fields}`."""
    return json_response({"statusCode": Status.OK.value, **fields})


def listing(request: web.Request, views: list[dict[str, Any]], key: str) -> web.Response:
    """A collection GET: plain gives `uris`; `fields=*` gives the resources themselves under `key`."""
    fields = request.query.get("fields")
    if fields is None:
        return ok(uris=[view["uri"] for view in views])
    if fields != "*":
        raise GwsError(Status.VALIDATION_ERROR, "fields must be *")
    return ok(**{key: views})


def failure(status: Status, message: str, http_status: int = 400) -> web.Response:
    return json_response({"statusCode": status.value, "statusMessage": message}, status=http_status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure under the REST API leaves as the envelope, with a specific message; every
    request is counted in the app's metrics."""
    metrics = request.app.get(METRICS)
    if metrics is None:
        return await _enveloped(request, handler)
    operation = [""]
    token = _OPERATION.set(operation)
    started = time.monotonic()
    try:
        response = await _enveloped(request, handler)
    except web.HTTPException as exc:  # a redirect: not an envelope, counted all the same
        _count(metrics, request, operation[0], "", exc.status, time.monotonic() - started)
        raise
    finally:
        _OPERATION.reset(token)
    code = response.get(STATUS_CODE)
    _count(metrics, request, operation[0], "" if code is None else str(code), response.status,
           time.monotonic() - started)
    return response


def _count(metrics: Metrics, request: web.Request, operation: str, status_code: str, http_status: int,
           seconds: float) -> None:
    route = route_label(request)
    metrics.counter("gws_requests_total", "REST API requests, by route, operationName and GWS statusCode",
                    ("method", "route", "operation", "status_code", "http_status")).inc(
        (request.method, route, operation, status_code, str(http_status)))
    metrics.histogram("gws_request_duration_seconds", "Time to answer a REST API request, by route",
                      ("method", "route")).observe((request.method, route), seconds)


async def _enveloped(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (GwsError, ContactCenterError) as caught:
        exc = caught if isinstance(caught, GwsError) else GwsError.of(caught)
        return failure(exc.status, exc.message, exc.http_status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status = {401: Status.NOT_AUTHENTICATED, 403: Status.FORBIDDEN, 404: Status.NOT_FOUND}.get(
            exc.status, Status.VALIDATION_ERROR)
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return failure(status, message, exc.status)
    except (StoreUnavailable, sqlite3.Error) as exc:
        # The state file refused the write (a full disk, a lock held past the busy timeout): an operational
        # condition, one WARNING line, no traceback. The change stays in memory, due with the next write.
        log.warning("%s %s: contact-center state not stored: %s", request.method, request.path, exc)
        return failure(Status.INTERNAL_ERROR, "the change was made but could not be stored yet, so nobody was "
                       f"notified of it; it is stored with the next change ({exc})", 503)
    except (EngineUnavailable, EventLogUnavailable) as exc:
        # Clustered and Redis is unreachable: the change is saved but its notifications could not
        # be sent; desktops re-read state (GET) once the broker says it reconnected.
        log.warning("%s %s: notifications not sent: %s", request.method, request.path, exc)
        return failure(Status.INTERNAL_ERROR, f"notification service unavailable, retry later ({exc})", 503)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return failure(Status.INTERNAL_ERROR, "internal error: the request was not applied", 500)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a GwsError saying what is wrong with it."""
    body = await request.read()
    if not body:
        raise GwsError(Status.MISSING_PARAMETER, "request body is empty: expected a JSON object")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GwsError(Status.VALIDATION_ERROR, f"request body is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise GwsError(Status.VALIDATION_ERROR, "request body must be a JSON object")
    return parsed


def check_operation(operation: str, valid: Sequence[str], *, on: str | None = None) -> None:
    """statusCode 10 naming the valid operations when `operation` is not one of them."""
    if operation not in valid:
        raise unknown_operation(operation, valid, on=on)
    label_operation(operation)


def label_operation(operation: str) -> None:
    """Name the current request's operation in the metrics; only valid names, so their number is bounded."""
    current = _OPERATION.get()
    if current is not None:
        current[0] = operation


def operation_name(body: dict[str, Any], valid: Sequence[str], *, on: str | None = None) -> str:
    """The body's operationName: statusCode 1 when missing, 10 when not a string or not one of `valid`."""
    operation = param(body, "operationName", str)
    check_operation(operation, valid, on=on)
    return operation
