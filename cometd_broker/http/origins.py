"""Which web origins may use the broker from a browser: the Origin check and CORS, for both HTTP paths.

Why: a browser attaches the site's cookies (the contact center's session, BAYEUX_BROWSER) to a
websocket handshake and to a cross-origin POST from any page, and reads neither CORS nor
SameSite=Lax as a reason not to send them (another origin of the same site is "same-site").
So, as CometD's CrossOriginFilter and Centrifugo's `allowed_origins` do, a request that carries an
`Origin` header is served only when that origin is

- the broker's own: the Origin's host[:port] equals the request's `Host` header (the scheme is not
  compared, so a TLS-terminating proxy that passes `Host` through needs no option; one that rewrites
  `Host` needs the public origin listed), or
- listed in `--allowed-origins` (`*` lists every origin).

A request without `Origin` is not a browser's cross-origin request (command-line and server
clients, a same-origin GET, a JSONP script) and is served as before. Any other request, a
websocket upgrade and a long-polling or REST POST alike, is answered 403 with a text saying why:
a browser sends a cross-origin POST whatever CORS says, only its answer is hidden from the page.

An allowed cross origin gets CORS (Fetch standard): a preflight `OPTIONS` is answered 204 with
Access-Control-Allow-Origin (the origin itself, never `*`, because credentials are allowed),
-Allow-Credentials, -Allow-Methods, -Allow-Headers (those asked for), -Max-Age and `Vary: Origin`;
actual answers carry -Allow-Origin, -Allow-Credentials, -Expose-Headers and `Vary: Origin`.

`OriginPolicy` is pure (strings in, headers out); the lean path (lean_http.py) calls it for what it
serves, `cross_origin_middleware` for everything aiohttp serves.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum

from aiohttp import web

ANY = "*"
ORIGIN = "Origin"
REQUEST_METHOD = "Access-Control-Request-Method"
REQUEST_HEADERS = "Access-Control-Request-Headers"
METHODS = "GET, POST, PUT, PATCH, DELETE"  # the Bayeux transports and the REST API's
# Asked for when a preflight names none it may send: what the CometD client, the agent desktop and
# the Huawei gateway's clients send.
DEFAULT_HEADERS = "Content-Type, Authorization, X-CSRF-TOKEN, X-Requested-With, Guid"
# Answer headers a cross-origin page may read: the CSRF token of the GWS API (read from any GET), a
# created resource's Location, the Huawei gateway's Set-GUID, a Retry-After.
EXPOSED = "X-CSRF-TOKEN, X-CSRF-HEADER, Location, Set-GUID, Retry-After"
MAX_AGE = "600"  # seconds a browser may reuse a preflight's answer (Chromium caps it at 7200)
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(?::([0-9]{1,5}))?\Z")
_TOKENS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+){0,31}\Z")


class Verdict(Enum):
    SAME = "same"  # the broker's own origin: nothing to add
    ALLOWED = "allowed"  # a listed cross origin: CORS headers
    FOREIGN = "foreign"  # refused (403)


def normalize(origin: str) -> str | None:
    """`scheme://host[:port]` lower-cased, without the scheme's default port; None if it is no such
    origin (`null`, a path, userinfo...)."""
    match = _ORIGIN.match(origin.strip().lower())
    if match is None:
        return None
    scheme, host, port = match.groups()
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def parse_allowed(text: str) -> frozenset[str]:
    """The origins of `--allowed-origins` (comma-separated), normalized; `*` stands for any.
    ValueError names an entry that is not an origin."""
    allowed = set()
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        if entry == ANY:
            allowed.add(ANY)
            continue
        origin = normalize(entry.rstrip("/"))
        if origin is None:
            raise ValueError(f"allowed_origins entry {entry!r} must be an origin such as https://crm.example.com "
                             "(scheme, host and optional port, no path) or *")
        allowed.add(origin)
    return frozenset(allowed)


class OriginPolicy:
    """The verdict on a request's Origin, and the CORS headers of its answer."""

    def __init__(self, allowed_origins: str = "") -> None:
        self.allowed = parse_allowed(allowed_origins)
        self.any = ANY in self.allowed

    def judge(self, origin: str, host: str | None) -> Verdict:
        """`origin`: the request's Origin header (present); `host`: its Host header."""
        if host and _is_host(origin, host):
            return Verdict.SAME
        if self.any or normalize(origin) in self.allowed:
            return Verdict.ALLOWED
        return Verdict.FOREIGN

    def answer_headers(self, origin: str) -> list[tuple[str, str]]:
        """For the answer to an allowed cross-origin request."""
        return [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true"),
                ("Access-Control-Expose-Headers", EXPOSED), ("Vary", ORIGIN)]

    def preflight_headers(self, origin: str, requested_headers: str | None) -> list[tuple[str, str]]:
        """For the 204 answer to an allowed origin's preflight. The headers it asks for are allowed as
        asked when they are a sane list of names: the origin is trusted, only the list's form is checked."""
        asked = (requested_headers or "").strip()
        allowed = asked if asked and _TOKENS.match(asked) else DEFAULT_HEADERS
        return [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true"),
                ("Access-Control-Allow-Methods", METHODS), ("Access-Control-Allow-Headers", allowed),
                ("Access-Control-Max-Age", MAX_AGE), ("Vary", ORIGIN)]

    def refusal(self, origin: str) -> str:
        """The body of a 403 for a foreign origin: why, and which option allows it."""
        shown = origin if len(origin) <= 200 else origin[:200] + "..."
        return (f"Forbidden: requests from origin {shown} are not allowed; only this server's own origin is, "
                "unless listed in --allowed-origins (env COMETD_BROKER_ALLOWED_ORIGINS)\n")


