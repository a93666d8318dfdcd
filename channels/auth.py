"""Users, Basic login, the JSESSIONID session cookie and the CSRF token of the GWS v2 REST API.

GWS authenticates the first request with HTTP Basic, keeps an HTTP session behind the `JSESSIONID`
cookie, and (with CSRF protection on) hands out a per-session token on every GET that each
POST/PUT/DELETE must echo in `X-CSRF-TOKEN`. The CometD handshake accepts the same session cookie, so a
desktop logs in once over REST and then opens its notification channel.

When the broker verifies JWTs (cometd_broker/jwt_auth.py), `Authorization: Bearer <jwt>` is accepted too,
for the users of the users file only (`sub` is the user id; the file's roles apply): each request stands
alone, without an HTTP session, a cookie or a CSRF token (no browser sends that header on its own).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from cometd_broker.jwt_auth import JwtVerifier
from cometd_broker.login_throttle import LoginThrottle, retry_seconds
from cometd_broker.logs import bind_user
from cometd_broker.security import AuthenticationError, HandshakeRequest, Principal

from .gws.envelope import GwsError, Status, failure

ROLES = frozenset({"agent", "supervisor", "admin"})


_USER_ID = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_DIGITS = re.compile(r"[0-9]{1,6}")
AGENT_ID_RANGE = range(101, 60000)  # Huawei CC-Gateway workNo, 101..59999

# --- passwords -------------------------------------------------------------------------------------

_SCHEME = "pbkdf2_sha256"
_MAX_ITERATIONS = 10_000_000  # a hash file must not be able to stall a login for minutes


def hash_password(password: str, *, iterations: int = 200_000) -> str:
    """`pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>` with a fresh 128-bit salt."""
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1..{_MAX_ITERATIONS}, got {iterations}")
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{_SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, password_hash: str) -> bool:
    """True if `password` matches; False for a wrong password or a malformed hash."""
    parsed = _parse_hash(password_hash)
    if parsed is None:
        return False
    iterations, salt, expected = parsed
    actual = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return hmac.compare_digest(actual, expected)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _parse_hash(password_hash: str) -> tuple[int, bytes, bytes] | None:
    parts = password_hash.split("$") if isinstance(password_hash, str) else []
    if len(parts) != 4 or parts[0] != _SCHEME or not parts[1].isascii() or not parts[1].isdigit():
        return None
    iterations = int(parts[1])
    try:
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not 1 <= iterations <= _MAX_ITERATIONS or not salt or len(digest) != 32:
        return None
    return iterations, salt, digest


# Verified for unknown users so a login takes as long whether or not the user exists.
_DUMMY_HASH = f"{_SCHEME}$200000${_b64(b'unknown-user-pad')}${_b64(bytes(32))}"

# --- users -----------------------------------------------------------------------------------------


def _user_problem(user: User) -> str | None:
    if not isinstance(user.user_id, str) or not _USER_ID.fullmatch(user.user_id):
        return f"user id {user.user_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ @ -"
    if _parse_hash(user.password_hash) is None:
        return f"password hash of {user.user_id!r} is not a {_SCHEME}$<iterations>$<salt>$<hash> string"
    unknown = sorted((r for r in user.roles if r not in ROLES), key=str)
    if unknown:
        return f"unknown role {unknown[0]!r} (known: {', '.join(sorted(ROLES))})"
    if not isinstance(user.first_name, str) or not isinstance(user.last_name, str):
        return "first and last name must be strings"
    if user.agent_id is not None:
        return _agent_id_problem(user.agent_id)
    return None


def _agent_id_problem(agent_id: Any) -> str | None:
    # Canonical digits only, so "0101" and "101" cannot name two users or miss a lookup.
    text = agent_id if isinstance(agent_id, str) else ""
    if not _DIGITS.fullmatch(text) or str(int(text)) != text or int(text) not in AGENT_ID_RANGE:
        return f"agent id {agent_id!r} must be a whole number 101..59999 without leading zeros"
    return None


@dataclass(frozen=True)
class User:
    """One login of the REST API and the CometD endpoint. Validated on construction."""

    user_id: str
    password_hash: str
    roles: frozenset[str] = frozenset({"agent"})
    first_name: str = ""
    last_name: str = ""
    agent_id: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.roles, str):
            raise ValueError(f"roles must be a collection of role names, not the string {self.roles!r}")
        object.__setattr__(self, "roles", frozenset(self.roles))
        problem = _user_problem(self)
        if problem:
            raise ValueError(problem)

    @property
    def principal(self) -> Principal:
        return Principal(self.user_id, self.roles)


_JSON_FIELDS = {"userId": "user_id", "passwordHash": "password_hash", "roles": "roles",
                "firstName": "first_name", "lastName": "last_name", "agentId": "agent_id"}


def _user_from_json(entry: Any) -> User:
    if not isinstance(entry, dict):
        raise ValueError("must be an object")
    unknown = sorted(set(entry) - set(_JSON_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(_JSON_FIELDS)})")
    for required in ("userId", "passwordHash"):
        if not isinstance(entry.get(required), str):
            raise ValueError(f"{required!r} must be a string")
    roles = entry.get("roles", ["agent"])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ValueError("'roles' must be an array of strings")
    agent_id = entry.get("agentId")
    if isinstance(agent_id, int) and not isinstance(agent_id, bool):
        agent_id = str(agent_id)  # hand-written files often give the workNo as a number
    kwargs = {_JSON_FIELDS[k]: v for k, v in entry.items()}
    return User(**{**kwargs, "roles": frozenset(roles), "agent_id": agent_id})


def _user_to_json(user: User) -> dict[str, Any]:
    return {"userId": user.user_id, "passwordHash": user.password_hash, "roles": sorted(user.roles),
            "firstName": user.first_name, "lastName": user.last_name, "agentId": user.agent_id}


class UserDirectory:
    """The users who may log in, by login name and by Huawei agent id."""

    def __init__(self, users: Iterable[User] = ()) -> None:
        self._users: dict[str, User] = {}
        self._by_agent: dict[str, User] = {}
        for user in users:
            self._insert(user)

    @classmethod
    def load(cls, path: str | Path) -> UserDirectory:
        """Read `{"users": [...]}`; a ValueError names the file and the entry that is wrong."""
        path = Path(path)
        try:
            document = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(document, dict) or not isinstance(document.get("users"), list):
            raise ValueError(f'{path}: expected an object {{"users": [...]}}')
        directory = cls()
        for index, entry in enumerate(document["users"]):
            try:
                directory._insert(_user_from_json(entry))
            except ValueError as exc:
                raise ValueError(f"{path}: {_entry_name(index, entry)}: {exc}") from None
        return directory

    def save(self, path: str | Path) -> None:
        """Write atomically (a reader sees the old file or the new one), readable by the owner only."""
        document = {"users": [_user_to_json(u) for u in self._users.values()]}
        _write_private(Path(path), orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")

    def add(self, user_id: str, password: str, *, roles: Iterable[str] = ("agent",), first_name: str = "",
            last_name: str = "", agent_id: str | None = None) -> User:
        if not isinstance(password, str) or not password:
            raise ValueError("password must not be empty")
        if user_id in self._users:  # before hashing: a duplicate should fail fast
            raise ValueError(f"user {user_id!r} already exists")
        user = User(user_id, hash_password(password), frozenset(_role_list(roles)), first_name, last_name,
                    agent_id)
        self._insert(user)
        return user

    def get(self, user_id: str) -> User | None:
        return self._users.get(user_id)

    def by_agent_id(self, agent_id: str) -> User | None:
        return self._by_agent.get(agent_id)

    def authenticate(self, user_id: str, password: str) -> User | None:
        """The user if the password is right, else None; as slow for unknown users as for known ones."""
        user = self._users.get(user_id)
        matches = verify_password(password, user.password_hash if user else _DUMMY_HASH)
        return user if matches and user is not None else None

    def _insert(self, user: User) -> None:
        if user.user_id in self._users:
            raise ValueError(f"user {user.user_id!r} already exists")
        if user.agent_id is not None and user.agent_id in self._by_agent:
            owner = self._by_agent[user.agent_id].user_id
            raise ValueError(f"agent id {user.agent_id} already belongs to user {owner!r}")
        self._users[user.user_id] = user
        if user.agent_id is not None:
            self._by_agent[user.agent_id] = user

    def __iter__(self) -> Iterator[User]:
        return iter(list(self._users.values()))

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users


def _role_list(roles: Iterable[str]) -> list[str]:
    if isinstance(roles, str):
        raise ValueError(f"roles must be a collection of role names, not the string {roles!r}")
    return list(roles)


def _entry_name(index: int, entry: Any) -> str:
    user_id = entry.get("userId") if isinstance(entry, dict) else None
    return f"users[{index}] ({user_id!r})" if isinstance(user_id, str) else f"users[{index}]"


def _write_private(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# --- HTTP sessions ---------------------------------------------------------------------------------


@dataclass
class HttpSession:
    session_id: str
    user_id: str
    csrf_token: str
    created: float
    last_seen: float
    roles: frozenset[str] = field(default_factory=frozenset)  # the user's roles at login, for the principal


class SessionStore(Protocol):
    """Where HTTP sessions live: in this process (`HttpSessions`) or in Redis, shared by a cluster's processes
    (`channels.redis_sessions.RedisHttpSessions`). Async, because a shared store is across the network."""

    async def create_session(self, user: User) -> HttpSession:
        """A new session of `user`."""

    async def find_session(self, session_id: str) -> HttpSession | None:
        """The live session, marked as used now; None if unknown or idle too long."""

    async def end_session(self, session_id: str) -> None:
        """Forget the session (logout); unknown ids are ignored."""


USER_KEY = web.RequestKey("gws.user", User)
SESSION_KEY = web.RequestKey("gws.session", HttpSession)


class HttpSessions:
    """Server-side HTTP sessions behind the JSESSIONID cookie, expiring after `idle_timeout` seconds without use.

    Sessions are kept least recently used first, so finding the expired ones stops at the first live one.
    Clients that send Basic credentials without keeping cookies make a session per request; at most
    `max_per_user` are kept per user (the least recently used goes) so they cannot fill memory.
    """

    COOKIE = "JSESSIONID"
    SWEEP_LIMIT = 10_000  # sessions dropped per sweep, so one call never stalls the event loop

    def __init__(self, idle_timeout: float = 1800.0, clock: Callable[[], float] = time.monotonic, *,
                 max_per_user: int = 100) -> None:
        if idle_timeout <= 0 or max_per_user < 1:
            raise ValueError("idle_timeout must be positive and max_per_user at least 1")
        self.idle_timeout = idle_timeout
        self.max_per_user = max_per_user
        self._clock = clock
        self._sessions: OrderedDict[str, HttpSession] = OrderedDict()
        self._by_user: dict[str, OrderedDict[str, None]] = {}

    def create(self, user: User) -> HttpSession:
        self.sweep()
        now = self._clock()
        session = HttpSession(secrets.token_urlsafe(32), user.user_id, secrets.token_urlsafe(32), now, now,
                              user.roles)
        mine = self._by_user.setdefault(user.user_id, OrderedDict())
        while len(mine) >= self.max_per_user:
            self.end(next(iter(mine)))
        self._sessions[session.session_id] = session
        mine[session.session_id] = None
        return session

    def get(self, session_id: str) -> HttpSession | None:
        """The live session, marked as used now; None (and dropped) if unknown or idle too long."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            self.end(session_id)
            return None
        session.last_seen = now
        self._sessions.move_to_end(session_id)
        self._by_user[session.user_id].move_to_end(session_id)
        return session

    def end(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        mine = self._by_user.get(session.user_id)
        if mine is not None:
            mine.pop(session_id, None)
            if not mine:
                del self._by_user[session.user_id]

    def end_user(self, user_id: str) -> None:
        """End every session of the user (logout everywhere, password change, user removed)."""
        for session_id in list(self._by_user.get(user_id, ())):
            self.end(session_id)

    # The SessionStore interface, for code that also runs on a cluster's shared sessions.
    async def create_session(self, user: User) -> HttpSession:
        return self.create(user)

    async def find_session(self, session_id: str) -> HttpSession | None:
        return self.get(session_id)

    async def end_session(self, session_id: str) -> None:
        self.end(session_id)

    def principal_for(self, session_id: str) -> Principal | None:
        session = self.get(session_id)
        return Principal(session.user_id, session.roles) if session else None

    def sweep(self) -> int:
        """Drop idle-expired sessions, oldest first, at most SWEEP_LIMIT per call; the number dropped."""
        now, dropped = self._clock(), 0
        while self._sessions and dropped < self.SWEEP_LIMIT:
            oldest = next(iter(self._sessions.values()))
            if not self._expired(oldest, now):
                break
            self.end(oldest.session_id)
            dropped += 1
        return dropped

    def _expired(self, session: HttpSession, now: float) -> bool:
        return now - session.last_seen >= self.idle_timeout

    def __len__(self) -> int:
        return len(self._sessions)


# --- Basic credentials -----------------------------------------------------------------------------


def parse_basic(header: str) -> tuple[str, str]:
    """`(user, password)` from an `Authorization: Basic ...` value; ValueError saying what is wrong."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise ValueError(f"unsupported Authorization scheme {scheme!r}: use Basic")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("malformed Basic credentials: expected base64 of user:password") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise ValueError("malformed Basic credentials: expected base64 of user:password")
    return user, password


async def _check_password(users: UserDirectory, user_id: str, password: str) -> User | None:
    # PBKDF2 takes tens of milliseconds and releases the GIL: keep it off the event loop.
    return await asyncio.to_thread(users.authenticate, user_id, password)


BAD_CREDENTIALS = "invalid user name or password"
UNKNOWN_TOKEN_USER = "token user is not a user of the contact center"


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` value, else None."""
    scheme, _, value = (header or "").strip().partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


def token_user(verifier: JwtVerifier, users: UserDirectory, token: str) -> User:
    """The user a JWT names in `sub`; AuthenticationError if the token is refused or names nobody we know."""
    user = users.get(verifier.verify(token).user_id)
    if user is None:
        raise AuthenticationError(UNKNOWN_TOKEN_USER)
    return user


class GwsAuthenticator:
    """The CometD handshake's Authenticator: a JWT (Bearer or ext.authentication.token) when the broker
    verifies JWTs, else the REST session cookie, else Basic, else ext.authentication."""

    def __init__(self, users: UserDirectory, sessions: SessionStore, jwt: JwtVerifier | None = None) -> None:
        self.users = users
        self.sessions = sessions
        self.jwt = jwt

    def _jwt_of(self, request: HandshakeRequest) -> str | None:
        if self.jwt is None:
            return None
        ext = request.message.get("ext")
        auth = ext.get("authentication") if isinstance(ext, Mapping) else None
        token = auth.get("token") if isinstance(auth, Mapping) else None
        if not isinstance(token, str):
            token = bearer_token(request.headers.get("Authorization"))
        return token if token is not None and self.jwt.handles(token) else None

    async def authenticate(self, request: HandshakeRequest) -> Principal:
        token = self._jwt_of(request)
        if token is not None and self.jwt is not None:  # explicit credentials win over an older cookie
            return token_user(self.jwt, self.users, token).principal
        cookie = request.cookies.get(HttpSessions.COOKIE)
        if cookie:
            session = await self.sessions.find_session(cookie)
            user = self.users.get(session.user_id) if session else None
            if user is not None:
                return user.principal  # the directory's roles now, not those at login
        header = request.headers.get("Authorization")
        if header:
            return await self._from_basic(header)
        ext = request.message.get("ext")
        if isinstance(ext, Mapping) and "authentication" in ext:
            return await self._from_ext(ext["authentication"])
        if cookie:
            raise AuthenticationError("session cookie is unknown or expired: log in again")
        raise AuthenticationError(
            f"authentication required: a {HttpSessions.COOKIE} cookie, Authorization: Basic, "
            "or ext.authentication {user, password}")

    async def _from_basic(self, header: str) -> Principal:
        try:
            user_id, password = parse_basic(header)
        except ValueError as exc:
            raise AuthenticationError(str(exc)) from None
        return await self._login(user_id, password)

    async def _from_ext(self, auth: Any) -> Principal:
        user_id = auth.get("user") if isinstance(auth, Mapping) else None
        password = auth.get("password") if isinstance(auth, Mapping) else None
        if not isinstance(user_id, str) or not isinstance(password, str):
            raise AuthenticationError("ext.authentication needs a string user and a string password")
        return await self._login(user_id, password)

    async def _login(self, user_id: str, password: str) -> Principal:
        user = await _check_password(self.users, user_id, password)
        if user is None:
            raise AuthenticationError(BAD_CREDENTIALS)
        return user.principal


# --- REST middleware -------------------------------------------------------------------------------

CSRF_HEADER = "X-CSRF-TOKEN"
CSRF_MESSAGE = "Missing or invalid Csrf token"
_STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})


