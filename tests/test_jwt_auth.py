"""Bearer JWTs at the handshake (cometd_broker/jwt_auth.py): keys, algorithms fixed by configuration, claims,
the configuration's checks, and the handshake over long-polling and websocket."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from bayeux_helpers import broker_of, handshake_message, send
from conftest import TOKENS
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from ws_helpers import Browsers

from cometd_broker import cli
from cometd_broker.config import BrokerConfig
from cometd_broker.jwt_auth import INSTALL_HINT, JwtSettings, load_verifier, looks_like_jwt
from cometd_broker.security import AuthenticationError, CredentialsAuthenticator, HandshakeRequest, Principal

SECRET = "a-shared-secret-of-at-least-32-bytes!"


# --------------------------------------------------------------------------- keys and tokens


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {"k1": ec.generate_private_key(ec.SECP256R1()), "k2": ec.generate_private_key(ec.SECP256R1())}


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def rsa_pem(tmp_path: Path, rsa_key) -> Path:
    path = tmp_path / "rsa.pem"
    path.write_bytes(public_pem(rsa_key))
    return path


@pytest.fixture
def jwks(tmp_path: Path, ec_keys) -> Path:
    keys = []
    for kid, key in ec_keys.items():
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "use": "sig", "alg": "ES256"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return path


def claims(sub: str | None = "alice", *, ttl: float = 300, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    result: dict[str, Any] = {"iat": now, "exp": now + int(ttl), **extra}
    if sub is not None:
        result["sub"] = sub
    return result


def hs256(payload: dict[str, Any] | None = None, secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload or claims(), secret, algorithm="HS256", headers=headers or None)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], key: bytes | None = None) -> str:
    """A token PyJWT refuses to make: `alg: none`, or HS256 keyed with an RSA public key's PEM."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key is not None else b""
    return f"{signing_input}.{b64url(signature)}"


def verifier(**settings: Any):
    found = load_verifier(JwtSettings(**settings))
    assert found is not None
    return found


def refused(check, token: str) -> str:
    with pytest.raises(AuthenticationError) as caught:
        check.verify(token)
    return str(caught.value)


def request(*, ext: object = None, headers: dict[str, str] | None = None) -> HandshakeRequest:
    message: dict[str, object] = {"channel": "/meta/handshake", "version": "1.0",
                                  "supportedConnectionTypes": ["long-polling"]}
    if ext is not None:
        message["ext"] = ext
    return HandshakeRequest(headers=headers or {}, cookies={}, message=message)


# --------------------------------------------------------------------------- keys and algorithms


def test_hs256_with_a_shared_secret():
    assert verifier(secret=SECRET).verify(hs256()) == Principal("alice")


def test_hs256_secret_from_a_file(tmp_path):
    (tmp_path / "secret").write_text(SECRET + "\n")
    assert verifier(secret=f"@{tmp_path / 'secret'}").verify(hs256()) == Principal("alice")


def test_rs256_with_a_pem_public_key(rsa_key, rsa_pem):
    check = verifier(public_key=str(rsa_pem))
    assert check.algorithms == ["RS256"]
    assert check.verify(jwt.encode(claims("bob"), rsa_key, algorithm="RS256")) == Principal("bob")
    assert refused(check, jwt.encode(claims(), rsa_key, algorithm="PS256")) == "token algorithm not accepted"


def test_rs256_with_a_certificate(tmp_path, rsa_key):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(rsa_key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(rsa_key, hashes.SHA256()))
    path = tmp_path / "idp.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert verifier(public_key=str(path)).verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).user_id == "alice"


def test_configured_algorithms_of_the_key_kind(rsa_key, rsa_pem):
    check = verifier(public_key=str(rsa_pem), algorithms="PS256,RS512")
    assert check.verify(jwt.encode(claims(), rsa_key, algorithm="PS256")).user_id == "alice"
    assert refused(check, jwt.encode(claims(), rsa_key, algorithm="RS256")) == "token algorithm not accepted"


