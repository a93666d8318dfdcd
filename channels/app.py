"""The contact-center application on the broker: options, wiring and lifetime.

Registered as the `cometd_broker.apps` entry point `contact-center`, so `cometd-broker serve`
serves the GWS-style REST API beside the Bayeux endpoint without the broker importing this package.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from cometd_broker import Broker
from cometd_broker.app import add_mount, allow_cross_origin
from cometd_broker.engine import EngineUnavailable
from cometd_broker.metrics import METRICS
from cometd_broker.security import ChainedAuthenticator
from cometd_broker.tasks import cancel_and_wait

from . import desktop, users_cli, workbins
from .auth import GwsAuthenticator, HttpSessions, SessionStore, UserDirectory, auth_middleware, peer_address
from .conversation import Conversations, ReferenceIds
from .demo import install_demo
from .gws import agent, chats, interactions, media, openapi, smssessions, workbins_api
from .gws.envelope import Handler, envelope_middleware, label_operation
from .huawei.agentgateway import MIRROR_CHANNEL, AgentGateway
from .huawei.agentgateway import PREFIX as GATEWAY_PREFIX
from .memory_store import MemoryStateStore
from .model import InteractionLimits
from .outbox import Notice
from .routing import ROUTED_CHANNELS, Routing
from .state_metrics import state_store_collector
from .store import DocumentStore, StateStore

if TYPE_CHECKING:  # the cluster modules need the optional redis package: imported only when clustered
    from .cluster import ClusterNode, ClusterOptions

log = logging.getLogger("channels")

API_PREFIX = "/api/v2"
NOTIFICATIONS = "/api/v2/notifications"  # where GWS clients find the CometD endpoint
MEDIA_PREFIX = "/api/v2/media"  # the media gateway's own bearer-token API
STATE_DB = "cometd-broker-state.db"  # what `cometd-broker serve` persists to unless told otherwise
PRUNE_PERIOD_MIN, PRUNE_PERIOD_MAX = 0.05, 60.0  # seconds between sweeps for ended interactions: retention/4


@dataclass
class ContactCenterConfig:
    users_file: str | None = None
    csrf: bool = True
    media_token: str | None = None
    base_url: str = "http://127.0.0.1:8080"
    secure_cookies: bool = False  # the broker's port speaks TLS: the session cookie is Secure on every reply
    offer_timeout: float = 30.0
    queues: list[str] = field(default_factory=lambda: ["default"])
    gateway_poll_wait: float = 10.0  # Huawei: an idle event poll is answered after 10 s
    # Interactions an agent holds at once on a channel (offered or accepted): the default for every
    # routed channel, and per-channel overrides (`--capacity 2,chat=3`).
    capacity: int = 1
    channel_capacity: dict[str, int] = field(default_factory=dict)
    # ":memory:" keeps nothing: code that builds a config (tests, embedding) never writes files unasked.
    # `cometd-broker serve` defaults to the file STATE_DB instead (--state-db).
    state_db: str = ":memory:"
    # Seconds an interaction that is over (customer gone, every agent done, in no workbin or queue) stays
    # readable before it is forgotten; 0 keeps every interaction forever (memory and state grow with them).
    ended_retention: float = 86400.0
    interaction_limits: InteractionLimits = field(default_factory=InteractionLimits)
    # GET /api/v2/interactions (every active interaction) for admins and supervisors only; by default agents
    # may list too, as GWS's Interactions API page says, and see the ones they take no part in as summaries.
    interactions_list_supervisors_only: bool = False


@dataclass
class ContactCenter:
    """Everything the REST API shares; owned by the aiohttp app."""

    users: UserDirectory
    sessions: SessionStore
    routing: Routing
    conversations: Conversations
    agent_api: agent.AgentApi
    gateway: AgentGateway
    workbins: workbins.Workbins
    store: DocumentStore


def scoped(middleware: Callable[..., Any], prefix: str, exempt: tuple[str, ...]) -> Callable[..., Any]:
    """Apply `middleware` only under `prefix`, never under `exempt` (the Bayeux endpoint keeps its
    own error format, the media gateway its own authentication)."""

    @web.middleware
    async def only_api(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith(prefix) and not any(path == e or path.startswith(e + "/") for e in exempt):
            return await middleware(request, handler)
        return await handler(request)

    return only_api


def allow_cross_origin_api(app: web.Application) -> None:
    """The REST APIs are called with the session cookie, as the notifications mount is: the same Origin
    check, and CORS for `--allowed-origins` (a desktop embedded in a CRM served from another origin)."""
    allow_cross_origin(app, API_PREFIX)
    allow_cross_origin(app, GATEWAY_PREFIX)


def install_contact_center(app: web.Application, broker: Broker, config: ContactCenterConfig,
                           users: UserDirectory | None = None) -> ContactCenter:
    """Add the REST API, its middlewares and the /api/v2/notifications mount to a broker app."""
    users = users if users is not None else (
        UserDirectory.load(config.users_file) if config.users_file else UserDirectory())
    sessions = HttpSessions()
    # The desktop's CometD handshake is authenticated by the same login as its REST calls.
    broker.authenticator = ChainedAuthenticator(GwsAuthenticator(users, sessions, broker.config.jwt_verifier),
                                                broker.authenticator)
    add_mount(app, NOTIFICATIONS)
    allow_cross_origin_api(app)
    return install_engine(app, broker, config, users, sessions, open_state_store(config.state_db))


def open_state_store(path: str) -> DocumentStore:
    """The store of `--state-db PATH`: SQLite through its writer thread, or for ":memory:" a dict, which
    keeps as much (nothing across restarts) without a thread hand-off per operation."""
    return MemoryStateStore() if path == ":memory:" else StateStore(path)


def install_engine(app: web.Application, broker: Broker, config: ContactCenterConfig, users: UserDirectory,
                   sessions: SessionStore, store: DocumentStore,
                   inner_middlewares: tuple[Middleware, ...] = (), *, keep_readiness: bool = False,
                   client_address: Callable[[web.Request], str | None] = peer_address) -> ContactCenter:
    """The engine (state loaded from `store`) and its REST routes on `app`, closed with the app.

    `inner_middlewares` run inside the envelope, before authentication (a cluster maps its store's errors).
    `keep_readiness`: agents' contact-center sessions and Ready states are kept in `store` too (a cluster,
    whose HTTP sessions outlive the leader: see gws/agent.py).
    `client_address`: the address a failed login is counted against (a cluster's leader: the client's,
    from the header its own forwarding adds)."""

    async def publish(user_id: str, channel: str, data: dict[str, Any]) -> None:
        await broker.publish_to_user(user_id, channel, data)

    async def publish_many(notices: Sequence[Notice]) -> list[BaseException | None]:
        return [result if isinstance(result, EngineUnavailable) else None
                for result in await broker.publish_to_users(notices)]

    routing = Routing(publish, queues=config.queues, offer_timeout=config.offer_timeout,
                      capacity=config.capacity, channel_capacity=config.channel_capacity)
    reference_ids = ReferenceIds()  # shared: a referenceId is unique across every API (and persisted)
    # The engine loads first: workbins refer to its interactions.
    conversations = Conversations(publish, routing, users, base_url=config.base_url, reference_ids=reference_ids,
                                  store=store, limits=config.interaction_limits, publish_many=publish_many)
    conversations.operations.on_operation = label_operation  # the metrics name the operation the engine ran
    bins = workbins.Workbins(conversations, publish, reference_ids=reference_ids)

    async def mirror(user_id: str, event: dict[str, Any]) -> None:
        await broker.publish_to_user(user_id, MIRROR_CHANNEL, event)

    gateway = AgentGateway(users, poll_wait=config.gateway_poll_wait, mirror=mirror, store=store,
                           login_throttle=broker.login_throttle, client_address=client_address)
    agent_api = agent.AgentApi(routing, sessions, config.base_url, store=store if keep_readiness else None,
                               users=users)
    center = ContactCenter(users, sessions, routing, conversations, agent_api, gateway, bins, store)

    # The OpenAPI document is public: a client reads it before it can log in.
    exempt = (NOTIFICATIONS, MEDIA_PREFIX, openapi.OPENAPI_PATH)
    app.middlewares.append(scoped(envelope_middleware, API_PREFIX, (NOTIFICATIONS,)))
    app.middlewares.extend(inner_middlewares)
    app.middlewares.append(auth_middleware(users, sessions, csrf=config.csrf, prefixes=(API_PREFIX,),
                                           exempt=exempt, jwt=broker.config.jwt_verifier,
                                           throttle=broker.login_throttle, client_address=client_address,
                                           secure_cookie=config.secure_cookies))
    agent.add_routes(app, center.agent_api)
    smssessions.add_routes(app, conversations)
    chats.add_routes(app, conversations)
    interactions.add_routes(app, conversations, bins, agents_see_all=not config.interactions_list_supervisors_only)
    workbins_api.add_routes(app, bins)
    if config.media_token:
        media.add_routes(app, conversations, config.media_token)
    gateway.add_routes(app)  # the Huawei agent gateway: its own Guid authentication
    openapi.add_routes(app, csrf=config.csrf, media=bool(config.media_token))

    async def housekeeping(_: web.Application) -> AsyncIterator[None]:
        """While the app runs: the first engine run, then the pruning sweeps (a cleanup context ends before
        the on_cleanup below closes the store)."""
        try:  # writes what restoring changed (offers re-routed); offers what waits to agents restored Ready
            await conversations.save()
        except Exception as exc:  # the next run does it instead (a store outage, a lost lease)
            log.warning("contact center: the first engine run after restoring the state failed: %s", exc)
        pruning = None
        if config.ended_retention > 0:
            period = min(PRUNE_PERIOD_MAX, max(PRUNE_PERIOD_MIN, config.ended_retention / 4))
            pruning = asyncio.get_running_loop().create_task(
                conversations.prune_forever(config.ended_retention, period), name="contact-center-pruning")
        yield
        await cancel_and_wait(pruning)

    async def close(_: web.Application) -> None:
        await conversations.close()
        await routing.close()
        await store.close()  # last: every write queued above is committed first
        broker.remove_reaper(store.reap)

    broker.add_reaper(store.reap)  # a stored write's notifications go out within the loop's turn

    app.cleanup_ctx.append(housekeeping)
    app.on_cleanup.append(close)
    if METRICS in app:  # a process's own app (a cluster's engine app has no page of its own)
        app[METRICS].add_collector(state_store_collector(store))
    app[CENTER] = center
    return center


def install_clustered_contact_center(app: web.Application, broker: Broker, config: ContactCenterConfig,
                                     users: UserDirectory, options: ClusterOptions) -> ClusterNode:
    """Every process of a cluster: shared HTTP sessions, the notifications mount, forwarding of the REST
    API to the leader, and a campaign for the lease; the process that wins runs the engine (cluster.py)."""
    from cometd_broker.cluster.private_port import private_port

    from .cluster import ClusterAuthenticator, ClusterNode, forwarded_client, store_errors
    from .redis_sessions import RedisHttpSessions
    from .redis_store import RedisStateStore

    sessions = RedisHttpSessions(options.redis_url, prefix=options.prefix, timeout=options.redis_timeout)
    broker.authenticator = ChainedAuthenticator(ClusterAuthenticator(users, sessions, broker.config.jwt_verifier),
                                                broker.authenticator)
    add_mount(app, NOTIFICATIONS)
    allow_cross_origin_api(app)

    async def engine_app(lease: str) -> web.Application:
        engine = web.Application(client_max_size=broker.config.max_message_size + 1024)  # as the public app
        store = RedisStateStore(options.redis_url, prefix=options.prefix, lease_key=options.lease_key,
                                lease_value=lease, timeout=options.redis_timeout)
        try:
            await store.open()  # the state, read without blocking the loop; the engine restores from it
            install_engine(engine, broker, config, users, sessions, store,
                           inner_middlewares=(store_errors(node, API_PREFIX),), keep_readiness=True,
                           client_address=forwarded_client)
        except BaseException:
            await store.close()
            raise
        return engine

    node = ClusterNode(options, engine_app, private_port(app, options.host))  # the session router's, same host
    # Here only what cannot be forwarded (a body over the size limit) needs the envelope.
    app.middlewares.append(scoped(envelope_middleware, API_PREFIX, (NOTIFICATIONS,)))
    app.middlewares.append(node.middleware((API_PREFIX, GATEWAY_PREFIX), (NOTIFICATIONS,)))

    async def close_sessions(_: web.Application) -> None:
        await sessions.close()

    app.on_startup.append(node.start)
    app.on_shutdown.append(node.stop)  # while the broker still runs: the engine's last notifications go out
    app.on_cleanup.append(close_sessions)
    app[CLUSTER] = node
    return node


CENTER = web.AppKey("contact_center", ContactCenter)
CLUSTER = web.AppKey("contact_center_cluster")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("COMETD_BROKER_" + name, default)


def parse_capacity(text: str) -> tuple[int, dict[str, int]]:
    """`--capacity`: `N` for every channel, `channel=N` for one, comma-separated (`2,chat=3`);
    returns the default and the per-channel overrides."""
    default, per_channel = 1, {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sep, number = entry.rpartition("=")
        name = name.strip()
        try:
            value = int(number)
        except ValueError:
            value = -1
        if value < 0 or (sep and not name):
            raise ValueError(f"capacity entry {entry!r} must be N or CHANNEL=N with N >= 0 (e.g. 2,chat=3)")
        if not sep:
            default = value
        elif name not in ROUTED_CHANNELS:
            raise ValueError(f"capacity names unknown channel {name!r} (known: {', '.join(ROUTED_CHANNELS)})")
        else:
            per_channel[name] = value
    return default, per_channel


class ContactCenterPlugin:
    """The `cometd_broker.apps` entry point: options, the `users` command and installation."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("contact center (GWS v2 agent API)")
        group.add_argument("--users-file", default=_env("USERS_FILE"),
                           help="JSON file of agents and supervisors (see `cometd-broker users add`); "
                                "env COMETD_BROKER_USERS_FILE; default: none, nobody can log in")
        group.add_argument("--no-csrf", dest="csrf", action="store_false",
                           default=_env("CSRF", "true").lower() not in ("0", "false", "no", "off"),
                           help="do not require the X-CSRF-TOKEN header on POST/PUT/DELETE "
                                "(env COMETD_BROKER_CSRF=false); default: required")
        group.add_argument("--media-token", default=_env("MEDIA_TOKEN"),
                           help="bearer token of the media gateway API under /api/v2/media "
                                "(env COMETD_BROKER_MEDIA_TOKEN); default: none, the API is off")
        group.add_argument("--base-url", default=_env("BASE_URL"),
                           help="external URL used in resource uris (env COMETD_BROKER_BASE_URL); "
                                "default: http://HOST:PORT (https:// with --tls-cert)")
        group.add_argument("--offer-timeout", type=float, default=float(_env("OFFER_TIMEOUT", "30")),
                           help="seconds an offered interaction waits for Accept/Reject before the next "
                                "agent (env COMETD_BROKER_OFFER_TIMEOUT); default: 30")
        group.add_argument("--ended-retention", type=float, default=float(_env("ENDED_RETENTION", "86400")),
                           metavar="SECONDS",
                           help="seconds an interaction that is over (customer gone, every agent done, in no "
                                "workbin or queue) stays readable (GET, transcript) before it is forgotten, in "
                                "memory and in the state store; 0 keeps them all forever "
                                "(env COMETD_BROKER_ENDED_RETENTION); default: 86400 (a day)")
        defaults = InteractionLimits()
        for flag, env, default, what in (
            ("--message-max-chars", "MESSAGE_MAX_CHARS", defaults.max_text,
             "characters of one message's text an agent or a customer may send; a longer one is refused with "
             "statusCode 10"),
            ("--interaction-max-messages", "INTERACTION_MAX_MESSAGES", defaults.max_messages,
             "messages one interaction's transcript holds at most, typing notifications included; past it "
             "sending is refused with statusCode 2 (leaving and completing always work)"),
            ("--user-data-max-bytes", "USER_DATA_MAX_BYTES", defaults.max_user_data,
             "bytes of one interaction's userData as JSON; a change that would make it larger (AttachUserData, "
             "UpdateUserData, SetDisposition) is refused with statusCode 10"),
        ):
            group.add_argument(flag, type=int, default=int(_env(env, str(default))), metavar="N",
                               help=f"{what} (env COMETD_BROKER_{env}); default: {default}")
        group.add_argument("--interactions-list-supervisors-only", action="store_true",
                           default=_env("INTERACTIONS_LIST_SUPERVISORS_ONLY", "false").lower()
                           in ("1", "true", "yes", "on"),
                           help="only admins and supervisors may list every active interaction "
                                "(GET /api/v2/interactions); agents then read only their own "
                                "(env COMETD_BROKER_INTERACTIONS_LIST_SUPERVISORS_ONLY=true); default: agents "
                                "may list too, seeing the interactions they are not in as summaries "
                                "(id, mediaType, state, uri)")
        group.add_argument("--capacity", default=_env("CAPACITY", "1"), metavar="N,CHANNEL=N",
                           help="interactions one agent holds at once per channel (offered or accepted; the "
                                "next waits Queued): N for every channel, CHANNEL=N for one, comma-separated, "
                                f"channels {', '.join(ROUTED_CHANNELS)} (env COMETD_BROKER_CAPACITY); "
                                "default: 1")
        group.add_argument("--queues", default=_env("QUEUES", "default"),
                           help="comma-separated queue names (env COMETD_BROKER_QUEUES); default: default")
        group.add_argument("--demo", action="store_true",
                           default=_env("DEMO", "false").lower() in ("1", "true", "yes", "on"),
                           help="add demo agents (agent1-3, supervisor; passwords printed at start) and "
                                "simulated SMS and chat customers (env COMETD_BROKER_DEMO=true)")
        group.add_argument("--demo-interval", type=float, default=float(_env("DEMO_INTERVAL", "8")),
                           help="seconds between simulated customers in --demo (env COMETD_BROKER_DEMO_INTERVAL); "
                                "default: 8")
        group.add_argument("--state-db", default=_env("STATE_DB", STATE_DB), metavar="PATH",
                           help="SQLite file where interactions, queues, workbins, conferences and gateway "
                                "sign-ins are kept across restarts; ':memory:' keeps nothing "
                                "(env COMETD_BROKER_STATE_DB); "
                                f"default: {STATE_DB} in the working directory (only the command line "
                                "defaults to a file: ContactCenterConfig in code defaults to ':memory:'); "
                                "with --redis the state is kept in Redis instead")
        group.add_argument("--cluster-lease-ttl", type=float, default=float(_env("CLUSTER_LEASE_TTL", "5")),
                           metavar="SECONDS",
                           help="with --redis: seconds of the contact-center leader lease; a dead leader is "
                                "replaced within about this (env COMETD_BROKER_CLUSTER_LEASE_TTL); default: 5")
        group.add_argument("--cluster-host", default=_env("CLUSTER_HOST", "127.0.0.1"),
                           help="with --redis: address this process serves the contact-center engine on while it "
                                "leads, and that the others forward REST calls to; set it to a reachable address "
                                "when processes run on several machines (env COMETD_BROKER_CLUSTER_HOST); "
                                "default: 127.0.0.1")
        group.add_argument("--desktop-dir", default=_env("DESKTOP_DIR", desktop.default_desktop_dir() or ""),
                           metavar="PATH",
                           help="folder of the agent desktop page served at / (static/, and the CometD client in "
                                "vendor/cometd, put there by the package build, or node_modules/cometd from "
                                "`npm ci --prefix channels/desktop`); '' serves no page "
                                "(env COMETD_BROKER_DESKTOP_DIR); default: the channels/desktop package of this "
                                "installation")

    def add_commands(self, subparsers: Any) -> None:
        users_cli.add_subcommand(subparsers)

    def install(self, app: web.Application, broker: Broker, args: argparse.Namespace) -> None:
        if args.offer_timeout <= 0:
            raise ValueError("offer-timeout must be > 0")
        if args.demo_interval <= 0:
            raise ValueError("demo-interval must be > 0")
        if not args.ended_retention >= 0:
            raise ValueError("ended-retention must be >= 0 seconds (0 keeps ended interactions forever)")
        if args.media_token is not None and not args.media_token.strip():
            # `--media-token "$TOKEN"` with the variable unset: an API silently off looks like a routing bug.
            raise ValueError("media-token is empty (flag, COMETD_BROKER_MEDIA_TOKEN or config file); to turn the "
                             "media API off, leave media-token unset")
        try:
            limits = InteractionLimits(args.message_max_chars, args.interaction_max_messages, args.user_data_max_bytes)
        except ValueError:
            raise ValueError("message-max-chars, interaction-max-messages and user-data-max-bytes must be "
                             ">= 1") from None
        capacity, channel_capacity = parse_capacity(args.capacity)
        if not (args.users_file or args.demo or args.media_token):
            # Nobody could log in: serve the broker alone, without the API's middlewares on every request.
            log.info("contact-center API off: give --users-file (or --demo) to serve it")
            return
        clustered = bool(broker.config.redis)
        if clustered and args.demo:
            # Its simulated customers and fresh demo passwords would differ in every process.
            raise ValueError("--demo runs in one process: it cannot be used with --redis")
        queues = [q.strip() for q in args.queues.split(",") if q.strip()]
        if not queues:
            raise ValueError("queues must name at least one queue")
        config = ContactCenterConfig(
            users_file=args.users_file, csrf=args.csrf, media_token=args.media_token,
            base_url=args.base_url or f"{broker.config.scheme}://{broker.config.host}:{broker.config.port}",
            secure_cookies=broker.config.tls,
            offer_timeout=args.offer_timeout, queues=queues, state_db=args.state_db,
            ended_retention=args.ended_retention, capacity=capacity, channel_capacity=channel_capacity,
            interactions_list_supervisors_only=args.interactions_list_supervisors_only,
            interaction_limits=limits)
        if args.desktop_dir:
            desktop.add_routes(app, args.desktop_dir, broker.config.mount)  # DesktopDirError names the option
        else:
            desktop.log_not_served()
        if clustered:
            self._install_clustered(app, broker, args, config)
            return
        center = install_contact_center(app, broker, config)
        if args.demo:
            for user, password in install_demo(app, center, interval=args.demo_interval):
                print(f"demo user {user} password {password}", flush=True)
        log.info("contact center: %d user(s), queues %s, capacity %s, CSRF %s, media gateway API %s, "
                 "state in %s, also at %s", len(center.users), ", ".join(queues), _capacity_text(config),
                 "on" if config.csrf else "off", "on" if config.media_token else "off",
                 describe_state_db(config.state_db), NOTIFICATIONS)

    def describe_storage(self, args: argparse.Namespace, broker_config: Any) -> str | None:
        """For the server's start-up line of where data is kept (None when the API is off)."""
        if not (args.users_file or args.demo or args.media_token):
            return None
        if broker_config.redis:
            return "contact-center state in Redis (the cluster's)"
        return f"contact-center state {describe_state_db(args.state_db)}"

    def _install_clustered(self, app: web.Application, broker: Broker, args: argparse.Namespace,
                           config: ContactCenterConfig) -> None:
        from .cluster import ClusterOptions

        options = ClusterOptions(broker.config.redis, broker.config.redis_namespace,
                                 lease_ttl=args.cluster_lease_ttl, host=args.cluster_host,
                                 read_timeout=config.gateway_poll_wait + 20.0)
        users = UserDirectory.load(config.users_file) if config.users_file else UserDirectory()
        install_clustered_contact_center(app, broker, config, users, options)
        log.info("contact center (clustered on %s): %d user(s), queues %s, CSRF %s, media gateway API %s; "
                 "the leader runs the engine with its state in Redis (lease ttl %.1f s); this process serves "
                 "it on %s while it leads; --state-db is not used; capacity %s", broker.config.redis, len(users),
                 ", ".join(config.queues), "on" if config.csrf else "off", "on" if config.media_token else "off",
                 options.lease_ttl, options.host, _capacity_text(config))


def describe_state_db(path: str) -> str:
    """The state store as a start-up line names it: an absolute path, or in memory."""
    return "in memory (lost on exit)" if path == ":memory:" else os.path.abspath(path)


def _capacity_text(config: ContactCenterConfig) -> str:
    return ", ".join(f"{c}={config.channel_capacity.get(c, config.capacity)}" for c in ROUTED_CHANNELS)


plugin = ContactCenterPlugin()