def _under(path: str, prefixes: tuple[str, ...], folders: tuple[str, ...]) -> bool:
    """`path` is one of `prefixes` or below one; `folders` are the prefixes with their trailing slash."""
    return path in prefixes or path.startswith(folders)


def _folders(prefixes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.rstrip("/") + "/" for p in prefixes)


def _unauthorized(request: web.Request, message: str) -> web.Response:
    response = failure(Status.NOT_AUTHENTICATED, message, 401)
    # A script's request (the agent desktop's fetch) gets no challenge: browsers answer a Basic challenge
    # with their own login dialog, over the page's login form. The same convention as Spring Security.
    if request.headers.get("X-Requested-With") != "XMLHttpRequest":
        response.headers["WWW-Authenticate"] = 'Basic realm="GWS"'
    return response


def _throttled(wait: float) -> web.Response:
    """A login refused because its user or address is locked out: 429 and when to try again. statusCode
    20 (not authenticated), as for a wrong password: a GWS client's answer to both is to log in, later."""
    seconds = retry_seconds(wait)
    response = failure(Status.NOT_AUTHENTICATED, f"too many failed logins: retry in {seconds} s", 429)
    response.headers["Retry-After"] = str(seconds)
    return response


def peer_address(request: web.Request) -> str | None:
    """The address a login is counted against: the TCP peer (a reverse proxy's address, when there is one)."""
    return request.remote


