"""The contact center in a cluster: one leader runs the engine, every process forwards REST calls to it.

The engine (conversations, routing, workbins, the agent gateway) is single-threaded by design: one
asyncio lock orders every operation and its notifications. Rather than share that state between
processes, a cluster elects one *leader* through a Redis lease and only the leader runs the engine,
with its state in Redis (`RedisStateStore`), so a successor resumes where it stopped.

- Lease: `SET {namespace}:cc:leader VALUE NX PX ttl`, an entry of the broker's cluster registry
  (cometd_broker/cluster/registry.py: its namespace, its TTL refreshed every ttl/3, compare-and-delete), like
  every key of the contact center in that namespace. The value is JSON naming the term (a random token)
  and the URL where the holder serves the engine. The holder extends it every ttl/3 with a compare-and-
  extend script; if it cannot (the value changed, or Redis did not answer before the lease ran out) it
  stops serving at once. Its Redis writes are fenced by the same value (see redis_store.py), so a
  deposed leader that has not noticed yet cannot overwrite its successor's state.
- Engine address: the process's private port on `host` (cometd_broker/cluster/private_port.py, an ephemeral
  port, the same one as the broker's session router when it binds the same host), where the engine is
  offered as the service `contact-center` only while this process leads; any other time the port
  answers that service 421 (not served here). A loopback host suits the workers of one machine;
  processes on several machines set `host` to an address they reach each other on. The private port
  needs no trust of its own: forwarded requests carry the client's own credentials (cookie, Basic,
  CSRF token, Guid, media token), which the engine checks as usual.
- Forwarding, with the broker's relay client (cometd_broker/cluster/forwarding.py): every process (the leader
  too, through its own private port, so there is one path) relays the REST request unchanged and the
  reply unchanged (status, headers incl. Set-Cookie, body). A leader that cannot be connected to, or
  no longer leads there, is looked up again and retried, for at most `find_wait` seconds (a failover
  takes up to one lease ttl); nothing was sent, so retrying is safe. A leader that fails after the
  request was sent is not retried (it may have been applied): 503.
- Notifications: the engine publishes with `broker.publish_to_user`, which goes through Redis to the
  agent's CometD sessions on every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import redis
import redis.asyncio as aioredis
from aiohttp import web

from cometd_broker.cluster.forwarding import Forwarder, ForwardError, relay_request, relayed_response
from cometd_broker.cluster.private_port import PrivatePort
from cometd_broker.cluster.registry import RegistryEntry
from cometd_broker.redis_names import redis_key
from cometd_broker.security import AuthenticationError, HandshakeRequest, Principal
from cometd_broker.tasks import cancel_and_wait

from .auth import GwsAuthenticator
from .gws.envelope import GwsError, Handler, Status, failure
from .huawei.agentgateway import OPERATION_FAILED
from .huawei.agentgateway import reply as gateway_reply
from .redis_store import NotLeader, StoreUnavailable

log = logging.getLogger("channels.cluster")

SERVICE = "contact-center"  # the engine's name on the private port


@dataclass(frozen=True)
class ClusterOptions:
    redis_url: str
    namespace: str  # the broker's (BrokerConfig.redis_namespace): its deployment's on this Redis server
    lease_ttl: float = 5.0  # seconds; a dead leader is replaced within about this
    host: str = "127.0.0.1"  # where this process serves the engine while it leads (see the module doc)
    read_timeout: float = 30.0  # seconds a forwarded request may take (above the gateway's long poll)
    redis_timeout: float = 1.0  # seconds any Redis call may take

    def __post_init__(self) -> None:
        if not 0.3 <= self.lease_ttl <= 600:
            raise ValueError(f"cluster lease ttl must be 0.3..600 seconds, got {self.lease_ttl}")
        if self.read_timeout <= 0 or self.redis_timeout <= 0:
            raise ValueError("cluster timeouts must be > 0")

    @property
    def prefix(self) -> str:
        """How every Redis key of the contact center starts: the deployment's namespace, then `cc`."""
        return redis_key(self.namespace, "cc")

    @property
    def lease_key(self) -> str:
        return redis_key(self.prefix, "leader")

    @property
    def find_wait(self) -> float:
        """How long a request waits for a reachable leader: long enough to ride through a failover."""
        return self.lease_ttl + 1.0


def lease_value(url: str) -> str:
    return orjson.dumps({"url": url, "term": secrets.token_hex(12), "pid": os.getpid()}).decode()


def lease_url(value: str | bytes) -> str | None:
    try:
        url = orjson.loads(value).get("url")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return url if isinstance(url, str) else None


