"""The Origin check and CORS (`--allowed-origins`, http/origins.py) on both HTTP paths: websocket upgrades,
long-polling and callback-polling under the mount, and the contact-center REST APIs."""

from __future__ import annotations

import base64
import json
import os

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from bayeux_helpers import (
    MOUNT,
    both_http_servers,  # noqa: F401  (each test runs on both HTTP paths)
    connect_message,
    handshake_message,
    post_raw,
    reply_to,
)
from conftest import LeanTestServer

from channels.app import ContactCenterConfig, install_contact_center
from channels.auth import UserDirectory
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER
from cometd_broker.http.origins import OriginPolicy, Verdict, normalize, parse_allowed

CRM = "https://crm.example.com"
EVIL = "https://evil.example"
ANON = {"allow_anonymous": True}
WAIT = 5.0


def upgrade_headers(origin: str | None) -> dict[str, str]:
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    if origin is not None:
        headers["Origin"] = origin
    return headers


def own_origin(client: TestClient, scheme: str = "http") -> str:
    return f"{scheme}://{client.server.host}:{client.server.port}"


def served_lean(reply_headers) -> bool:
    """Whether the lean path answered (aiohttp names itself in Server)."""
    return reply_headers.get("Server") == "cometd-broker"


async def websocket_handshake(client: TestClient, origin: str | None) -> dict:
    headers = {} if origin is None else {"Origin": origin}
    async with client.ws_connect(MOUNT, headers=headers) as ws:
        await ws.send_str(json.dumps([handshake_message(connection_types=["websocket"], id="h")]))
        frame = await ws.receive(timeout=WAIT)
        assert frame.type == WSMsgType.TEXT, frame
        return reply_to(json.loads(frame.data), "/meta/handshake", "h")


async def long_polling_session(client: TestClient, origin: str | None):
    """Handshake and a first connect from `origin`; the connect's reply."""
    headers = {} if origin is None else {"Origin": origin}
    shake = await post_raw(client, [handshake_message(id="h")], headers=headers)
    assert shake.status == 200, shake.text
    client_id = reply_to(shake.json(), "/meta/handshake", "h")["clientId"]
    cookie = {"BAYEUX_BROWSER": shake.headers["Set-Cookie"].split("=", 1)[1].split(";", 1)[0]}
    return await post_raw(client, [connect_message(client_id, id="c")], headers=headers, cookies=cookie)


def assert_cors(headers, origin: str) -> None:
    assert headers["Access-Control-Allow-Origin"] == origin
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in headers.get("Vary", "")


def assert_no_cors(headers) -> None:
    assert not [name for name in headers if name.lower().startswith("access-control-")], dict(headers)


# --------------------------------------------------------------------------- the pure policy


def test_origins_are_normalized():
    assert normalize("HTTPS://CRM.Example.com:443") == CRM
    assert normalize("http://a.example:80") == "http://a.example"
    assert normalize("http://a.example:8080") == "http://a.example:8080"
    assert normalize("http://[::1]:8080") == "http://[::1]:8080"
    for bad in ("null", "https://a.example/path", "https://user@a.example", "a.example", ""):
        assert normalize(bad) is None, bad


def test_the_broker_s_own_origin_is_the_host_header():
    policy = OriginPolicy()
    assert policy.judge("http://b.example:8080", "b.example:8080") is Verdict.SAME
    assert policy.judge("https://b.example", "b.example") is Verdict.SAME  # behind a TLS proxy passing Host
    assert policy.judge("https://b.example", "B.example:443") is Verdict.SAME
    assert policy.judge("http://b.example", "b.example:80") is Verdict.SAME
    assert policy.judge("https://b.example", "b.example:80") is Verdict.FOREIGN
    assert policy.judge("http://b.example:8081", "b.example:8080") is Verdict.FOREIGN
    assert policy.judge("https://sub.b.example", "b.example") is Verdict.FOREIGN
    assert policy.judge("null", "b.example") is Verdict.FOREIGN
    assert policy.judge("http://b.example", None) is Verdict.FOREIGN


def test_listed_origins_and_any():
    policy = OriginPolicy(f"{CRM}/, http://localhost:3000")
    assert policy.judge("https://CRM.example.com", "b.example") is Verdict.ALLOWED
    assert policy.judge("http://localhost:3000", "b.example") is Verdict.ALLOWED
    assert policy.judge("http://localhost:3001", "b.example") is Verdict.FOREIGN
    assert OriginPolicy("*").judge(EVIL, "b.example") is Verdict.ALLOWED
    assert parse_allowed(" * , ") == frozenset({"*"})