def _is_host(origin: str, host: str) -> bool:
    """Whether the Origin names the host (and port) the request was sent to (Host, RFC 9110 7.2)."""
    normalized = normalize(origin)
    if normalized is None:
        return False
    scheme, _, authority = normalized.partition("://")
    host = host.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and host.endswith(":" + default):
        host = host[:-len(default) - 1]
    return authority == host


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def covered(path: str, prefixes: Sequence[str]) -> bool:
    """Whether `path` is at or below one of `prefixes` (a prefix "" or "/" covers every path)."""
    for prefix in prefixes:
        base = prefix.rstrip("/")
        if not base or path == base or path.startswith(base + "/"):
            return True
    return False


def cross_origin_middleware(policy: OriginPolicy, prefixes: Sequence[str]) -> Callable[..., object]:
    """The aiohttp side: under `prefixes` (a list the app may extend until it starts), refuse foreign
    origins, answer preflights, and add the CORS headers to allowed cross-origin answers, errors included."""

    @web.middleware
    async def cross_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(ORIGIN)
        if origin is None or not covered(request.path, prefixes):
            return await handler(request)
        verdict = policy.judge(origin, request.headers.get("Host"))
        preflight = request.method == "OPTIONS" and REQUEST_METHOD in request.headers
        if verdict is Verdict.FOREIGN:
            return web.Response(status=403, text=policy.refusal(origin), headers={"Vary": ORIGIN})
        if verdict is Verdict.SAME:
            return await handler(request)
        if preflight:
            return web.Response(status=204, headers=policy.preflight_headers(origin,
                                                                             request.headers.get(REQUEST_HEADERS)))
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            decorate(exc, policy.answer_headers(origin))
            raise
        decorate(response, policy.answer_headers(origin))
        return response

    return cross_origin


def decorate(response: web.StreamResponse, headers: list[tuple[str, str]]) -> None:
    if response.prepared:
        return  # a websocket or a streamed answer has sent its headers (CORS does not apply to websockets)
    for name, value in headers:
        if name == "Vary":
            add_vary(response, value)
        else:
            response.headers[name] = value  # set, not added: a relayed answer may carry them already


def add_vary(response: web.StreamResponse, name: str) -> None:
    present = response.headers.get("Vary", "")
    if name.lower() not in (v.strip().lower() for v in present.split(",")):
        response.headers["Vary"] = f"{present}, {name}" if present else name
