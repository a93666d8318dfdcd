"""Bearer JSON Web Tokens (RFC 7519) as handshake credentials, verified with PyJWT.

An identity provider signs a token whose `sub` names the user; the broker verifies it with a key it
was configured with: an HMAC secret (HS256/384/512), a PEM public key or certificate (RS*, PS*, ES*,
EdDSA), or a JWKS file (RFC 7517) whose key is chosen by the token's `kid`. The accepted algorithms
come from the configuration and the kind of key, never from the token's own `alg` header, so a token
cannot pick `none` or have an RSA public key used as an HMAC secret (RFC 8725 sections 2.1 and 3.1).
`exp` is required, `nbf` and `iat` are honoured, each within the configured leeway for clock skew.

PyJWT is an optional dependency (the `jwt` extra): it is imported only when JWT is configured.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .security import AuthenticationError, Principal

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EDDSA_ALGORITHMS = ("EdDSA",)
EC_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}  # cryptography's curve names
JWK_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
MIN_RSA_BITS = 2048  # RFC 7518 section 3.3
MAX_SUBJECT = 256
INSTALL_HINT = "JWT options need PyJWT with cryptography: pip install 'cometd-broker[jwt]'"

# Three base64url segments: the compact serialization of a JWS (RFC 7515 section 7.1).
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def looks_like_jwt(token: str) -> bool:
    """Whether a bearer token has the shape of a JWT (and should be verified as one)."""
    return _COMPACT.fullmatch(token) is not None


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """The JWT options as configured (see BrokerConfig): one key source, and the claim checks."""

    secret: str = ""  # an HMAC secret, or @path to a file holding it
    public_key: str = ""  # path of a PEM public key or certificate
    jwks_file: str = ""  # path of a JWKS document
    algorithms: str = ""  # comma-separated; empty: the key's own algorithm(s)
    leeway: float = 30.0
    audience: str = ""  # comma-separated: any one of them
    issuer: str = ""
    roles_claim: str = ""  # a claim (dotted path into objects) holding the user's roles

    @property
    def configured(self) -> bool:
        return bool(self.secret or self.public_key or self.jwks_file)


@dataclass(frozen=True, slots=True)
class _Key:
    key: Any  # bytes for HMAC, else a cryptography public key
    algorithms: tuple[str, ...]


def _import_jwt() -> Any:
    try:
        import jwt
        from cryptography.hazmat.primitives import serialization  # noqa: F401  (the crypto extra)
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return jwt


def load_verifier(settings: JwtSettings) -> JwtVerifier | None:
    """The verifier of these settings, None when no key is configured; ValueError naming the option at fault."""
    if not settings.configured:
        dangling = [name for name in ("algorithms", "audience", "issuer", "roles_claim") if getattr(settings, name)]
        if dangling:
            raise ValueError(f"jwt_{dangling[0]} needs a key: jwt_secret, jwt_public_key or jwks_file")
        return None
    return JwtVerifier(settings)


class JwtVerifier:
    """Checks a compact JWT and returns the Principal of its `sub`, or raises AuthenticationError
    with a short reason (`token expired`, `token signature invalid` ...) for the handshake reply."""

    def __init__(self, settings: JwtSettings) -> None:
        sources = [name for name in ("secret", "public_key", "jwks_file") if getattr(settings, name)]
        if len(sources) > 1:
            # One key kind per broker: an HMAC secret next to public keys is how algorithm confusion starts.
            raise ValueError(f"give one of jwt_secret, jwt_public_key, jwks_file, not {' and '.join(sources)}")
        if settings.leeway < 0:
            raise ValueError("jwt_leeway must be >= 0 seconds")
        self._jwt = _import_jwt()
        self.settings = settings
        wanted = tuple(a.strip() for a in settings.algorithms.split(",") if a.strip())
        self._by_kid: dict[str | None, _Key] = {}
        if settings.secret:
            self._by_kid[None] = _hmac_key(settings.secret, wanted)
        elif settings.public_key:
            self._by_kid[None] = _pem_key(settings.public_key, wanted)
        else:
            self._by_kid = _jwks_keys(self._jwt, settings.jwks_file, wanted)
        self.audience = [a.strip() for a in settings.audience.split(",") if a.strip()] or None
        self.issuer = settings.issuer or None
        self.roles_path = [p for p in settings.roles_claim.split(".") if p]

    def handles(self, token: str) -> bool:
        return looks_like_jwt(token)

    @property
    def algorithms(self) -> list[str]:
        """Every algorithm some configured key accepts."""
        return sorted({a for key in self._by_kid.values() for a in key.algorithms})

    def verify(self, token: str) -> Principal:
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthenticationError("malformed token") from None
        key = self._key_for(header)
        if header.get("alg") not in key.algorithms:  # PyJWT checks this too: refused before any key is used
            raise AuthenticationError("token algorithm not accepted")
        try:
            claims = jwt.decode(token, key.key, algorithms=list(key.algorithms), leeway=self.settings.leeway,
                                audience=self.audience, issuer=self.issuer,
                                options={"require": ["exp", "sub"]})
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(_reason(jwt, exc)) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT:
            raise AuthenticationError(f"token sub must be a string of 1-{MAX_SUBJECT} characters")
        return Principal(subject, self._roles(claims))

    def _key_for(self, header: Mapping[str, Any]) -> _Key:
        kid = header.get("kid")
        if None in self._by_kid:  # one key without a kid (a secret, a PEM file, a JWKS of one anonymous key)
            return self._by_kid[None]
        if kid is None:
            if len(self._by_kid) == 1:
                return next(iter(self._by_kid.values()))
            raise AuthenticationError("token has no kid: the JWKS holds several keys")
        found = self._by_kid.get(kid) if isinstance(kid, str) else None
        if found is None:
            raise AuthenticationError("token kid is not in the JWKS")
        return found

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[str]:
        if not self.roles_path:
            return frozenset()
        value: Any = claims
        for part in self.roles_path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str):  # a space-separated list, as OAuth's `scope`
            return frozenset(value.split())
        if isinstance(value, list):
            return frozenset(r for r in value if isinstance(r, str) and r)
        return frozenset()


def _reason(jwt: Any, exc: Exception) -> str:
    """A short reason for the handshake reply and the REST 401."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not valid yet"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token has no {exc.claim} claim"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token audience not accepted"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token issuer not accepted"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm not accepted"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature invalid"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    return f"invalid token ({exc})"