def test_preflight_headers_allow_what_is_asked_when_it_is_a_list_of_names():
    policy = OriginPolicy(CRM)
    asked = dict(policy.preflight_headers(CRM, "content-type, x-csrf-token"))
    assert asked["Access-Control-Allow-Headers"] == "content-type, x-csrf-token"
    odd = dict(policy.preflight_headers(CRM, "content-type\r\nX: y"))
    assert "X-CSRF-TOKEN" in odd["Access-Control-Allow-Headers"]  # the default list instead


@pytest.mark.parametrize("value", ["crm.example.com", "https://crm.example.com/app", "null", "https://*"])
def test_an_entry_that_is_no_origin_is_refused_at_start(value):
    with pytest.raises(ValueError, match="allowed_origins entry"):
        BrokerConfig(allowed_origins=value).validate()


# --------------------------------------------------------------------------- websocket


async def test_a_foreign_origin_websocket_upgrade_is_refused_403(make_client):
    client = await make_client(**ANON)
    async with client.get(MOUNT, headers=upgrade_headers(EVIL)) as response:
        assert response.status == 403
        text = await response.text()
    assert EVIL in text and "--allowed-origins" in text
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(MOUNT, headers={"Origin": EVIL})
    assert refused.value.status == 403
    assert not broker_sessions(client)


def broker_sessions(client: TestClient) -> dict:
    return client.server.app[BROKER].sessions


@pytest.mark.parametrize("origin", [CRM, None, "own"])
async def test_websocket_from_a_listed_origin_its_own_or_none(make_client, origin):
    client = await make_client(allowed_origins=CRM, **ANON)
    origin = own_origin(client) if origin == "own" else origin
    assert (await websocket_handshake(client, origin))["successful"] is True


async def test_lean_path_serves_an_allowed_origin_s_websocket_itself(make_client, http_server):
    if http_server != "lean":
        pytest.skip("the lean path only")
    client = await make_client(allowed_origins=CRM, **ANON)
    async with client.ws_connect(MOUNT, headers={"Origin": CRM}) as ws:
        assert len(client.server.runner.lean.websockets) == 1
        await ws.send_str(json.dumps([handshake_message(connection_types=["websocket"], id="h")]))
        assert (await ws.receive(timeout=WAIT)).type == WSMsgType.TEXT


async def test_any_origin_with_star(make_client):
    client = await make_client(allowed_origins="*", **ANON)
    assert (await websocket_handshake(client, EVIL))["successful"] is True
    reply = await long_polling_session(client, EVIL)
    assert reply.status == 200
    assert_cors(reply.headers, EVIL)  # the origin itself, never * (credentials are allowed)


# --------------------------------------------------------------------------- long-polling and callback-polling


async def test_a_foreign_origin_long_poll_is_refused_403(make_client, http_server):
    client = await make_client(allowed_origins=CRM, **ANON)
    reply = await post_raw(client, [handshake_message(id="h")], headers={"Origin": EVIL})
    assert reply.status == 403
    assert "--allowed-origins" in reply.text
    assert_no_cors(reply.headers)
    assert not broker_sessions(client)
    # A form body (a "simple" cross-origin request a page may send without a preflight) too.
    form = await post_raw(client, data={"message": json.dumps([handshake_message()])}, headers={"Origin": EVIL},
                          path=MOUNT + "/handshake")
    assert form.status == 403
    assert not broker_sessions(client)


async def test_a_listed_origin_s_long_polls_carry_cors_headers(make_client, http_server):
    client = await make_client(allowed_origins=f"http://localhost:3000,{CRM}", **ANON)
    reply = await long_polling_session(client, CRM)
    assert reply.status == 200
    assert reply_to(reply.json(), "/meta/connect", "c")["successful"] is True
    assert_cors(reply.headers, CRM)
    assert "X-CSRF-TOKEN" in reply.headers["Access-Control-Expose-Headers"]
    assert served_lean(reply.headers) == (http_server == "lean")


async def test_an_error_answer_to_a_listed_origin_carries_cors_headers(make_client):
    client = await make_client(allowed_origins=CRM, **ANON)
    reply = await post_raw(client, data=b"not json", headers={"Origin": CRM, "Content-Type": "application/json"})
    assert reply.status == 400
    assert_cors(reply.headers, CRM)  # the page can read why


@pytest.mark.parametrize("origin", [None, "own", "own-https"])
async def test_same_origin_and_no_origin_long_polls_get_no_cors_headers(make_client, http_server, origin):
    client = await make_client(**ANON)
    origin = {"own": own_origin(client), "own-https": own_origin(client, "https")}.get(origin)
    reply = await long_polling_session(client, origin)
    assert reply.status == 200
    assert_no_cors(reply.headers)
    assert served_lean(reply.headers) == (http_server == "lean")


