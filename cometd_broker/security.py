"""Who may handshake (Authenticator) and what they may subscribe and publish (Authorizer)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .channel import Pattern, channel_error, is_service


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity bound to a session at handshake. `user_id` is None for anonymous clients."""

    user_id: str | None
    roles: frozenset[str] = field(default_factory=frozenset)

    @property
    def anonymous(self) -> bool:
        return self.user_id is None


ANONYMOUS = Principal(None)


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """What an Authenticator may look at: the HTTP request's headers and cookies and the handshake."""

    headers: Mapping[str, str]
    cookies: Mapping[str, str]
    message: Mapping[str, Any]
    remote: str | None = None


class AuthenticationError(Exception):
    """Handshake refused; the message is put in the handshake reply's error string."""


class Authenticator(Protocol):
    async def authenticate(self, request: HandshakeRequest) -> Principal:
        """Return the principal for this handshake or raise AuthenticationError."""
        ...


class TokenVerifier(Protocol):
    """Self-contained bearer tokens (JWT, see jwt_auth.py) beside the table of opaque ones."""

    def handles(self, token: str) -> bool:
        """Whether `token` has this verifier's shape (else it is looked up as an opaque token)."""
        ...

    def verify(self, token: str) -> Principal:
        """The token's principal, or AuthenticationError saying why it is refused."""
        ...


SessionResolver = Callable[[str], "Awaitable[Principal | None] | Principal | None"]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class CredentialsAuthenticator:
    """Authenticates a handshake from, in order: `ext.authentication`, the `Authorization`
    header (Bearer token or Basic user:password), or an application session cookie.

    Passwords (`users`, user -> password) are only accepted together with their
    user name; tokens (`tokens`, token -> user) stand alone, so one kind can
    never be used as the other. Both are kept only as SHA-256 digests and
    compared in constant time. Credentials that are presented but wrong are
    refused even when anonymous access is allowed, so a typo is reported
    instead of silently downgrading. A token not in that table goes to
    `token_verifier` when it has its shape (a JWT); the roles it carries are
    added to the user's configured ones.
    """

    def __init__(self, users: Mapping[str, str] | None = None, *, tokens: Mapping[str, str] | None = None,
                 allow_anonymous: bool = False, session_cookie: str | None = None,
                 session_resolver: SessionResolver | None = None,
                 roles: Mapping[str, Iterable[str]] | None = None,
                 token_verifier: TokenVerifier | None = None) -> None:
        self._secrets = {user: _digest(secret) for user, secret in (users or {}).items()}
        self._by_token = {_digest(token): user for token, user in (tokens or {}).items()}
        self._roles = {user: frozenset(r) for user, r in (roles or {}).items()}
        self.allow_anonymous = allow_anonymous
        self.session_cookie = session_cookie
        self.session_resolver = session_resolver
        self.token_verifier = token_verifier

    def _principal(self, user: str) -> Principal:
        return Principal(user, self._roles.get(user, frozenset()))

    def _check(self, user: str | None, secret: str) -> Principal:
        digest = _digest(secret)
        if user is None:
            found = self._by_token.get(digest)
            if found is not None:
                return self._principal(found)
            if self.token_verifier is not None and self.token_verifier.handles(secret):
                verified = self.token_verifier.verify(secret)
                return Principal(verified.user_id, verified.roles | self._principal(verified.user_id).roles)
            raise AuthenticationError("invalid token")
        expected = self._secrets.get(user)
        # Compare against a dummy digest for unknown users so timing does not reveal them.
        if not hmac.compare_digest(expected or b"\0" * 32, digest) or expected is None:
            raise AuthenticationError("invalid user or secret")
        return self._principal(user)

    async def authenticate(self, request: HandshakeRequest) -> Principal:
        ext = request.message.get("ext")
        auth = ext.get("authentication") if isinstance(ext, Mapping) else None
        if auth is not None:
            return self._from_ext(auth)
        header = request.headers.get("Authorization")
        if header:
            return self._from_header(header)
        if self.session_cookie and self.session_resolver and request.cookies.get(self.session_cookie):
            found = self.session_resolver(request.cookies[self.session_cookie])
            if inspect.isawaitable(found):
                found = await found
            if found is None:
                raise AuthenticationError("session cookie is unknown or expired")
            return found
        if self.allow_anonymous:
            return ANONYMOUS
        raise AuthenticationError(
            "credentials required (Authorization header, ext.authentication or session cookie)")

    def _from_ext(self, auth: Any) -> Principal:
        if not isinstance(auth, Mapping):
            raise AuthenticationError("ext.authentication must be an object")
        token, user, password = auth.get("token"), auth.get("user"), auth.get("password")
        if isinstance(token, str) and user is None and password is None:
            return self._check(None, token)
        if isinstance(user, str) and isinstance(password, str) and token is None:
            return self._check(user, password)
        raise AuthenticationError("ext.authentication needs either a string token, or a string user and password")

    def _from_header(self, header: str) -> Principal:
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and value:
            return self._check(None, value.strip())
        if scheme == "basic" and value:
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise AuthenticationError("malformed Basic credentials") from None
            user, sep, secret = decoded.partition(":")
            if not sep:
                raise AuthenticationError("malformed Basic credentials")
            return self._check(user, secret)
        raise AuthenticationError(f"unsupported Authorization scheme {scheme!r}")


