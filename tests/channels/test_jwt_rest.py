"""Bearer JWTs on the contact-center API (install_contact_center with the broker's JWT options): each REST
request stands alone (no session, cookie or CSRF token), only for users of the users file, and the same
token opens the desktop's CometD session at /api/v2/notifications."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import aiohttp
import jwt
import pytest

from channels.app import ContactCenterConfig, install_contact_center
from channels.auth import UNKNOWN_TOKEN_USER, User, UserDirectory, hash_password
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER

SECRET = "a-shared-secret-of-at-least-32-bytes!"
NOTIFICATIONS = "/api/v2/notifications"
WAIT = 3.0


def token(sub: str, *, ttl: int = 300, secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + ttl, **claims}, secret, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def make_server(aiohttp_server, **broker_options: Any):
    users = UserDirectory([User("alice", hash_password("alice-pw", iterations=1), roles=frozenset({"supervisor"})),
                           User("bob", hash_password("bob-pw", iterations=1))])
    app = create_app(BrokerConfig(**broker_options))
    install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=True), users=users)
    return await aiohttp_server(app)


@pytest.fixture
async def server(aiohttp_server):
    return await make_server(aiohttp_server, jwt_secret=SECRET, jwt_leeway=0)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def call(http, server, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[Any, Any]:
    async with http.request(method, server.make_url(path), headers=headers, json=body) as response:
        return response, await response.json()


async def test_bearer_jwt_authenticates_each_request_without_a_session(server, http):
    response, body = await call(http, server, "GET", "/api/v2/me", bearer(token("alice")))
    assert response.status == 200 and body["user"]["id"] == "alice" and body["user"]["roles"] == ["supervisor"]
    assert "Set-Cookie" not in response.headers and "X-CSRF-TOKEN" not in response.headers
    # No CSRF token: a browser never sends an Authorization header on its own, so there is nothing to forge.
    response, body = await call(http, server, "POST", "/api/v2/me", bearer(token("alice")),
                                {"operationName": "StartContactCenterSession", "channels": ["sms"]})
    assert (response.status, body) == (200, {"statusCode": 0})
    response, body = await call(http, server, "GET", "/api/v2/me", {})  # and nothing was remembered
    assert response.status == 401 and body["statusCode"] == 20


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: token("alice", ttl=-60), "token expired"),
    (lambda: token("alice", secret="another-secret-of-at-least-32-bytes!!"), "token signature invalid"),
    (lambda: token("mallory"), UNKNOWN_TOKEN_USER),
    (lambda: "not-a-jwt", "malformed token"),
])
async def test_a_refused_bearer_jwt_is_a_401_that_says_why(server, http, make, reason):
    response, body = await call(http, server, "GET", "/api/v2/me", bearer(make()))
    assert response.status == 401
    assert body == {"statusCode": 20, "statusMessage": reason}
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="GWS", error="invalid_token"'


async def test_a_bearer_jwt_wins_over_the_cookie_of_an_earlier_login(server, http):
    basic = "Basic " + base64.b64encode(b"bob:bob-pw").decode()
    response, _ = await call(http, server, "GET", "/api/v2/me", {"Authorization": basic})
    assert response.status == 200 and "JSESSIONID" in response.cookies
    _, body = await call(http, server, "GET", "/api/v2/me", bearer(token("alice")))
    assert body["user"]["id"] == "alice"


async def test_without_jwt_configured_bearer_is_not_accepted(aiohttp_server, http):
    server = await make_server(aiohttp_server)
    response, body = await call(http, server, "GET", "/api/v2/me", bearer(token("alice")))
    assert response.status == 401 and "unsupported Authorization scheme" in body["statusMessage"]


async def handshake(http, server, ext: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"channel": "/meta/handshake", "version": "1.0",
                               "supportedConnectionTypes": ["long-polling"]}
    if ext is not None:
        message["ext"] = ext
    _, [reply] = await call(http, server, "POST", NOTIFICATIONS, headers or {}, [message])
    return reply


async def test_the_same_jwt_opens_the_desktop_notification_channel(server, http):
    """A token-only desktop: Bearer for REST, ext.authentication.token for the handshake."""
    alice = token("alice")
    reply = await handshake(http, server, ext={"authentication": {"token": alice}})
    assert reply["successful"] is True, reply
    client_id = reply["clientId"]
    principal = server.app[BROKER].principal_of(client_id)
    assert principal.user_id == "alice" and principal.roles == {"supervisor"}  # the users file's roles
    bayeux = [{"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"},
              {"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/v2/me/channels"}]
    await call(http, server, "POST", NOTIFICATIONS, {}, bayeux[:1])
    _, replies = await call(http, server, "POST", NOTIFICATIONS, {}, bayeux[1:])
    assert replies[0]["successful"] is True, replies
    _, body = await call(http, server, "POST", "/api/v2/me", bearer(alice),
                         {"operationName": "StartContactCenterSession", "channels": ["sms"]})
    assert body == {"statusCode": 0}
    async with asyncio.timeout(WAIT):
        _, replies = await call(http, server, "POST", NOTIFICATIONS, {}, [
            {"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling",
             "advice": {"timeout": 1000}}])
    [event] = [m for m in replies if m["channel"] == "/v2/me/channels"]
    assert event["data"]["channels"][0]["channel"] == "sms"

    reply = await handshake(http, server, headers=bearer(alice))
    assert reply["successful"] is True and server.app[BROKER].principal_of(reply["clientId"]).user_id == "alice"


async def test_a_refused_jwt_at_the_handshake_says_why(server, http):
    reply = await handshake(http, server, ext={"authentication": {"token": token("alice", ttl=-60)}})
    assert reply["successful"] is False and reply["error"] == "403::handshake_denied"
    assert reply["ext"]["authentication"]["failureReason"] == "token expired"
