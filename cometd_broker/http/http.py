"""Long-polling (JSON or form-encoded POST) and callback-polling (JSONP GET) over aiohttp.

Thin: read and bound the body, decode it, hand the messages to the exchange (which runs the batch
and holds a connect if it must), and write the answer it gives.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from .. import bayeux
from ..bayeux import BodyError, Message
from ..broker import RequestContext
from ..cluster.forwarding import Relay, relayed_response
from ..exchange import Exchange, encode
from .browser import BrowserPolicy, browser_id_of

JSON = "application/json"
_CALLBACK = re.compile(r"[A-Za-z_$][\w$.]{0,127}\Z")


def parse_json(text: bytes | str, max_batch: int | None = None) -> list[Message]:
    """The messages of a JSON body or websocket frame; more than `max_batch` of them is a BodyError."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BodyError(bayeux.error(400, f"body is not valid JSON ({exc})")) from None
    return bayeux.decode_body(parsed, max_batch)


def parse_message_params(values: list[str], max_batch: int | None = None) -> list[Message]:
    """The `message` parameter(s) of a form or query string: each a message or an array of them,
    `max_batch` counting the messages of all of them."""
    if not values:
        raise BodyError(bayeux.error(400, "missing the message parameter"))
    messages: list[Message] = []
    for value in values:
        messages.extend(parse_json(value, max_batch))
        bayeux.check_batch_size(len(messages), max_batch)
    return messages


def parse_long_poll_body(body: bytes, form_encoded: bool, max_batch: int | None = None) -> list[Message]:
    """The messages of a long-polling POST body: a JSON array or object, or a form's `message=`."""
    if form_encoded:
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return parse_message_params(form.get("message", []), max_batch)
    return parse_json(body, max_batch)


def context_for(request: web.BaseRequest, transport: str, browser: BrowserPolicy) -> RequestContext:
    return RequestContext(transport, request.headers, request.cookies, request.remote,
                          browser_id_of(request.cookies, browser.cookie_name), browser=browser)


class HttpTransport:
    """Serves long-polling and callback-polling on every path under the mount."""

    def __init__(self, exchange: Exchange, browser: BrowserPolicy) -> None:
        self.exchange = exchange
        self.browser = browser
        self.max_size = exchange.broker.config.max_message_size
        self.max_batch = exchange.broker.config.max_batch
        self.cookie_name = browser.cookie_name
        self.router: Relay | None = None  # set in a cluster (cluster.routing.install_router)

    async def long_polling(self, request: web.BaseRequest, *, relay: bool = True) -> web.StreamResponse:
        """`relay`: False on the private port, which never forwards again (cluster/routing.py)."""
        try:
            body = await self._read_body(request)
            messages = parse_long_poll_body(body, request.content_type == "application/x-www-form-urlencoded",
                                            self.max_batch)
        except BodyError as exc:
            return web.Response(status=exc.http_status, body=encode(bayeux.body_error_reply(exc.error)),
                                content_type=JSON)
        forwarded = await self._forward(request, messages, body, "POST") if relay else None
        if forwarded is not None:
            return forwarded
        status, body, browser_id = await self._process(request, messages, "long-polling")
        return self._respond(status, body, JSON, browser_id, request.secure)

    async def _forward(self, request: web.BaseRequest, messages: list[Message], body: bytes,
                       method: str) -> web.Response | None:
        """The reply of the process owning the batch's session, if another one does and it answered."""
        router = self.router
        tag = None if router is None else router.owner_tag(messages)
        if router is None or tag is None:
            return None
        reply = await router.forward(tag, request.raw_path, request.headers.items(), body, method=method)
        if reply is None:
            return None  # the owner is gone: answered here (402), the client resumes on this process
        return relayed_response(reply)

    async def callback_polling(self, request: web.BaseRequest, *, relay: bool = True) -> web.StreamResponse:
        callback = request.query.get("jsonp", "jsonpcallback")
        if not _CALLBACK.match(callback):
            return web.Response(status=400, content_type=JSON, body=encode(bayeux.body_error_reply(
                bayeux.error(400, "jsonp must be a JavaScript identifier of at most 128 characters"))))
        browser_id = None
        try:
            messages = parse_message_params(request.query.getall("message", []), self.max_batch)
            # Relayed as the same GET: the owner wraps the reply itself, exactly as it would here.
            forwarded = await self._forward(request, messages, b"", "GET") if relay else None
            if forwarded is not None:
                return forwarded
            status, body, browser_id = await self._process(request, messages, "callback-polling")
        except BodyError as exc:
            status, body = 200, encode(bayeux.body_error_reply(exc.error))
        # Script tags cannot read an HTTP status, so JSONP errors travel inside the callback.
        wrapped = callback.encode() + b"(" + body + b");"
        return self._respond(200 if status < 500 else status, wrapped, "text/javascript", browser_id, request.secure)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self.max_size
        length = request.content_length
        if length is not None:
            if length > limit:
                raise self._too_large()
            return await request.read()  # the usual case: one read of a known, bounded length
        body = bytearray()  # chunked: count as it arrives
        async for chunk in request.content.iter_chunked(65536):
            body += chunk
            if len(body) > limit:
                raise self._too_large()
        return bytes(body)

    def _too_large(self) -> BodyError:
        return BodyError(bayeux.error(
            413, f"message_too_large (the body exceeds max_message_size of {self.max_size} bytes)"), 413)

    async def _process(self, request: web.BaseRequest, messages: list[Message],
                       transport: str) -> tuple[int, bytes, str | None]:
        """Handle a batch: the HTTP status, the body, and a browser id to set as cookie (or None)."""
        def writable() -> bool:
            connection = request.transport
            return connection is not None and not connection.is_closing()

        answer = await self.exchange.process(messages, context_for(request, transport, self.browser), writable)
        return answer.status, answer.body(), answer.cookie

    def _respond(self, status: int, body: bytes, content_type: str, browser_id: str | None,
                 over_tls: bool) -> web.Response:
        response = web.Response(status=status, body=body, content_type=content_type)
        # A JSONP reply is script: a browser must not sniff it as anything else (and a JSON reply
        # must not be run as script).
        response.headers["X-Content-Type-Options"] = "nosniff"
        if browser_id is not None:
            # SameSite=Lax: no cross-site page's request carries it (the Origin check is the other half).
            response.set_cookie(self.cookie_name, browser_id, httponly=True, path="/", samesite="Lax",
                                secure=over_tls or self.browser.secure or None)
        return response
