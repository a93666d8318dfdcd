"""The admin HTTP API: what the broker holds (sessions, queues, streams) and the debugging feeds.

Mounted by `create_app` under /admin only when an admin token is configured. Every request needs
`Authorization: Bearer <token>`; every answer, errors included, is JSON (the tail is JSON lines).

    GET  /admin/sessions[?user=&offset=&limit=]   sessions, subscriptions, queue depths, ack, replay
    GET  /admin/sessions/{clientId}
    GET  /admin/streams[?prefix=&limit=]          stream bounds (oldest, latest ids)
    GET  /admin/events?stream=&user=&channel=&interaction=&since=&until=&after=&cursor=&limit=
    GET  /admin/events/tail?<same filters>&cursor=&timeout=   new events as JSON lines
    POST /admin/publish  {channel, data, user?, ext?} or a list of them (used by `events replay`)
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .broker import Broker
from .channel import channel_error, is_meta, is_service, is_wildcard
from .eventlog import EventLogClosed
from .session import ServerSession
from .tools.filters import EventFilter, FilterError, event_record, from_params, record_line
from .tools.reader import Follower, read_page

PREFIX = "/admin"
MAX_PAGE = 1000  # events per /admin/events page
MAX_PUBLISH = 1000  # events per /admin/publish request
MAX_LISTED = 10_000  # sessions or streams per answer
TAIL_TIMEOUT = 25.0  # default seconds a tail stays open: below common 30 s proxy limits
TAIL_MAX_TIMEOUT = 300.0
TAIL_POLL = 0.1  # seconds between looks at the log: a debugging feed, not the delivery path
TAIL_HEARTBEAT = 5.0  # seconds between heartbeat lines, which carry the resume cursor
MAX_TAILS = 16  # concurrent tails: each polls the log
MAX_BODY = 8 * 1024 * 1024  # a replay batch of MAX_PUBLISH events

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """Turned into a 400 JSON answer naming the parameter and the problem."""


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, message: str, **headers: str) -> web.Response:
    response = _json({"error": message, "status": status}, status)
    response.headers.update(headers)
    return response


def create_admin_app(broker: Broker, token: str) -> web.Application:
    """The /admin sub-application; its middleware authenticates and keeps every answer JSON."""
    expected = token.encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        # compare_digest: the time taken must not tell how much of a guessed token was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
            problem = "missing admin token" if not presented else "wrong admin token"
            return _error(401, f"{problem}: send Authorization: Bearer <admin token>",
                          **{"WWW-Authenticate": 'Bearer realm="cometd-broker admin"'})
        try:
            return await handler(request)
        except BadRequest as exc:
            return _error(400, str(exc))
        except FilterError as exc:
            return _error(400, str(exc))
        except web.HTTPException as exc:  # aiohttp's own 404/405/413: answer them in JSON too
            if exc.status < 400:
                raise
            return _error(exc.status, f"{exc.reason}: {request.method} {request.path}")

    admin = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    api = AdminApi(broker)
    admin.router.add_get("/sessions", api.sessions)
    admin.router.add_get("/sessions/{client_id}", api.session)
    admin.router.add_get("/streams", api.streams)
    admin.router.add_get("/events", api.events)
    admin.router.add_get("/events/tail", api.tail)
    admin.router.add_post("/publish", api.publish)
    admin.on_shutdown.append(api.shutdown)
    return admin


def add_admin(app: web.Application, broker: Broker, token: str) -> None:
    app.add_subapp(PREFIX, create_admin_app(broker, token))


# ---------------------------------------------------------------------------- query parameters


def _int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise BadRequest(f"{name} must be between {low:g} and {high:g} seconds, got {text}")
    return value


def _filter(request: web.Request) -> EventFilter:
    q = request.query
    return from_params(q.getall("stream", []), q.get("user"), q.get("channel"), q.get("interaction"),
                       q.get("since"), q.get("until"), _int(request, "after", None, 0, 2**63 - 1))


# ---------------------------------------------------------------------------- views


def session_view(session: ServerSession) -> dict[str, Any]:
    queue = session.queue
    ack = session.ack
    expires = session.expires_at - time.monotonic()
    return {
        "clientId": session.client_id,
        "user": session.user_id,
        "roles": sorted(session.principal.roles),
        "transport": session.transport,
        "websocket": session.sink is not None,
        "connected": session.connected,
        "parked": session.parked is not None,
        "expiresIn": round(expires, 3) if math.isfinite(expires) else None,  # None: a connect is held
        "subscriptions": sorted(session.subscriptions),
        "queue": {"depth": len(queue), "bytes": queue.size_bytes, "maxMessages": queue.max_messages,
                  "maxBytes": queue.max_bytes, "dropped": queue.dropped},
        "ack": {"enabled": ack is not None,
                "batch": ack.batch if ack else None,
                "unackedEvents": sum(len(events) for _, events in ack.unacked) if ack else 0},
        "replay": {stream: {"lastId": mark.last_id, "catchingUp": mark.catching_up}
                   for stream, mark in session.replay.items()},
    }


class AdminApi:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.tails = 0
        self.closing = asyncio.Event()  # set at shutdown: open tails end at their next poll

    async def shutdown(self, _: web.Application) -> None:
        self.closing.set()

    async def sessions(self, request: web.Request) -> web.Response:
        user = request.query.get("user")
        offset = _int(request, "offset", 0, 0, 2**31)
        limit = _int(request, "limit", 1000, 1, MAX_LISTED)
        assert offset is not None and limit is not None
        chosen = (self.broker.sessions_of(user) if user is not None else list(self.broker.sessions.values()))
        page = chosen[offset:offset + limit]
        return _json({"total": len(chosen), "offset": offset, "sessions": [session_view(s) for s in page]})

    async def session(self, request: web.Request) -> web.Response:
        client_id = request.match_info["client_id"]
        found = self.broker.session(client_id)
        if found is None:
            return _error(404, f"no session {client_id!r} (ended, expired or never existed)")
        return _json(session_view(found))

    async def streams(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        limit = _int(request, "limit", 1000, 1, MAX_LISTED)
        assert limit is not None
        log = self.broker.event_log
        names = [s for s in await log.streams() if s.startswith(prefix)]
        listed = []
        for name in names[:limit]:
            bounds = await log.bounds(name)
            listed.append({"stream": name, "oldest": bounds.oldest, "latest": bounds.latest,
                           "retained": 0 if bounds.empty else bounds.latest - bounds.oldest + 1})
        return _json({"total": len(names), "truncated": len(names) > limit, "streams": listed})

    async def events(self, request: web.Request) -> web.Response:
        filt = _filter(request)
        limit = _int(request, "limit", 100, 1, MAX_PAGE)
        assert limit is not None
        page = await read_page(self.broker.event_log, filt, cursor=request.query.get("cursor") or None, limit=limit)
        return _json({"events": [event_record(e, m) for e, m in page.records], "next": page.next})

    async def tail(self, request: web.Request) -> web.StreamResponse:
        filt = _filter(request)
        timeout = _float(request, "timeout", TAIL_TIMEOUT, 0.0, TAIL_MAX_TIMEOUT)
        follower = Follower.start(filt, request.query.get("cursor") or None)
        if self.tails >= MAX_TAILS:
            return _error(429, f"too many open tails (at most {MAX_TAILS}); close one and retry")
        self.tails += 1
        try:
            return await self._follow(request, follower, timeout)
        finally:
            self.tails -= 1

    async def _follow(self, request: web.Request, follower: Follower, timeout: float) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                               "Cache-Control": "no-store"})
        await response.prepare(request)
        started = now = time.monotonic()
        deadline = started + timeout
        heartbeat = started + TAIL_HEARTBEAT
        reason = "timeout"
        try:
            while now < deadline:
                if self.closing.is_set():
                    reason = "shutdown"
                    break
                records = await follower.poll(self.broker.event_log)
                if records:
                    await response.write(b"".join(record_line(e, m) for e, m in records))
                now = time.monotonic()
                if now >= heartbeat:
                    heartbeat = now + TAIL_HEARTBEAT
                    await response.write(orjson.dumps({"heartbeat": time.time(), "next": follower.cursor}) + b"\n")
                await asyncio.sleep(min(TAIL_POLL, max(deadline - now, 0)))
                now = time.monotonic()
        except EventLogClosed:  # the broker is stopping; a client that went away raises from write()
            reason = "shutdown"
        await response.write(orjson.dumps({"end": reason, "next": follower.cursor}) + b"\n")
        await response.write_eof()
        return response

    async def publish(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not JSON: {exc}") from None
        items = body if isinstance(body, list) else [body]
        if not items or len(items) > MAX_PUBLISH:
            raise BadRequest(f"publish 1 to {MAX_PUBLISH} events per request, got {len(items)}")
        checked = [self._checked(item, i if isinstance(body, list) else None) for i, item in enumerate(items)]
        delivered = []
        for i, (channel, data, user, ext) in enumerate(checked):
            try:
                if user is None:
                    delivered.append(await self.broker.publish(channel, data, ext=ext))
                else:
                    delivered.append(await self.broker.publish_to_user(user, channel, data, ext=ext))
            except ValueError as exc:  # the broker's own checks, should they be stricter than ours
                return _json({"error": f"{_where(i, body)}{exc}", "status": 400, "published": i,
                              "delivered": delivered}, 400)
        return _json({"published": len(delivered), "delivered": delivered})

    def _checked(self, item: Any, index: int | None) -> tuple[str, Any, str | None, dict[str, Any] | None]:
        where = f"event #{index}: " if index is not None else ""
        if not isinstance(item, dict):
            raise BadRequest(f"{where}expected an object {{channel, data, user?, ext?}}")
        unknown = sorted(set(item) - {"channel", "data", "user", "ext"})
        if unknown:
            raise BadRequest(f"{where}unknown field {unknown[0]!r} (known: channel, data, user, ext)")
        channel, user, ext = item.get("channel"), item.get("user"), item.get("ext")
        if not isinstance(channel, str):
            raise BadRequest(f"{where}'channel' must be a string")
        problem = channel_error(channel)
        if problem is None and (is_wildcard(channel) or is_meta(channel) or is_service(channel)):
            problem = "publish to a broadcast channel, not a wildcard, /meta or /service channel"
        if problem:
            raise BadRequest(f"{where}bad channel {channel!r}: {problem}")
        if "data" not in item:
            raise BadRequest(f"{where}'data' is required")
        if user is not None and (not isinstance(user, str) or not user):
            raise BadRequest(f"{where}'user' must be a non-empty string")
        if ext is not None and not isinstance(ext, dict):
            raise BadRequest(f"{where}'ext' must be an object")
        personal = self.broker.is_personal(channel)
        if personal and user is None:
            raise BadRequest(f"{where}{channel} is a per-user channel: give 'user'")
        if not personal and user is not None:
            raise BadRequest(f"{where}{channel} is a shared channel: 'user' applies only to per-user channels "
                             f"({self.broker.config.personal_prefix})")
        return channel, item["data"], user, ext


def _where(index: int, body: Any) -> str:
    return f"event #{index}: " if isinstance(body, list) else ""