class ChainedAuthenticator:
    """Tries each authenticator in turn; the first principal wins. Lets an application's own
    users (say, a session cookie) sit beside the broker's configured credentials."""

    def __init__(self, *authenticators: Authenticator) -> None:
        if not authenticators:
            raise ValueError("ChainedAuthenticator needs at least one authenticator")
        self.authenticators = authenticators

    async def authenticate(self, request: HandshakeRequest) -> Principal:
        reasons = []
        for authenticator in self.authenticators:
            try:
                return await authenticator.authenticate(request)
            except AuthenticationError as exc:
                reasons.append(str(exc))
        raise AuthenticationError("; ".join(dict.fromkeys(reasons)))


# Access levels of a channel rule.
ANYONE, AUTHENTICATED, NOBODY = "anyone", "authenticated", "nobody"


def _access_error(access: str) -> str | None:
    if access in (ANYONE, AUTHENTICATED, NOBODY):
        return None
    if access.startswith("role:") and len(access) > 5:
        return None
    return f"access must be anyone, authenticated, nobody or role:<name>, got {access!r}"


def _allows(access: str, principal: Principal) -> bool:
    if access == ANYONE:
        return True
    if access == AUTHENTICATED:
        return not principal.anonymous
    if access == NOBODY:
        return False
    return access[5:] in principal.roles


@dataclass(frozen=True, slots=True)
class ChannelRule:
    """Who may subscribe to and publish on the channels a pattern matches."""

    pattern: str
    subscribe: str = ANYONE
    publish: str = ANYONE

    def __post_init__(self) -> None:
        problem = channel_error(self.pattern) or _access_error(self.subscribe) or _access_error(self.publish)
        if problem:
            raise ValueError(f"channel rule {self.pattern!r}: {problem}")

    @classmethod
    def parse(cls, text: str) -> ChannelRule:
        """Parse `PATTERN subscribe=ACCESS publish=ACCESS` (either part optional)."""
        if not text.split():
            raise ValueError("channel rule is empty: expected 'PATTERN subscribe=ACCESS publish=ACCESS'")
        pattern, *parts = text.split()
        values: dict[str, str] = {}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or key not in ("subscribe", "publish"):
                raise ValueError(f"channel rule {text!r}: expected subscribe=ACCESS or publish=ACCESS, got {part!r}")
            values[key] = value
        return cls(pattern, **values)


class Authorizer(Protocol):
    def subscribe_denied(self, principal: Principal, pattern: str) -> str | None:
        """None if `principal` may subscribe to `pattern`, else the reason."""
        ...

    def publish_denied(self, principal: Principal, channel: str) -> str | None:
        """None if `principal` may publish on `channel`, else the reason."""
        ...


class ChannelAuthorizer:
    """Rules checked in order, CometD's permissive defaults for channels no rule covers.

    Per-user channels (under `personal_prefix`) are resolved per principal by the
    broker, so they only need two checks here: anonymous clients may not
    subscribe to them and no client may publish on them.

    A wildcard subscription must be allowed by every rule whose channels it can
    reach (the Faye 2020 lesson: wildcards must not escalate), stopping at the
    first rule that contains it whole.
    """

    def __init__(self, personal_prefix: str, rules: Iterable[ChannelRule] = (),
                 default_subscribe: str = ANYONE, default_publish: str = ANYONE) -> None:
        self.personal = Pattern.parse(personal_prefix)
        self.rules = [(Pattern.parse(rule.pattern), rule) for rule in rules]
        self.default_subscribe = default_subscribe
        self.default_publish = default_publish

    def subscribe_denied(self, principal: Principal, pattern: str) -> str | None:
        if is_service(pattern):
            return None
        parsed = Pattern.parse(pattern)
        if principal.anonymous and parsed.within(self.personal):
            return "per-user channels need an authenticated session"
        for rule_pattern, rule in self.rules:
            if not parsed.overlaps(rule_pattern):
                continue
            if not _allows(rule.subscribe, principal):
                return f"subscribe on {rule.pattern} is limited to {rule.subscribe}"
            if parsed.within(rule_pattern):
                return None
        if not _allows(self.default_subscribe, principal):
            return f"subscribe is limited to {self.default_subscribe}"
        return None

    def publish_denied(self, principal: Principal, channel: str) -> str | None:
        parsed = Pattern.parse(channel)
        if parsed.within(self.personal):
            return "per-user channels are published by the server only"
        for rule_pattern, rule in self.rules:
            if parsed.within(rule_pattern):
                return None if _allows(rule.publish, principal) else \
                    f"publish on {rule.pattern} is limited to {rule.publish}"
        if not _allows(self.default_publish, principal):
            return f"publish is limited to {self.default_publish}"
        return None
