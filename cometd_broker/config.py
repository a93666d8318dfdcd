"""Every broker option in one table: name, type, default and why, read from flags, environment and file.

Precedence: command-line flag, then the `COMETD_BROKER_<NAME>` environment
variable, then the `[broker]` table of the TOML configuration file (configfile.py),
then the default below.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .channel import Pattern, channel_error
from .eventlog import is_redis_url
from .http.origins import parse_allowed
from .jwt_auth import JwtSettings, JwtVerifier, load_verifier
from .logs import LOG_FORMATS, LOG_LEVELS
from .redis_names import DEFAULT_PREFIX, prefix_error, redis_namespace
from .security import ChannelRule
from .session import QUEUE_POLICIES
from .workers import STOP_TIMEOUT

ALL_TRANSPORTS = ("websocket", "long-polling", "callback-polling")
ENV_PREFIX = "COMETD_BROKER_"
MIN_ADMIN_TOKEN = 16
HTTP_SERVERS = ("lean", "aiohttp")


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


def _secret(text: str) -> dict[str, object]:
    """An option `cometd-broker config` masks (passwords, tokens)."""
    return {"doc": text, "secret": True}


@dataclass
class BrokerConfig:
    host: str = field(default="127.0.0.1", metadata=_doc("interface to listen on"))
    port: int = field(default=8080, metadata=_doc("TCP port"))
    mount: str = field(default="/cometd", metadata=_doc(
        "URL path of the Bayeux endpoint; any path below it is accepted (/cometd/connect ...)"))
    timeout: int = field(default=25000, metadata=_doc(
        "ms a /meta/connect is held when there is nothing to deliver (below common 30 s proxy limits)"))
    interval: int = field(default=0, metadata=_doc("ms a client waits between connects"))
    max_interval: int = field(default=10000, metadata=_doc(
        "ms the server waits for the next /meta/connect before the session expires"))
    transports: str = field(default=",".join(ALL_TRANSPORTS), metadata=_doc(
        "transports offered, in order of preference"))
    max_sessions_per_browser: int = field(default=1, metadata=_doc(
        "parked long-polls per BAYEUX_BROWSER cookie; extra tabs are told multiple-clients"))
    multi_session_interval: int = field(default=2000, metadata=_doc(
        "ms polling interval advised to extra tabs of one browser"))
    browser_cookie: str = field(default="BAYEUX_BROWSER", metadata=_doc(
        "name of the HttpOnly cookie that identifies a browser"))
    duplicate_connect_status: int = field(default=500, metadata=_doc(
        "HTTP status of a /meta/connect superseded by a newer one of the same session (>= 400)"))
    max_queue: int = field(default=10000, metadata=_doc("events queued per session before the queue is full"))
    max_queue_bytes: int = field(default=4 * 1024 * 1024, metadata=_doc(
        "bytes queued per session before the queue is full"))
    queue_full: str = field(default="disconnect", metadata=_doc(
        "when a session's queue is full: disconnect (the slow session must re-handshake) or drop-oldest"))
    max_message_size: int = field(default=256 * 1024, metadata=_doc(
        "largest inbound HTTP body or websocket message (all its frames), in bytes"))
    request_timeout: float = field(default=60.0, metadata=_doc(
        "seconds a client has to send a whole HTTP request (head and body) once it started; a slower one is "
        "answered 408 and closed (nginx's client_header_timeout and client_body_timeout are 60 s)"))
    max_batch: int = field(default=1000, metadata=_doc(
        "messages per HTTP request or websocket frame; a larger batch is refused whole (every message earns a "
        "reply, so a body of tiny messages would earn a reply many times its size)"))
    max_subscriptions: int = field(default=1000, metadata=_doc(
        "channels and patterns one session may subscribe to (an agent desktop needs tens); a subscribe past it "
        "is refused whole"))
    allow_anonymous: bool = field(default=False, metadata=_doc(
        "let clients handshake without credentials (development); they cannot use per-user channels"))
    users: str = field(default="", metadata=_secret(
        "passwords as user:password,user:password (or @path: a file with one user:password per line)"))
    tokens: str = field(default="", metadata=_secret(
        "bearer tokens as token=user,token=user (or @path: a file with one token=user per line)"))
    roles: str = field(default="", metadata=_doc(
        "roles of configured users for role:NAME channel rules, as user=role+role,user=role"))
    personal_prefix: str = field(default="/v2/me/**", metadata=_doc(
        "channels resolved per authenticated user: each user sees only their own events"))
    channel_rules: str = field(default="", metadata=_doc(
        "extra channel rules separated by ';', each 'PATTERN subscribe=ACCESS publish=ACCESS' with "
        "ACCESS one of anyone, authenticated, nobody, role:NAME; first containing rule wins"))
    sweep_period: float = field(default=1.0, metadata=_doc("seconds between expiry sweeps"))
    event_log: str = field(default="memory:", metadata={**_doc(
        "where every published event is recorded for replay: a SQLite file path, or memory: "
        "(lost on restart)"), "cli_default": "cometd-broker-events.db"})
    retention_age: float = field(default=86400.0, metadata=_doc(
        "seconds an event stays in the event log (replay window)"))
    retention_count: int = field(default=100000, metadata=_doc("events kept per stream in the event log"))
    retention_period: float = field(default=60.0, metadata=_doc("seconds between retention sweeps"))
    wal_checkpoint_period: float = field(default=0.1, metadata=_doc(
        "with a SQLite event log: seconds at most between WAL checkpoints while events come in; kill -9 "
        "loses nothing, an OS crash or power loss can lose what was committed since the last one"))
    wal_limit_mb: int = field(default=64, metadata=_doc(
        "with a SQLite event log: MiB of WAL past which a checkpoint holds the writer back for a last short "
        "copy, so that the WAL starts over even under a load that never pauses"))
    replay_page: int = field(default=500, metadata=_doc(
        "events read from the log per catch-up step; a session's queue is drained before the next"))
    admin_token: str = field(default="", metadata=_secret(
        "bearer token of the admin HTTP API under /admin (sessions, events, publish); empty: no admin API"))
    metrics_token: str = field(default="", metadata=_doc(
        "bearer token (>= 16 characters) Prometheus must send to read /metrics; empty: /metrics is open "
        "(/health and /ready always are)"))
    redis: str = field(default="", metadata=_doc(
        "Redis URL of a cluster (redis://host:6379/0): broker processes share fan-out through Redis pub/sub "
        "and the event log is kept there in Redis Streams, so a client can resume on any process; "
        "empty: a single process"))
    forward_host: str = field(default="127.0.0.1", metadata=_doc(
        "with redis: address this process listens on (an ephemeral port, published in Redis) for the "
        "long-polls other processes forward to it because it owns their session; loopback suits the workers "
        "of one machine; empty: no forwarding (a client that reaches another process gets 402 and "
        "re-handshakes there)"))
    workers: int = field(default=1, metadata=_doc(
        "processes serving the same port (SO_REUSEPORT), supervised by `serve`; more than 1 needs redis"))
    stop_timeout: float = field(default=STOP_TIMEOUT, metadata=_doc(
        "with workers > 1: seconds the supervisor waits for its workers to stop after SIGTERM before it "
        "SIGKILLs the rest: more than the 5 s a worker gives in-flight requests, less than the grace of "
        "whatever stops the supervisor (docker stop: 10 s)"))
    redis_prefix: str = field(default=DEFAULT_PREFIX, metadata=_doc(
        "with redis: the start of every Redis key and pub/sub channel name of this deployment, followed by "
        "the URL's database (cometd:db0:...), so deployments on one Redis server (other databases, or other "
        "prefixes) never see each other's events; letters, digits, _ - ."))
    http_server: str = field(default="lean", metadata=_doc(
        "lean: `serve` answers plain long-polling POSTs on a lean HTTP/1.1 path (several times less CPU per "
        "request) and hands every other request to aiohttp; aiohttp: aiohttp serves every request"))
    log_level: str = field(default="INFO", metadata=_doc("least severe log level written: " + ", ".join(LOG_LEVELS)))
    log_format: str = field(default="text", metadata=_doc(
        "log lines as text, or json (one object per line: ts, level, logger, msg, clientId, user)"))
    jwt_secret: str = field(default="", metadata=_secret(
        "HMAC secret (at least 32 bytes) that verifies Bearer JWTs signed with HS256/384/512, or @path: a file "
        "holding it; empty: no JWTs unless jwt_public_key or jwks_file is set (one of the three)"))
    jwt_public_key: str = field(default="", metadata=_doc(
        "PEM file of the public key (or certificate) that verifies Bearer JWTs: RSA (RS256, PS256 ...), "
        "EC P-256/384/521 (ES256/384/512) or Ed25519 (EdDSA)"))
    jwks_file: str = field(default="", metadata=_doc(
        "JWKS file (RFC 7517) of the public keys that verify Bearer JWTs, chosen by the token's kid; read at "
        "start"))
    jwt_algorithms: str = field(default="", metadata=_doc(
        "comma-separated JWT algorithms accepted, of the key's kind; empty: HS256 for a secret, RS256 for an "
        "RSA key, the curve's ES* for an EC key, a JWK's own alg; the token's alg header never chooses"))
    jwt_leeway: float = field(default=30.0, metadata=_doc(
        "seconds of clock skew allowed when checking a JWT's exp, nbf and iat"))
    jwt_audience: str = field(default="", metadata=_doc(
        "comma-separated audiences: a JWT's aud must name one; empty: a JWT carrying aud is refused (RFC 7519)"))
    jwt_issuer: str = field(default="", metadata=_doc("the iss a JWT must carry; empty: not checked"))
    jwt_roles_claim: str = field(default="", metadata=_doc(
        "claim holding the user's roles for role:NAME rules, a list or a space-separated string; a dotted "
        "path reads into objects (realm_access.roles); empty: roles come from the roles option only"))
    allowed_origins: str = field(default="", metadata=_doc(
        "web origins besides the broker's own (Origin host:port = Host) whose pages may use it from a browser, "
        "comma-separated (https://crm.example.com), * for any: a websocket upgrade or request under the mount "
        "or the REST API from another origin is refused 403; listed ones get CORS with credentials"))
    login_max_failures: int = field(default=20, metadata=_doc(
        "failed logins (handshake, REST or gateway sign-in) of one user, or from one address, within "
        "login_window before that user or address is locked out for login_window seconds, the right password included "
        "(HTTP 429, 429::too_many_failed_logins); 0: no lockout"))
    login_window: float = field(default=60.0, metadata=_doc(
        "seconds of the sliding window failed logins are counted in, and of the lockout"))
    login_tracked_keys: int = field(default=10000, metadata=_doc(
        "users and addresses whose failed logins are remembered; past it the one idle the longest is "
        "forgotten, so a spray of names or addresses cannot grow memory"))
    tls_cert: str = field(default="", metadata=_doc(
        "PEM file of the server certificate (its chain after it): `serve` speaks HTTPS and WSS on the port "
        "itself, TLS 1.2 or later; needs tls_key; empty: plain HTTP (TLS ends at a proxy, if any)"))
    tls_key: str = field(default="", metadata=_doc(
        "PEM file of tls_cert's private key, unencrypted (readable by the broker's user only)"))

    def validate(self) -> None:
        """Raise ValueError naming the first option that is out of range."""
        if not self.mount.startswith("/"):
            raise ValueError(f"mount must start with /, got {self.mount!r}")
        if self.http_server not in HTTP_SERVERS:
            raise ValueError(f"http_server must be one of {', '.join(HTTP_SERVERS)}, got {self.http_server!r}")
        for name in ("timeout", "interval", "max_interval", "multi_session_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("max_queue", "max_queue_bytes", "max_message_size", "max_batch", "max_subscriptions",
                     "max_sessions_per_browser"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.duplicate_connect_status < 400 or self.duplicate_connect_status > 599:
            raise ValueError("duplicate_connect_status must be an HTTP error status (400-599)")
        if self.queue_full not in QUEUE_POLICIES:
            raise ValueError(f"queue_full must be one of {', '.join(QUEUE_POLICIES)}")
        unknown = [t for t in self.transport_list if t not in ALL_TRANSPORTS]
        if unknown or not self.transport_list:
            raise ValueError(f"transports must be a non-empty subset of {', '.join(ALL_TRANSPORTS)}")
        if channel_error(self.personal_prefix) or Pattern.parse(self.personal_prefix).kind != "many":
            raise ValueError("personal_prefix must be a valid pattern ending in /**")
        self.rule_list  # parses and validates  # noqa: B018
        self.user_map  # noqa: B018
        self.token_map  # noqa: B018
        self.role_map  # noqa: B018
        if self.sweep_period <= 0:
            raise ValueError("sweep_period must be > 0")
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be > 0")
        for name in ("retention_age", "retention_period", "wal_checkpoint_period"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("retention_count", "replay_page", "wal_limit_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("admin_token", "metrics_token"):
            token = getattr(self, name)
            if token and (len(token) < MIN_ADMIN_TOKEN or token != token.strip()):
                # The admin API can publish to any user: a short token would be guessable.
                raise ValueError(f"{name} must be at least {MIN_ADMIN_TOKEN} characters without surrounding spaces")
        self._validate_cluster()
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        self.jwt_verifier  # reads the key files  # noqa: B018
        parse_allowed(self.allowed_origins)  # ValueError names the entry
        if self.login_max_failures < 0:
            raise ValueError("login_max_failures must be >= 0 (0: no lockout)")
        if not self.login_window > 0:
            raise ValueError("login_window must be > 0")
        if self.login_tracked_keys < 1:
            raise ValueError("login_tracked_keys must be >= 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: give both (HTTPS on the port) or neither")

    def _validate_cluster(self) -> None:
        if self.redis and not is_redis_url(self.redis):
            raise ValueError(f"redis must be a redis://, rediss:// or unix:// URL, got {self.redis!r}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if not self.stop_timeout > 0:
            raise ValueError("stop_timeout must be > 0")
        if self.workers > 1 and not self.redis:
            # Each process has its own sessions: only a shared engine carries events between them.
            raise ValueError("workers > 1 needs redis (--redis URL): without it a client's events would "
                             "reach only the process it happens to be connected to")
        if self.redis and is_redis_url(self.event_log) and self.event_log != self.redis:
            raise ValueError("with redis the event log is kept in that same Redis: event_log must be unset or "
                             f"{self.redis!r}, not {self.event_log!r}")
        problem = prefix_error(self.redis_prefix)
        if problem:
            raise ValueError(problem)

    @property
    def event_log_url(self) -> str:
        """Where the event log is: with redis always that Redis, because the Redis engine appends to it."""
        return self.redis or self.event_log

    @property
    def redis_namespace(self) -> str:
        """How every Redis key and channel of this deployment starts (redis_names.py): the prefix and the
        database of its Redis (the event log's, without redis)."""
        return redis_namespace(self.event_log_url, self.redis_prefix)


    @property
    def tls(self) -> bool:
        """Whether `serve` speaks TLS on its port (the files are read at start, see tls.py)."""
        return bool(self.tls_cert)

    @property
    def scheme(self) -> str:
        """Of the public port's URLs: https with TLS, else http."""
        return "https" if self.tls else "http"

    @property
    def transport_list(self) -> list[str]:
        return [t.strip() for t in self.transports.split(",") if t.strip()]

    @property
    def rule_list(self) -> list[ChannelRule]:
        return [ChannelRule.parse(text.strip()) for text in self.channel_rules.split(";") if text.strip()]

    @property
    def user_map(self) -> dict[str, str]:
        """user -> password."""
        return _pairs(self.users, ":", "users entry {!r} must be user:password")

    @property
    def token_map(self) -> dict[str, str]:
        """token -> user."""
        return _pairs(self.tokens, "=", "tokens entry {!r} must be token=user")


    @property
    def jwt_settings(self) -> JwtSettings:
        return JwtSettings(self.jwt_secret, self.jwt_public_key, self.jwks_file, self.jwt_algorithms,
                           self.jwt_leeway, self.jwt_audience, self.jwt_issuer, self.jwt_roles_claim)

    @property
    def jwt_verifier(self) -> JwtVerifier | None:
        """The verifier of Bearer JWTs (reads its key files), None when no JWT key is configured."""
        return load_verifier(self.jwt_settings)

    @property
    def role_map(self) -> dict[str, frozenset[str]]:
        result = {}
        for entry in (e.strip() for e in self.roles.split(",")):
            if not entry:
                continue
            user, sep, names = entry.partition("=")
            roles = frozenset(r.strip() for r in names.split("+") if r.strip())
            if not sep or not user.strip() or not roles:
                raise ValueError(f"roles entry {entry!r} must be user=role+role")
            result[user.strip()] = roles
        return result


def _pairs(text: str, separator: str, problem: str) -> dict[str, str]:
    """Parse `key<sep>value,key<sep>value`, or `@path` to a file of one pair per line (# comments)."""
    text = text.strip()
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as handle:
            entries = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    else:
        entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    result = {}
    for entry in entries:
        key, sep, value = entry.partition(separator)
        if not sep or not key or not value:
            raise ValueError(problem.format(entry))
        result[key] = value
    return result


def options() -> list[dataclasses.Field]:
    return list(dataclasses.fields(BrokerConfig))


def _convert(f: dataclasses.Field, text: str) -> object:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[f.type]
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{ENV_PREFIX}{f.name.upper()} must be true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{f.name.upper()} must be {kind.__name__}, got {text!r}") from None


def resolve(environ: Mapping[str, str], *, file: Mapping[str, object] | None = None,
            flags: Mapping[str, object] | None = None, cli: bool = False) -> tuple[BrokerConfig, dict[str, str]]:
    """The configuration and where each value came from ("default", "file", "env" or "flag").

    Defaults, overridden by the file's `[broker]` values (already type-checked, see configfile.py),
    overridden by environment variables, overridden by flags (None: not given).
    `cli`: use the command line's defaults where they differ (the event log is a file when served
    from the command line, in memory for an embedded Broker, so tests never write files).
    """
    values: dict[str, object] = {}
    sources = {f.name: "default" for f in options()}
    if cli:
        values.update({f.name: f.metadata["cli_default"] for f in options() if "cli_default" in f.metadata})
    for name, value in (file or {}).items():
        values[name], sources[name] = value, "file"
    for f in options():
        text = environ.get(ENV_PREFIX + f.name.upper())
        if text is not None:
            values[f.name], sources[f.name] = _convert(f, text), "env"
    for name, value in (flags or {}).items():
        if value is not None:
            values[name], sources[name] = value, "flag"
    _check_cluster_event_log(values, sources)
    config = BrokerConfig(**values)
    config.validate()
    return config, sources


def from_env(environ: Mapping[str, str], cli: bool = False, **overrides: object) -> BrokerConfig:
    """Defaults, overridden by environment variables, overridden by explicit values (flags)."""
    return resolve(environ, flags=overrides, cli=cli)[0]


def _check_cluster_event_log(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    """With redis the event log defaults to that Redis; another store named explicitly is refused,
    not silently ignored (it would look like replay works from it)."""
    redis = values.get("redis")
    explicit = values.get("event_log") if sources["event_log"] != "default" else None
    if redis and explicit and explicit != redis:
        raise ValueError(f"event_log {explicit!r} cannot be used with redis: a cluster keeps its event log in "
                         f"that Redis (leave event_log unset or set it to {redis!r})")


def load(*, file: Mapping[str, object] | None = None, **overrides: object) -> BrokerConfig:
    """The configuration of `cometd-broker serve`: command-line defaults, file, environment, flags."""
    return resolve(os.environ, file=file, flags=overrides, cli=True)[0]