class LeaderLease(RegistryEntry):
    """The lease, a registry entry processes compete for; each call returns or raises redis.RedisError,
    never hangs."""

    async def acquire(self, value: str) -> str | None:
        """None if we now hold the lease, else the holder's value (SET NX GET: one atomic step)."""
        return await self.claim(value)

    async def holder(self) -> str | None:
        return await self.read()


EngineFactory = Callable[[str], Awaitable[web.Application]]  # lease value -> the engine's app for that term


class ClusterNode:
    """This process's part: campaigns for the lease, runs the engine while it leads, forwards requests."""

    def __init__(self, options: ClusterOptions, engine_app: EngineFactory, port: PrivatePort | None = None) -> None:
        self.options = options
        self._engine_app = engine_app
        self.port = port or PrivatePort(options.host)  # the process's, shared with its session router
        self._redis = aioredis.Redis.from_url(options.redis_url, socket_timeout=options.redis_timeout,
                                              socket_connect_timeout=options.redis_timeout)
        self.lease = LeaderLease(self._redis, options.lease_key, options.lease_ttl)
        self.leader_url: str | None = None  # the leader's engine URL as last seen
        self.term: str | None = None  # our lease value while we lead
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._forwarder = Forwarder(connect_timeout=options.redis_timeout, read_timeout=options.read_timeout)
        self._wake = asyncio.Event()
        self._fence_task: asyncio.Task[None] | None = None
        self._held: str | None = None  # the lease value we hold, from winning it (the engine may be starting)
        self._redis_down = False  # logged once per outage

    @property
    def is_leader(self) -> bool:
        return self.term is not None

    # --- lifetime -------------------------------------------------------------------------------------

    async def start(self, _: web.Application | None = None) -> None:
        await self.port.open()  # before campaigning: a lease names its address
        self._task = asyncio.get_running_loop().create_task(self._campaign(), name="contact-center-lease")

    async def stop(self, _: web.Application | None = None) -> None:
        """Stop campaigning; a leader stops its engine, then releases the lease for a fast successor."""
        task, self._task = self._task, None
        await cancel_and_wait(task)  # may interrupt an engine start: cleaned up below all the same
        if self._fence_task is not None:
            await asyncio.wait([self._fence_task])  # a step-down under way finishes
        held = self._held  # before stepping down forgets it
        await self._step_down("shutting down", level=logging.INFO)
        await self._stop_engine()
        self._held = None
        if held is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self.lease.release(held)
        self._forwarder.close()
        await self.port.close()
        await self._redis.aclose()

    # --- the lease ------------------------------------------------------------------------------------

    async def _campaign(self) -> None:
        period = self.lease.refresh_every
        valid_until = 0.0  # monotonic time our lease surely lasts to (renewal sent before it)
        while True:
            sent = time.monotonic()
            try:
                if self.term is None:
                    valid_until = sent + self.options.lease_ttl
                    await self._try_lead()
                elif await self.lease.renew(self.term):
                    valid_until = sent + self.options.lease_ttl
                else:
                    await self._step_down("the lease was lost to another process")
                if self._redis_down:
                    self._redis_down = False
                    log.info("contact-center leader lease: Redis reachable again")
            except (redis.RedisError, OSError) as exc:
                if self.term is not None and time.monotonic() + period >= valid_until:
                    # It may have expired before the next try: another process may lead already.
                    await self._step_down(f"the lease could not be renewed ({exc})")
                if not self._redis_down:
                    self._redis_down = True
                    log.warning("contact-center leader lease: Redis unavailable (%s); retrying every %.1f s",
                                exc, period)
            except Exception:  # a bug must not end the campaign: this process would never lead again
                log.exception("contact-center leader lease: unexpected error")
                await self._step_down("unexpected error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period)
            self._wake.clear()

    async def _try_lead(self) -> None:
        value = lease_value(f"http://{self.port.address}")
        holder = await self.lease.acquire(value)
        if holder is not None:
            self.leader_url = lease_url(holder)
            return
        self._held = value
        log.info("contact-center leader: this process (pid %d) leads, engine at %s", os.getpid(),
                 lease_url(value))
        try:
            await self._serve_engine(value)
        except Exception:
            log.exception("contact-center leader: the engine failed to start; releasing the lease")
            await self._stop_engine()
            self._held = None
            await self.lease.release(value)
            return
        self.term, self.leader_url = value, lease_url(value)

    async def _serve_engine(self, value: str) -> None:
        # Loads the state from Redis (the same restore as a restart from SQLite: pending offers re-routed).
        app = await self._engine_app(value)
        self._runner = runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handle_signals=False)
        await runner.setup()
        assert runner.server is not None
        self.port.offer(SERVICE, runner.server)

    async def _step_down(self, why: str, level: int = logging.WARNING) -> None:
        if self.term is None:
            return
        log.log(level, "contact-center leader: this process stops leading: %s", why)
        self.term = self.leader_url = self._held = None
        await self._stop_engine()
        self._wake.set()  # campaign again at once: the lease may be free

    async def _stop_engine(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await self.port.withdraw(SERVICE)  # 421 from now on: the others look for the next leader
            await runner.cleanup()

    def fenced(self) -> None:
        """The store refused a write: someone else leads. Stop now rather than at the next renewal."""
        if self.term is not None and self._task is not None and self._fence_task is None:
            self._fence_task = asyncio.get_running_loop().create_task(self._fenced_step_down())

    async def _fenced_step_down(self) -> None:
        try:
            await self._step_down("a write was fenced off: another process holds the lease")
        finally:
            self._fence_task = None

    # --- forwarding -----------------------------------------------------------------------------------

    async def _leader_address(self, again: bool) -> str | None:
        """The leader's "host:port" as last seen, or (`again`, or none seen) as the lease names it now."""
        if again or self.leader_url is None:
            try:
                holder = await self.lease.holder()
            except (redis.RedisError, OSError) as exc:
                raise StoreUnavailable(f"Redis unavailable: {exc}") from None
            self.leader_url = lease_url(holder) if holder is not None else None
        url = self.leader_url
        return (urlsplit(url).netloc or None) if url is not None else None

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Relay `request` to the leader and its reply back; 503 when no leader answers in time."""
        # The client's address last: the leader counts failed logins against it (`forwarded_client`).
        headers = [*request.headers.items(), ("X-Forwarded-For", request.remote or "")]
        relayed = relay_request(request.method, request.raw_path, headers, await request.read(), service=SERVICE)
        try:
            reply = await self._forwarder.relay_to_any(self._leader_address, relayed, wait=self.options.find_wait)
        except StoreUnavailable as exc:
            return _unavailable(request, f"no contact-center leader: {exc}")
        except ForwardError as exc:
            if not exc.sent:
                return _unavailable(request, "no contact-center leader reachable, retry later")
            log.warning("forwarding %s %s to %s failed: %s", request.method, request.path, self.leader_url, exc)
            return _unavailable(request, "the contact-center leader failed while handling the request; "
                                         "it may or may not have been applied: check, then retry")
        return relayed_response(reply)

    def middleware(self, prefixes: tuple[str, ...], exempt: tuple[str, ...]) -> Callable[..., object]:
        """Forward requests under `prefixes` (but not under `exempt`) instead of handling them here."""

        def under(path: str, roots: tuple[str, ...]) -> bool:
            return any(path == r or path.startswith(r + "/") for r in roots)

        @web.middleware
        async def forward_to_leader(request: web.Request, handler: Handler) -> web.StreamResponse:
            if under(request.path, prefixes) and not under(request.path, exempt):
                return await self.forward(request)
            return await handler(request)

        return forward_to_leader


def forwarded_client(request: web.Request) -> str | None:
    """On the leader's private engine app: the client's address, from the X-Forwarded-For that
    `ClusterNode.forward` appends last (any earlier one came from the client and proves nothing)."""
    values = request.headers.getall("X-Forwarded-For", [])
    forwarded = values[-1].rsplit(",", 1)[-1].strip() if values else ""
    return forwarded or request.remote


def _unavailable(request: web.Request, message: str) -> web.Response:
    if request.path.startswith("/agentgateway/"):
        return gateway_reply(OPERATION_FAILED, message)  # Huawei clients branch on retcode, always HTTP 200
    return failure(Status.INTERNAL_ERROR, message, 503)


def store_errors(node: ClusterNode, prefix: str) -> Callable[..., object]:
    """In the leader's engine app: a state write Redis refused is a 503 envelope, not a 500."""

    @web.middleware
    async def unavailable_is_503(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(prefix):
            return await handler(request)
        try:
            return await handler(request)
        except StoreUnavailable as exc:
            if isinstance(exc, NotLeader):
                node.fenced()
            log.warning("%s %s: state store unavailable: %s", request.method, request.path, exc)
            raise GwsError(Status.INTERNAL_ERROR, f"contact-center state unavailable, retry later ({exc})",
                           503) from None

    return unavailable_is_503


class ClusterAuthenticator(GwsAuthenticator):
    """The handshake's session check on a shared store: a Redis outage denies with a reason, never a 500."""

    async def authenticate(self, request: HandshakeRequest) -> Principal:
        try:
            return await super().authenticate(request)
        except StoreUnavailable as exc:
            raise AuthenticationError(f"session store unavailable, retry later ({exc})") from None