def _check_algorithms(wanted: tuple[str, ...], fitting: tuple[str, ...], default: tuple[str, ...],
                      what: str) -> tuple[str, ...]:
    unfit = [a for a in wanted if a not in fitting]
    if unfit:
        raise ValueError(f"jwt_algorithms {unfit[0]!r} does not fit {what} (use {', '.join(fitting)})")
    return wanted or default


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None


def _hmac_key(secret: str, wanted: tuple[str, ...]) -> _Key:
    raw = _read(secret[1:], "jwt_secret").strip() if secret.startswith("@") else secret.encode()
    algorithms = _check_algorithms(wanted, HMAC_ALGORITHMS, ("HS256",), "an HMAC secret (jwt_secret)")
    # RFC 7518 section 3.2: a key at least as long as the hash output.
    needed = max(int(a[2:]) // 8 for a in algorithms)
    if len(raw) < needed:
        raise ValueError(f"jwt_secret must be at least {needed} bytes for {', '.join(algorithms)}, got {len(raw)}")
    return _Key(raw, algorithms)


def _pem_key(path: str, wanted: tuple[str, ...]) -> _Key:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "jwt_public_key")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ValueError(f"jwt_public_key {path}: not a PEM public key or certificate "
                         "(-----BEGIN PUBLIC KEY----- or -----BEGIN CERTIFICATE-----)") from None
    fitting, what = _public_key_algorithms(key)
    if not fitting:
        raise ValueError(f"jwt_public_key {path}: {what}")
    return _Key(key, _check_algorithms(wanted, fitting, fitting[:1], f"the {what} of jwt_public_key"))


def _public_key_algorithms(key: Any) -> tuple[tuple[str, ...], str]:
    """The algorithms a public key can verify, and what the key is (for messages)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return (), f"an RSA key of {key.key_size} bits is too short (at least {MIN_RSA_BITS})"
        return RSA_ALGORITHMS, "RSA key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = EC_CURVES.get(key.curve.name)
        return ((algorithm,), f"EC {key.curve.name} key") if algorithm else \
            ((), f"the EC curve {key.curve.name} is not supported (P-256, P-384, P-521)")
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return EDDSA_ALGORITHMS, "EdDSA key"
    return (), f"unsupported key type {type(key).__name__}"


def _jwks_keys(jwt: Any, path: str, wanted: tuple[str, ...]) -> dict[str | None, _Key]:
    try:
        document = json.loads(_read(path, "jwks_file"))
    except ValueError as exc:
        raise ValueError(f"jwks_file {path}: not valid JSON ({exc})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f'jwks_file {path}: expected an object {{"keys": [...]}}')
    signing = [e for e in entries if isinstance(e, dict) and e.get("use", "sig") == "sig"]
    keys: dict[str | None, _Key] = {}
    for index, entry in enumerate(signing):
        kid = entry.get("kid")
        where = f"jwks_file {path}: key {kid!r}" if isinstance(kid, str) else f"jwks_file {path}: key {index}"
        if kid is None and len(signing) > 1:
            raise ValueError(f"{where}: every key needs a kid when the JWKS holds several")
        if kid in keys or (kid is not None and not isinstance(kid, str)):
            raise ValueError(f"{where}: kid must be a string, unique in the file")
        keys[kid] = _jwk(jwt, entry, wanted, where)
    if not keys:
        raise ValueError(f"jwks_file {path}: no signing key in it")
    unused = [a for a in wanted if not any(a in key.algorithms for key in keys.values())]
    if unused:
        raise ValueError(f"jwt_algorithms {unused[0]!r} fits none of the keys of jwks_file {path}")
    return keys


def _jwk(jwt: Any, entry: dict[str, Any], wanted: tuple[str, ...], where: str) -> _Key:
    if entry.get("kty") not in ("RSA", "EC", "OKP"):
        raise ValueError(f"{where}: kty must be RSA, EC or OKP (a JWKS holds public keys), got {entry.get('kty')!r}")
    if "d" in entry:
        raise ValueError(f"{where}: holds a private key; publish only the public part")
    try:
        key = jwt.PyJWK(entry).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, KeyError) as exc:
        raise ValueError(f"{where}: not a usable key ({exc})") from None
    fitting, what = _public_key_algorithms(key)
    if not fitting:
        raise ValueError(f"{where}: {what}")
    declared = entry.get("alg")
    if declared is not None:
        if declared not in fitting:
            raise ValueError(f"{where}: alg {declared!r} does not fit its {what}")
        fitting = (declared,)
    algorithms = tuple(a for a in wanted if a in fitting) if wanted else fitting[:1]
    return _Key(key, algorithms)
