"""The aiohttp application: the Bayeux endpoint mounted on a path, and the broker's lifetime."""

from __future__ import annotations

from aiohttp import hdrs, web

from .admin import add_admin
from .broker import Broker
from .cluster.forwarding import Relay
from .config import BrokerConfig
from .exchange import Exchange
from .http.browser import BrowserPolicy
from .http.http import HttpTransport
from .http.origins import OriginPolicy, cross_origin_middleware
from .http.websocket import WebSocketTransport
from .metrics import add_metrics
from .security import Authenticator, Authorizer

BROKER = web.AppKey("broker", Broker)


class BayeuxEndpoint:
    """Dispatches any request under a mount to the right transport."""

    def __init__(self, broker: Broker) -> None:
        # One exchange and one browser policy per broker, shared by aiohttp's handlers and the lean path.
        self.exchange = Exchange(broker)
        self.browser = BrowserPolicy(broker.config)
        self.origins = OriginPolicy(broker.config.allowed_origins)  # --allowed-origins, on both HTTP paths
        # Paths whose requests are checked for their Origin and get CORS: the mounts, and what
        # allow_cross_origin adds (a REST API of the app).
        self.cross_origin_paths: list[str] = []
        self.http = HttpTransport(self.exchange, self.browser)
        self.websocket = WebSocketTransport(self.exchange, self.browser)
        self.allowed = broker.transports
        self.mounts: list[str] = []  # see add_mount
        self.router: Relay | None = None  # in a cluster: see cluster.routing.install_router

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == hdrs.METH_GET:
            if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket" and "websocket" in self.allowed:
                return await self.websocket.handle(request)
            if "callback-polling" in self.allowed and "message" in request.query:
                return await self.http.callback_polling(request)
        elif request.method == hdrs.METH_POST and "long-polling" in self.allowed:
            return await self.http.long_polling(request)
        raise web.HTTPMethodNotAllowed(request.method, self._methods(),
                                       text="Bayeux endpoint: POST for long-polling, GET with message= for "
                                            "callback-polling, or a websocket upgrade")

    def _methods(self) -> list[str]:
        methods = []
        if "long-polling" in self.allowed:
            methods.append(hdrs.METH_POST)
        if {"websocket", "callback-polling"} & set(self.allowed):
            methods.append(hdrs.METH_GET)
        return methods


ENDPOINT = web.AppKey("bayeux_endpoint", BayeuxEndpoint)


def add_mount(app: web.Application, mount: str) -> None:
    """Serve the app's Bayeux endpoint on one more path (and every path below it)."""
    endpoint = app[ENDPOINT]
    endpoint.mounts.append(mount)
    endpoint.cross_origin_paths.append(mount)
    base = mount.rstrip("/")
    app.router.add_route("*", base, endpoint.handle)
    app.router.add_route("*", base + "/{tail:.*}", endpoint.handle)


def allow_cross_origin(app: web.Application, prefix: str) -> None:
    """Check the Origin of requests at and below `prefix` as the Bayeux endpoint's, and answer CORS for
    the origins `--allowed-origins` lists (http/origins.py): for a REST API that browsers call with cookies."""
    app[ENDPOINT].cross_origin_paths.append(prefix)


def add_bayeux_endpoint(app: web.Application, broker: Broker, *mounts: str) -> BayeuxEndpoint:
    """Serve the broker at each mount and at every path below it; own the broker's lifetime."""
    endpoint = BayeuxEndpoint(broker)
    app[ENDPOINT] = endpoint
    # Before any middleware added later (a REST API's): a foreign origin is refused before anything
    # else runs, and an allowed one's answers, errors included, carry CORS headers.
    app.middlewares.append(cross_origin_middleware(endpoint.origins, endpoint.cross_origin_paths))
    for mount in mounts:
        add_mount(app, mount)

    async def start(_: web.Application) -> None:
        await broker.start()

    async def stop(_: web.Application) -> None:
        # Answer parked connects first, then let websocket writers send those answers.
        await broker.close()
        endpoint.exchange.close()  # answer the connects the broker released, now
        await endpoint.websocket.close_all()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return endpoint


def create_app(config: BrokerConfig | None = None, *, authenticator: Authenticator | None = None,
               authorizer: Authorizer | None = None, broker: Broker | None = None) -> web.Application:
    broker = broker or Broker(config, authenticator=authenticator, authorizer=authorizer)
    # The transports bound bodies themselves (max_message_size); keep aiohttp's own limit above it.
    app = web.Application(client_max_size=broker.config.max_message_size + 1024)
    app[BROKER] = broker
    add_metrics(app, broker, broker.config.metrics_token)  # before the endpoint too
    if broker.config.admin_token:  # before the endpoint, whose mount may be "/" and take every path
        add_admin(app, broker, broker.config.admin_token)
    add_bayeux_endpoint(app, broker, broker.config.mount)
    cfg = broker.config
    if cfg.redis and cfg.forward_host and "long-polling" in broker.transports:
        from .cluster.routing import install_router  # needs the optional redis package, like the engine

        install_router(app, broker, app[ENDPOINT])
    return app
