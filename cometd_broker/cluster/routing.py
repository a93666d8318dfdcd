"""Session affinity inside a cluster: a long-poll that reaches a process not owning its session is
relayed to the process that does, like a load balancer with sticky sessions.

Why: a session lives in the process that handshook it, and `--workers N` lets the kernel pick a
process per *connection*. Long-polling clients (browsers, the CometD JS client) hold /meta/connect on
one connection and publish on another, so without this their two connections reach different
processes and each request there is a 402 and a re-handshake, forever.

- Tag: every clientId this process issues starts with its tag, 8 random hex digits drawn at start,
  followed by the usual 160 random bits (bayeux.new_client_id), so a clientId stays unguessable.
- Registry: the process listens on its private port (private_port.py) and keeps
  `{namespace}:route:{tag}` = "host:port" in the cluster's registry (registry.py: the deployment's
  namespace, a TTL refreshed every TTL/3, removed when it stops). A process SIGKILLed leaves the key
  until the TTL ends, but its port refuses.
- Forwarding: a long-poll POST, or a callback-polling (JSONP) GET, whose first message names another
  tag (never a handshake) is sent, method, target, headers and body, to that owner's private port
  and the owner's reply bytes are relayed unchanged (the relay client, forwarding.py). If the owner is
  not registered, cannot be reached in time, or drops the request, the batch is handled here as
  before: 402 with handshake advice, so the client resumes on this process by replay, losing nothing.
- Lookups: one Redis GET per tag at a time, however many requests name it at once; a known owner is
  then routed to without waiting, its registration re-read in the background every TTL/3, and a
  failed lookup changes nothing (it says nothing about the owner, and a dead owner's port refuses).
  Under load a lookup's timeout must not turn into a second of 402s for every session of a live owner.
- On the private port, requests with `X-Cometd-Forwarded-By` are this router's (private_port.py) and
  never forwarded again: POSTs on the lean path, and GETs (JSONP) handed to aiohttp's handler of
  callback-polling, so the owner wraps the reply in the client's callback exactly as on its public
  port. It needs no trust of its own: a forwarded request carries the client's own clientId and
  browser cookie, which the owner checks as for any request. For the same reason the header grants
  nothing on the public port: it is never read there, and is replaced when a request is forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio as aioredis
from aiohttp import web

from .. import bayeux
from ..bayeux import Message
from ..broker import Broker
from ..http.http import HttpTransport
from ..http.lean_http import LeanHttp
from ..http.origins import ORIGIN, OriginPolicy, Verdict, decorate
from ..redis_names import DEFAULT_PREFIX, redis_key, redis_namespace
from ..tasks import cancel_and_wait
from .forwarding import ForwardedReply, Forwarder, ForwardError, relay_request
from .private_port import FORWARDED_BY, PrivatePort, private_port
from .registry import RegistryEntry

__all__ = ["FORWARDED_BY", "SessionRouter", "install_router"]

log = logging.getLogger("cometd_broker.routing")  # the name its log lines had before cluster/, kept for their readers

TAG_LENGTH = 8  # hex digits of the process tag that starts a clientId
CLIENT_ID_LENGTH = TAG_LENGTH + 40  # the tag, then bayeux.new_client_id()
REGISTRATION_TTL = 10.0  # seconds a registration lives unless refreshed
MISS_TTL = 1.0  # seconds an unknown or unreachable owner is remembered as such
MAX_CACHED = 4096  # owners remembered (tags come from clients: bounded)
CONNECT_TIMEOUT = 5.0  # seconds to connect to an owner: a dead one on loopback refuses at once; this bounds
# a host that is down, and leaves room for this process's own loop lag under a burst
_HEX = frozenset("0123456789abcdef")


class SessionRouter:
    """This process's tag, its registration, its private port, and the forwarding of others' sessions."""

    def __init__(self, broker: Broker, redis_url: str, host: str, *, prefix: str = DEFAULT_PREFIX,
                 ttl: float = REGISTRATION_TTL, http: HttpTransport, port: PrivatePort | None = None) -> None:
        self.broker = broker
        self.http = http  # serves the forwarded requests the lean path hands over
        self.origins = OriginPolicy(broker.config.allowed_origins)
        self.tag = secrets.token_hex(TAG_LENGTH // 2)
        broker.client_id_prefix = self.tag
        self.port = port or PrivatePort(host)  # shared with the contact center's leader on the same host
        self.namespace = redis_namespace(redis_url, prefix)
        self.ttl = ttl
        # A held connect may be answered up to its timeout late, plus the owner's queue of work.
        # Idle connections kept per owner: up to one per long-polling client it relays for.
        self.forwarder = Forwarder(connect_timeout=CONNECT_TIMEOUT, max_idle=1024,
                                   read_timeout=broker.config.timeout / 1000 + 30.0)
        self._redis = aioredis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.registration = RegistryEntry(self._redis, self.key(self.tag), ttl)
        self._owners: dict[str, tuple[str | None, float]] = {}  # tag -> (address or None, fresh until)
        self._lookups: dict[str, asyncio.Task[str | None]] = {}  # tag -> its lookup in flight
        self._private: LeanHttp | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._redis_down = False  # logged once per outage

    @property
    def address(self) -> str:
        """"host:port" of the private port, once started."""
        return self.port.address

    def key(self, tag: str) -> str:
        return redis_key(self.namespace, "route", tag)

    # --- lifetime -------------------------------------------------------------------------------------

    async def start(self, _: web.Application | None = None) -> None:
        port = self.port
        self._private = LeanHttp(self.http.exchange, self.http.browser, ["/"], port.dispatch, forwarded_only=True)
        port.front, port.bayeux = self._private, self._serve_handed_over
        await port.open()
        await self._register()  # before the public port listens, when Redis answers
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever(), name="session-router")
        log.info("session router: tag %s, forwarded requests on %s", self.tag, self.address)

    async def stop(self, _: web.Application | None = None) -> None:
        """After the broker answered its held connects: unregister, close the private port and the pool."""
        task, self._refresher = self._refresher, None
        await cancel_and_wait(task)
        for lookup in list(self._lookups.values()):
            await cancel_and_wait(lookup)
        with contextlib.suppress(redis.RedisError, OSError):
            await self.registration.release(self.address)
        if self._private is not None:
            self.port.front = self.port.bayeux = None
            self._private.close()
            self._private = None
            await self.port.close()
        self.forwarder.close()
        await self._redis.aclose()

    async def _register(self) -> None:
        try:
            await self.registration.put(self.address)
        except (redis.RedisError, OSError) as exc:
            if not self._redis_down:
                self._redis_down = True
                log.warning("session router: cannot register in Redis (%s); other processes answer this "
                            "process's clients with 402 until it can", exc)
            return
        if self._redis_down:
            self._redis_down = False
            log.info("session router: registered in Redis again")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.registration.refresh_every)
            await self._register()

    # --- forwarding -----------------------------------------------------------------------------------

    def owner_tag(self, messages: list[Message]) -> str | None:
        """The tag of another process owning this batch's session (by its first message), else None."""
        if not messages:
            return None
        first = messages[0]
        client_id = first.get("clientId")
        if type(client_id) is not str or len(client_id) != CLIENT_ID_LENGTH:
            return None
        tag = client_id[:TAG_LENGTH]
        if tag == self.tag or first.get("channel") == bayeux.HANDSHAKE or not _HEX.issuperset(tag):
            return None
        return tag

    async def forward(self, tag: str, target: str, headers: Iterable[tuple[str, str]], body: bytes, *,
                      method: str = "POST") -> ForwardedReply | None:
        """The owner's reply to this request, or None when it is gone (then the caller answers as the owner
        of nothing: 402, and the client resumes here)."""
        stats = self.broker.stats
        address = await self._owner(tag)
        if address is None:
            stats.forward_failures += 1
            return None
        try:
            reply = await self.forwarder.send(address, relay_request(method, target, headers, body,
                                                                     forwarded_by=self.tag))
        except ForwardError as exc:
            stats.forward_failures += 1
            if self._owners.get(tag, (None,))[0] is not None:
                log.warning("session router: forwarding to %s (tag %s) failed: %s; its clients resume here",
                            address, tag, exc)
            if exc.refused:  # gone: its clients resume here until it registers again
                self._remember(tag, None, MISS_TTL)
            return None  # a busy owner fails this request only, not the next ones
        stats.forwarded += 1
        return reply

    async def _owner(self, tag: str) -> str | None:
        cached = self._owners.get(tag)
        if cached is not None:
            address, fresh_until = cached
            if fresh_until > time.monotonic():
                return address
            if address is not None:  # due for a refresh: route by what we know meanwhile
                self._lookup(tag)
                return address
        return await asyncio.shield(self._lookup(tag))  # a request given up on does not cancel the lookup

    def _lookup(self, tag: str) -> asyncio.Task[str | None]:
        """The one lookup of `tag` in flight: every request for an owner not known yet awaits the same
        Redis GET, not one each (hundreds of long-polls can name it at once, every refresh)."""
        task = self._lookups.get(tag)
        if task is None:
            task = self._lookups[tag] = asyncio.get_running_loop().create_task(self._fetch(tag))
            task.add_done_callback(lambda _: self._lookups.pop(tag, None))
        return task

    async def _fetch(self, tag: str) -> str | None:
        try:
            value = await self._redis.get(self.key(tag))
        except (redis.RedisError, OSError) as exc:
            # Says nothing about the owner: keep routing by what we knew (a dead owner refuses anyway).
            log.debug("session router: looking up tag %s failed: %s", tag, exc)
            cached = self._owners.get(tag)
            return cached[0] if cached is not None else None
        address = value.decode() if value else None
        self._remember(tag, address, self.ttl / 3 if address else MISS_TTL)
        return address

    def _remember(self, tag: str, address: str | None, seconds: float) -> None:
        if len(self._owners) >= MAX_CACHED and tag not in self._owners:
            self._owners.clear()
        self._owners[tag] = (address, time.monotonic() + seconds)

    def _cors(self, request: web.BaseRequest, response: web.StreamResponse) -> web.StreamResponse:
        """The CORS headers of an allowed cross origin, as the public port would add them (the forwarding
        process checked the Origin; the reply is relayed to the browser as it is)."""
        origin = request.headers.get(ORIGIN)
        if origin is not None and self.origins.judge(origin, request.headers.get("Host")) is Verdict.ALLOWED:
            decorate(response, self.origins.answer_headers(origin))
        return response

    async def _serve_handed_over(self, request: web.BaseRequest) -> web.StreamResponse:
        """The forwarded requests the lean path hands over to the private port's aiohttp side: JSONP GETs,
        and any forwarded request after one on the same (pooled) connection. Never forwarded again."""
        allowed = self.broker.transports
        if request.method == "GET" and "callback-polling" in allowed and "message" in request.query:
            return await self.http.callback_polling(request, relay=False)
        if request.method == "POST" and "long-polling" in allowed:
            return self._cors(request, await self.http.long_polling(request, relay=False))
        return web.Response(status=400, text="this port serves only requests forwarded by the broker's own "
                                             "processes\n", headers={"Connection": "close"})


def install_router(app: web.Application, broker: Broker, endpoint: Any) -> SessionRouter:
    """With redis: tag this process's clientIds and forward others' long-polls to their owners.
    `endpoint` is the app's Bayeux endpoint (app.BayeuxEndpoint), whose transports relay through it."""
    cfg = broker.config
    router = SessionRouter(broker, cfg.redis, cfg.forward_host, prefix=cfg.redis_prefix, http=endpoint.http,
                           port=private_port(app, cfg.forward_host))
    endpoint.router = router
    endpoint.http.router = router
    app.on_startup.append(router.start)  # after the broker's own start (registered before)
    app.on_cleanup.append(router.stop)  # after on_shutdown, where the broker answered held connects
    return router