def test_es256_from_a_jwks_by_kid(jwks, ec_keys):
    check = verifier(jwks_file=str(jwks))
    for kid, key in ec_keys.items():
        token = jwt.encode(claims(kid), key, algorithm="ES256", headers={"kid": kid})
        assert check.verify(token) == Principal(kid)
    # Signed by k1 but naming k2: k2's key does not verify it.
    crossed = jwt.encode(claims(), ec_keys["k1"], algorithm="ES256", headers={"kid": "k2"})
    assert refused(check, crossed) == "token signature invalid"
    unknown = jwt.encode(claims(), ec_keys["k1"], algorithm="ES256", headers={"kid": "k9"})
    assert refused(check, unknown) == "token kid is not in the JWKS"
    no_kid = jwt.encode(claims(), ec_keys["k1"], algorithm="ES256")
    assert refused(check, no_kid) == "token has no kid: the JWKS holds several keys"


def test_a_jwks_of_one_key_needs_no_kid(tmp_path, ec_keys):
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_keys["k1"].public_key()))
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    check = verifier(jwks_file=str(path))
    assert check.algorithms == ["ES256"]
    assert check.verify(jwt.encode(claims(), ec_keys["k1"], algorithm="ES256")).user_id == "alice"


def test_alg_none_is_refused():
    token = forge({"alg": "none", "typ": "JWT"}, claims())
    assert looks_like_jwt(token)
    assert refused(verifier(secret=SECRET), token) == "token algorithm not accepted"


def test_hmac_keyed_with_the_rsa_public_key_is_refused(rsa_key, rsa_pem):
    """The classic confusion: an attacker signs HS256 with the (public) PEM as the secret."""
    token = forge({"alg": "HS256", "typ": "JWT"}, claims("admin"), key=rsa_pem.read_bytes())
    assert refused(verifier(public_key=str(rsa_pem)), token) == "token algorithm not accepted"


def test_wrong_secret_and_tampered_payload_are_refused():
    check = verifier(secret=SECRET)
    assert refused(check, hs256(secret="another-secret-of-at-least-32-bytes!!")) == "token signature invalid"
    header, _, signature = hs256().split(".")
    tampered = f"{header}.{b64url(json.dumps(claims('mallory')).encode())}.{signature}"
    assert refused(check, tampered) == "token signature invalid"


def test_hs384_needs_its_algorithm_configured():
    token = jwt.encode(claims(), SECRET * 2, algorithm="HS384")
    assert refused(verifier(secret=SECRET * 2), token) == "token algorithm not accepted"
    assert verifier(secret=SECRET * 2, algorithms="HS384").verify(token).user_id == "alice"


def test_garbage_is_a_malformed_token():
    assert refused(verifier(secret=SECRET), "abc.def.ghi") == "malformed token"


# --------------------------------------------------------------------------- claims


def test_expired_token_is_refused():
    assert refused(verifier(secret=SECRET, leeway=0), hs256(claims(ttl=-5))) == "token expired"


def test_leeway_covers_clock_skew():
    late = hs256(claims(ttl=-10))
    assert verifier(secret=SECRET, leeway=30).verify(late).user_id == "alice"
    assert refused(verifier(secret=SECRET, leeway=5), late) == "token expired"
    early = hs256(claims(nbf=int(time.time()) + 10))
    assert verifier(secret=SECRET, leeway=30).verify(early).user_id == "alice"
    assert refused(verifier(secret=SECRET, leeway=5), early) == "token not valid yet"
    issued_later = hs256(claims(iat=int(time.time()) + 120))
    assert refused(verifier(secret=SECRET, leeway=30), issued_later) == "token not valid yet"


def test_exp_and_sub_are_required():
    check = verifier(secret=SECRET)
    no_exp = claims()
    del no_exp["exp"]
    assert refused(check, hs256(no_exp)) == "token has no exp claim"
    assert refused(check, hs256(claims(sub=None))) == "token has no sub claim"
    assert refused(check, hs256(claims(sub=""))).startswith("token")
    assert refused(check, hs256(claims(sub="x" * 300))).startswith("token sub must be a string")


def test_audience_and_issuer_when_configured():
    check = verifier(secret=SECRET, audience="desktop,api", issuer="https://idp.example")
    good = claims(aud="api", iss="https://idp.example")
    assert check.verify(hs256(good)).user_id == "alice"
    assert refused(check, hs256({**good, "aud": "other"})) == "token audience not accepted"
    assert refused(check, hs256({**good, "iss": "https://evil.example"})) == "token issuer not accepted"
    assert refused(check, hs256(claims(iss="https://idp.example"))) == "token has no aud claim"
    # Not configured: a token addressed to someone else is refused (RFC 7519 section 4.1.3).
    assert refused(verifier(secret=SECRET), hs256(claims(aud="other"))) == "token audience not accepted"