def _csrf_ok(request: web.Request, session: HttpSession) -> bool:
    sent = request.headers.get(CSRF_HEADER, "")
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf_token.encode())


async def _session_from_cookie(request: web.Request, users: UserDirectory,
                               sessions: SessionStore) -> tuple[User, HttpSession] | None:
    session_id = request.cookies.get(HttpSessions.COOKIE)
    session = await sessions.find_session(session_id) if session_id else None
    if session is None:
        return None
    user = users.get(session.user_id)
    if user is None:  # removed since login
        await sessions.end_session(session.session_id)
        return None
    return user, session


def _decorate(request: web.Request, response: web.StreamResponse, session: HttpSession, new: bool,
              csrf: bool, secure: bool) -> None:
    if response.prepared:
        return  # a streamed response has sent its headers already
    if new:
        response.set_cookie(HttpSessions.COOKIE, session.session_id, path="/", httponly=True, samesite="Lax",
                            secure=request.secure or secure or None)
    if csrf and request.method in ("GET", "HEAD"):
        response.headers["X-CSRF-HEADER"] = CSRF_HEADER
        response.headers[CSRF_HEADER] = session.csrf_token


def auth_middleware(users: UserDirectory, sessions: SessionStore, *, csrf: bool = True,
                    prefixes: tuple[str, ...] = ("/api/v2",),
                    exempt: tuple[str, ...] = ("/api/v2/notifications",),
                    jwt: JwtVerifier | None = None, throttle: LoginThrottle | None = None,
                    client_address: Callable[[web.Request], str | None] = peer_address,
                    secure_cookie: bool = False) -> Middleware:
    """Session cookie or Basic login, and the CSRF token, for every request under `prefixes`; with `jwt`,
    also a Bearer JWT of a known user, request by request.

    Paths under `exempt` pass untouched: the CometD endpoint authenticates its own handshake.
    Basic logins go through `throttle` (the broker's, so the handshake and the REST API share one
    budget; None: one of its own with the default limits), counted against `client_address(request)`.
    `secure_cookie`: the public port speaks TLS, so the session cookie is Secure even on a request a
    cluster process relayed here over its plain private port (one that came over TLS always is).
    """
    throttle = throttle if throttle is not None else LoginThrottle()
    prefix_folders, exempt_folders = _folders(prefixes), _folders(exempt)  # once, not per request

    @web.middleware
    async def gws_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not _under(path, prefixes, prefix_folders) or _under(path, exempt, exempt_folders):
            return await handler(request)
        token = bearer_token(request.headers.get("Authorization")) if jwt is not None else None
        if token is not None and jwt is not None:
            try:
                request[USER_KEY] = token_user(jwt, users, token)
            except AuthenticationError as exc:
                response = failure(Status.NOT_AUTHENTICATED, str(exc), 401)
                response.headers["WWW-Authenticate"] = 'Bearer realm="GWS", error="invalid_token"'  # RFC 6750
                return response
            bind_user(request[USER_KEY].user_id)
            return await handler(request)
        found = await _session_from_cookie(request, users, sessions)
        new = found is None
        if found is None:
            header = request.headers.get("Authorization")
            if not header:
                stale = bool(request.cookies.get(HttpSessions.COOKIE))
                return _unauthorized(request, "session is unknown or expired: log in again" if stale else
                                     "authentication required: log in with Basic credentials")
            try:
                user_id, password = parse_basic(header)
            except ValueError as exc:
                return _unauthorized(request, str(exc))
            address = client_address(request)
            if wait := throttle.check(user_id, address, "rest"):
                return _throttled(wait)
            user = await _check_password(users, user_id, password)
            if user is None:
                if wait := throttle.failed(user_id, address, "rest", BAD_CREDENTIALS):
                    return _throttled(wait)
                return _unauthorized(request, BAD_CREDENTIALS)
            if wait := throttle.succeeded(user_id, address, "rest"):
                return _throttled(wait)
            if csrf and request.method in _STATE_CHANGING:
                # A new session has no token the client could know yet: GWS wants a GET first.
                return failure(Status.FORBIDDEN, CSRF_MESSAGE, 403)
            found = user, await sessions.create_session(user)
        user, session = found
        if csrf and request.method in _STATE_CHANGING and not _csrf_ok(request, session):
            return failure(Status.FORBIDDEN, CSRF_MESSAGE, 403)
        request[USER_KEY], request[SESSION_KEY] = user, session
        bind_user(user.user_id)  # every log line of this request names its user
        response = await handler(request)
        _decorate(request, response, session, new, csrf, secure_cookie)
        return response

    return gws_auth


def current_user(request: web.Request) -> User:
    """The user auth_middleware authenticated; GwsError(NOT_AUTHENTICATED) outside it."""
    user = request.get(USER_KEY)
    if user is None:
        raise GwsError(Status.NOT_AUTHENTICATED, "not authenticated")
    return user


def current_session(request: web.Request) -> HttpSession | None:
    return request.get(SESSION_KEY)