async def test_callback_polling_from_a_listed_origin_and_a_foreign_one(make_client):
    client = await make_client(allowed_origins=CRM, **ANON)
    params = {"message": json.dumps([handshake_message(connection_types=["callback-polling"], id="h")]),
              "jsonp": "cb"}
    async with client.get(MOUNT, params=params, headers={"Origin": CRM}) as response:
        assert response.status == 200
        assert (await response.text()).startswith("cb(")
        assert_cors(response.headers, CRM)
    async with client.get(MOUNT, params=params, headers={"Origin": EVIL}) as response:
        assert response.status == 403
    async with client.get(MOUNT, params=params) as response:  # a <script> sends no Origin
        assert response.status == 200


# --------------------------------------------------------------------------- preflight


def preflight_headers(origin: str, method: str = "POST", headers: str = "content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


@pytest.mark.parametrize("path", [MOUNT, MOUNT + "/handshake"])
async def test_preflight_of_the_mount(make_client, path):
    client = await make_client(allowed_origins=CRM, **ANON)
    async with client.options(path, headers=preflight_headers(CRM)) as response:
        assert response.status == 204
        assert_cors(response.headers, CRM)
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert response.headers["Access-Control-Allow-Headers"] == "content-type"
        assert int(response.headers["Access-Control-Max-Age"]) > 0
    async with client.options(path, headers=preflight_headers(EVIL)) as response:
        assert response.status == 403
        assert_no_cors(response.headers)
        assert "--allowed-origins" in await response.text()


async def test_options_that_is_no_preflight_is_left_to_the_endpoint(make_client):
    client = await make_client(allowed_origins=CRM, **ANON)
    async with client.options(MOUNT) as response:
        assert response.status == 405


async def test_paths_outside_the_mount_and_apis_are_not_checked(make_client):
    client = await make_client(allowed_origins=CRM, **ANON)
    async with client.get("/health", headers={"Origin": EVIL}) as response:
        assert response.status == 200
        assert_no_cors(response.headers)


# --------------------------------------------------------------------------- the REST APIs


@pytest.fixture
async def rest_client(aiohttp_client, http_server):
    app = create_app(BrokerConfig(allowed_origins=CRM))
    users = UserDirectory()
    users.add("agent1", "agent1-pw", agent_id="1001")
    install_contact_center(app, app[BROKER], ContactCenterConfig(), users=users)
    return await aiohttp_client(LeanTestServer(app) if http_server == "lean" else app)


BASIC = {"Authorization": "Basic " + base64.b64encode(b"agent1:agent1-pw").decode()}


@pytest.mark.parametrize("path", ["/api/v2/me", "/api/v2/notifications", "/agentgateway/resource/onlineagent/1001"])
async def test_preflight_of_the_rest_apis(rest_client, path):
    asked = "content-type, x-csrf-token, guid"
    async with rest_client.options(path, headers=preflight_headers(CRM, "PUT", asked)) as response:
        assert response.status == 204
        assert_cors(response.headers, CRM)
        assert "PUT" in response.headers["Access-Control-Allow-Methods"]
        assert response.headers["Access-Control-Allow-Headers"] == asked
    async with rest_client.options(path, headers=preflight_headers(EVIL, "PUT", asked)) as response:
        assert response.status == 403
        assert_no_cors(response.headers)


async def test_rest_answers_to_a_listed_origin_expose_the_csrf_token(rest_client):
    async with rest_client.get("/api/v2/me", headers={"Origin": CRM, **BASIC}) as response:
        assert response.status == 200
        assert_cors(response.headers, CRM)
        assert "X-CSRF-TOKEN" in response.headers["Access-Control-Expose-Headers"]
        assert response.headers["X-CSRF-TOKEN"]
    rest_client.session.cookie_jar.clear()
    async with rest_client.get("/api/v2/me", headers={"Origin": CRM}) as response:
        assert response.status == 401  # not logged in: readable by the page all the same
        assert_cors(response.headers, CRM)


async def test_rest_requests_from_a_foreign_origin_are_refused(rest_client):
    async with rest_client.get("/api/v2/me", headers={"Origin": EVIL, **BASIC}) as response:
        assert response.status == 403
        assert_no_cors(response.headers)
    body = json.dumps({"operationName": "Ready"})
    async with rest_client.post("/api/v2/me", data=body, headers={"Origin": EVIL, "Content-Type": "text/plain",
                                                                   **BASIC}) as response:
        assert response.status == 403
    async with rest_client.put("/agentgateway/resource/onlineagent/1001", data="{}",
                               headers={"Origin": EVIL}) as response:
        assert response.status == 403