def test_roles_from_a_claim():
    assert verifier(secret=SECRET, roles_claim="roles").verify(hs256(claims(roles=["agent", "sup"]))).roles == \
        frozenset({"agent", "sup"})
    nested = claims(realm_access={"roles": ["admin"]}, scope="a b")
    assert verifier(secret=SECRET, roles_claim="realm_access.roles").verify(hs256(nested)).roles == {"admin"}
    assert verifier(secret=SECRET, roles_claim="scope").verify(hs256(nested)).roles == {"a", "b"}
    assert verifier(secret=SECRET).verify(hs256(claims(roles=["agent"]))).roles == frozenset()


# --------------------------------------------------------------------------- the authenticator


@pytest.fixture
def auth() -> CredentialsAuthenticator:
    return CredentialsAuthenticator(tokens={"opaque-token": "carol"}, roles={"alice": ["agent"]},
                                    token_verifier=verifier(secret=SECRET, roles_claim="roles"))


async def test_jwt_in_the_header_and_in_ext_authentication(auth):
    token = hs256(claims(roles=["sup"]))
    expected = Principal("alice", frozenset({"agent", "sup"}))  # the token's roles and the configured ones
    assert await auth.authenticate(request(headers={"Authorization": f"Bearer {token}"})) == expected
    assert await auth.authenticate(request(ext={"authentication": {"token": token}})) == expected


async def test_opaque_tokens_still_work_beside_jwts(auth):
    assert await auth.authenticate(request(ext={"authentication": {"token": "opaque-token"}})) == Principal("carol")
    with pytest.raises(AuthenticationError, match="invalid token"):
        await auth.authenticate(request(ext={"authentication": {"token": "not-a-known-token"}}))


async def test_a_refused_jwt_says_why(auth):
    with pytest.raises(AuthenticationError, match=r"^token expired$"):
        await auth.authenticate(request(headers={"Authorization": f"Bearer {hs256(claims(ttl=-3600))}"}))


async def test_without_jwt_configured_a_jwt_is_just_an_unknown_token():
    plain = CredentialsAuthenticator(tokens={"opaque-token": "carol"})
    with pytest.raises(AuthenticationError, match=r"^invalid token$"):
        await plain.authenticate(request(ext={"authentication": {"token": hs256()}}))


# --------------------------------------------------------------------------- configuration


def test_config_builds_the_verifier_and_masks_the_secret(capsys, monkeypatch):
    assert BrokerConfig().jwt_verifier is None
    config = BrokerConfig(jwt_secret=SECRET, jwt_leeway=5, jwt_audience="a")
    config.validate()
    assert config.jwt_verifier.verify(hs256(claims(aud="a"))).user_id == "alice"
    monkeypatch.setenv("COMETD_BROKER_JWT_SECRET", SECRET)
    assert cli.main(["config", "--jwt-leeway", "5"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert 'jwt-secret = "****"' in out and "jwt-leeway = 5.0  # flag" in out


@pytest.mark.parametrize(("options", "message"), [
    ({"jwt_public_key": "/nonexistent/key.pem"}, "jwt_public_key /nonexistent/key.pem: cannot read it"),
    ({"jwks_file": "/nonexistent/jwks.json"}, "jwks_file /nonexistent/jwks.json: cannot read it"),
    ({"jwt_secret": "short"}, "jwt_secret must be at least 32 bytes"),
    ({"jwt_secret": SECRET, "jwt_algorithms": "RS256"}, "jwt_algorithms 'RS256' does not fit an HMAC secret"),
    ({"jwt_secret": SECRET, "jwt_algorithms": "none"}, "jwt_algorithms 'none' does not fit"),
    ({"jwt_secret": SECRET, "jwt_leeway": -1}, "jwt_leeway must be >= 0"),
    ({"jwt_audience": "api"}, "jwt_audience needs a key"),
    ({"jwt_algorithms": "RS256"}, "jwt_algorithms needs a key"),
])
def test_config_errors_name_the_option(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        BrokerConfig(**options).validate()


def test_bad_key_files_give_clear_errors(tmp_path, rsa_pem, ec_keys, jwks):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(ValueError, match="not a PEM public key or certificate"):
        BrokerConfig(jwt_public_key=str(garbage)).validate()
    with pytest.raises(ValueError, match="not valid JSON"):
        BrokerConfig(jwks_file=str(garbage)).validate()
    with pytest.raises(ValueError, match="give one of jwt_secret, jwt_public_key, jwks_file"):
        BrokerConfig(jwt_secret=SECRET, jwt_public_key=str(rsa_pem)).validate()
    with pytest.raises(ValueError, match="'ES256' does not fit the RSA key"):
        BrokerConfig(jwt_public_key=str(rsa_pem), jwt_algorithms="ES256").validate()
    short = tmp_path / "short.pem"
    short.write_bytes(public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(ValueError, match="1024 bits is too short"):
        BrokerConfig(jwt_public_key=str(short)).validate()
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_keys["k1"]))
    for document, message in [({"keys": [{**private, "kid": "p"}]}, "holds a private key"),
                              ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "kty must be RSA, EC or OKP"),
                              ({"nokeys": []}, "expected an object"),
                              ({"keys": []}, "no signing key")]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(document))
        with pytest.raises(ValueError, match=message):
            BrokerConfig(jwks_file=str(bad)).validate()
    with pytest.raises(ValueError, match="'RS256' fits none of the keys"):
        BrokerConfig(jwks_file=str(jwks), jwt_algorithms="RS256").validate()


def test_serve_without_pyjwt_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jwt", None)  # `import jwt` raises ImportError
    assert cli.main(["serve", "--jwt-secret", SECRET]) == 2
    err = capsys.readouterr().err
    assert err == f"cometd-broker: invalid configuration: {INSTALL_HINT}\n"


# --------------------------------------------------------------------------- the handshake on the wire


@pytest.fixture(params=["lean", "aiohttp"])
def http_server(request) -> str:
    return request.param


async def test_long_polling_handshake_with_a_jwt(make_client):
    client = await make_client(jwt_secret=SECRET)
    token = hs256(claims("bob"))
    [reply] = await send(client, handshake_message(), headers={"Authorization": f"Bearer {token}"})
    assert reply["successful"] is True, reply
    assert broker_of(client).principal_of(reply["clientId"]).user_id == "bob"
    [reply] = await send(client, handshake_message(ext={"authentication": {"token": token}}))
    assert reply["successful"] is True, reply
    # The opaque tokens of --tokens keep working beside JWTs.
    [reply] = await send(client, handshake_message(ext={"authentication": {"token": TOKENS["carol"]}}))
    assert reply["successful"] is True, reply


async def test_long_polling_handshake_with_an_expired_jwt_says_why(make_client):
    client = await make_client(jwt_secret=SECRET, jwt_leeway=0)
    [reply] = await send(client, handshake_message(),
                         headers={"Authorization": f"Bearer {hs256(claims(ttl=-60))}"})
    assert reply["successful"] is False and reply["error"] == "403::handshake_denied"
    assert reply["ext"]["authentication"]["failureReason"] == "token expired"
    assert reply["advice"]["reconnect"] == "none"


async def test_websocket_handshake_with_a_jwt(make_client, rsa_key, rsa_pem):
    client = await make_client(jwt_public_key=str(rsa_pem))
    token = jwt.encode(claims("alice"), rsa_key, algorithm="RS256")
    browsers = Browsers()
    try:
        peer = await browsers.open(client).websocket(headers={"Authorization": f"Bearer {token}"})
        reply = await peer.request(handshake_message(connection_types=("websocket",), id="h1"))
        assert reply["successful"] is True, reply
        assert broker_of(client).principal_of(reply["clientId"]).user_id == "alice"

        other = await browsers.open(client).websocket()
        reply = await other.request(handshake_message(connection_types=("websocket",), id="h2",
                                                      ext={"authentication": {"token": token}}))
        assert reply["successful"] is True, reply
        forged = forge({"alg": "HS256"}, claims("admin"), key=rsa_pem.read_bytes())
        reply = await other.request(handshake_message(connection_types=("websocket",), id="h3",
                                                      ext={"authentication": {"token": forged}}))
        assert reply["successful"] is False
        assert reply["ext"]["authentication"]["failureReason"] == "token algorithm not accepted"
    finally:
        await browsers.close()
