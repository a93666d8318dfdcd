"""/api/v2/me and channel readiness through the real product wiring (install_contact_center):
one login (Basic -> JSESSIONID + CSRF token) drives both the REST API and the CometD handshake."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import pytest
from desktop_helpers import BrowserSession

from channels.app import ContactCenterConfig, install_contact_center, install_engine
from channels.auth import HttpSessions, User, UserDirectory, hash_password
from channels.model import SMS
from channels.store import StateStore
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
WAIT = 3.0


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()}


@pytest.fixture
async def server(aiohttp_server):
    users = UserDirectory(User(name, hash_password(pw, iterations=1), first_name=name.capitalize(),
                               agent_id=str(101 + i)) for i, (name, pw) in enumerate(PASSWORDS.items()))
    app = create_app(BrokerConfig())
    install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=True), users=users)
    return await aiohttp_server(app)


class Desktop(BrowserSession):
    """One browser with the CSRF token of its login."""

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.csrf = ""

    async def login(self, user: str) -> dict[str, Any]:
        async with self.http.get(self.url("/api/v2/me"), headers=basic(user)) as response:
            assert response.status == 200
            self.csrf = response.headers["X-CSRF-TOKEN"]
            assert response.headers["X-CSRF-HEADER"] == "X-CSRF-TOKEN"
            return await response.json()

    async def rest(self, method: str, path: str, body: Any = None, *, csrf: bool = True) -> tuple[int, Any]:
        headers = {"X-CSRF-TOKEN": self.csrf} if csrf else {}
        async with self.http.request(method, self.url(path), json=body, headers=headers) as response:
            return response.status, await response.json()

    async def events(self) -> list[dict[str, Any]]:
        async with asyncio.timeout(WAIT):
            replies = await self.bayeux([{"channel": "/meta/connect", "clientId": self.client_id,
                                          "connectionType": "long-polling", "advice": {"timeout": 1000}}])
        return [m for m in replies if not m["channel"].startswith("/meta/")]


@pytest.fixture
async def desktops(server):
    opened: list[Desktop] = []

    def open_desktop() -> Desktop:
        desktop = Desktop(server)
        opened.append(desktop)
        return desktop

    yield open_desktop
    for desktop in opened:
        await desktop.close()


async def test_get_me_with_and_without_subresources(desktops):
    alice = desktops()
    me = await alice.login("alice")
    user = dict(me["user"])
    assert user.pop("uri").endswith("/api/v2/users/alice")
    assert me["statusCode"] == 0
    assert user == {"id": "alice", "userName": "alice", "firstName": "Alice", "lastName": "", "roles": ["agent"],
                    "path": "/users/alice", "employeeId": "101"}
    status, full = await alice.rest("GET", "/api/v2/me?subresources=*")
    assert status == 200 and full["user"]["channels"] == [] and full["user"]["devices"] == []


async def test_ready_needs_a_contact_center_session_and_is_published_on_channels(desktops):
    alice = desktops()
    await alice.login("alice")
    await alice.listen("/v2/me/channels")
    status, reply = await alice.rest("POST", "/api/v2/me/channels/sms", {"operationName": "Ready"})
    assert reply["statusCode"] == 2 and "StartContactCenterSession" in reply["statusMessage"]
    assert set(reply) == {"statusCode", "statusMessage"}

    status, reply = await alice.rest("POST", "/api/v2/me", {"operationName": "StartContactCenterSession",
                                                            "channels": ["sms", "chat"]})
    assert (status, reply) == (200, {"statusCode": 0})
    status, reply = await alice.rest("POST", "/api/v2/me/channels/sms", {"operationName": "Ready"})
    assert reply == {"statusCode": 0}
    states = [(c["channel"], c["userState"]["state"]) for e in await alice.events()
              for c in e["data"]["channels"]]
    assert states == [("sms", "NotReady"), ("chat", "NotReady"), ("sms", "Ready")]

    status, reply = await alice.rest("POST", "/api/v2/me/channels/sms", {"operationName": "NotReady",
                                                                         "reason": "Lunch"})
    assert reply == {"statusCode": 0}
    [event] = await alice.events()
    assert event["channel"] == "/v2/me/channels"
    assert event["data"]["channels"][0]["userState"]["state"] == "NotReady"
    status, me = await alice.rest("GET", "/api/v2/me?subresources=*")
    assert {c["channel"]: c["userState"]["state"] for c in me["user"]["channels"]} == {
        "sms": "NotReady", "chat": "NotReady"}


async def test_other_agents_never_see_my_channel_events(desktops):
    alice, bob = desktops(), desktops()
    await alice.login("alice")
    await bob.login("bob")
    await bob.listen("/v2/me/channels", "/**")
    await alice.rest("POST", "/api/v2/me", {"operationName": "StartContactCenterSession", "channels": ["chat"]})
    await alice.rest("POST", "/api/v2/me/channels/chat", {"operationName": "Ready"})
    assert await bob.events() == []


@pytest.mark.parametrize(("body", "code", "text"), [
    ({"operationName": "StartContactCenterSession", "channels": ["voice"]}, 10, "unknown channel 'voice'"),
    ({"operationName": "StartContactCenterSession", "channels": "sms"}, 10, "'channels' must be an array"),
    ({"operationName": "StartContactCenterSession"}, 1, "missing parameter 'channels'"),
    ({"operationName": "Dance"}, 10, "unknown operationName 'Dance'"),
    ({}, 1, "missing parameter 'operationName'"),
])
async def test_bad_session_requests_are_specific(desktops, body, code, text):
    alice = desktops()
    await alice.login("alice")
    _, reply = await alice.rest("POST", "/api/v2/me", body)
    assert reply["statusCode"] == code and text in reply["statusMessage"], reply


async def test_partial_start_reports_each_channel(desktops):
    alice = desktops()
    await alice.login("alice")
    _, reply = await alice.rest("POST", "/api/v2/me", {"operationName": "StartContactCenterSession",
                                                       "channels": ["sms", "voice"]})
    assert reply["statusCode"] == 7
    assert [(c["channel"], c["statusCode"]) for c in reply["channels"]] == [("sms", 0), ("voice", 10)]


async def test_unknown_channel_and_operation(desktops):
    alice = desktops()
    await alice.login("alice")
    status, reply = await alice.rest("POST", "/api/v2/me/channels/fax", {"operationName": "Ready"})
    assert (status, reply["statusCode"]) == (404, 6)
    await alice.rest("POST", "/api/v2/me", {"operationName": "StartContactCenterSession", "channels": ["sms"]})
    _, reply = await alice.rest("POST", "/api/v2/me/channels/sms", {"operationName": "Dance"})
    assert reply["statusCode"] == 10 and "Ready, NotReady" in reply["statusMessage"]


async def test_csrf_token_is_required_on_post(desktops):
    alice = desktops()
    await alice.login("alice")
    status, reply = await alice.rest("POST", "/api/v2/me", {"operationName": "EndContactCenterSession"},
                                     csrf=False)
    assert status == 403 and reply == {"statusCode": 3, "statusMessage": "Missing or invalid Csrf token"}


async def test_end_session_invalidates_the_login(desktops):
    alice = desktops()
    await alice.login("alice")
    _, reply = await alice.rest("POST", "/api/v2/me", {"operationName": "EndContactCenterSession"})
    assert reply == {"statusCode": 0}
    status, reply = await alice.rest("GET", "/api/v2/me")
    assert status == 401 and reply["statusCode"] == 20


async def test_bayeux_errors_keep_their_own_format_on_both_mounts(desktops):
    alice = desktops()
    for mount in ("/cometd", "/api/v2/notifications"):
        async with alice.http.post(alice.url(mount), data=b"{not json",
                                   headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            [reply] = await response.json()
        assert reply["channel"] == "/meta/unsuccessful" and reply["error"].startswith("400::body is not valid JSON")


async def test_handshake_without_login_is_denied(desktops):
    stranger = desktops()
    [reply] = await stranger.bayeux([{"channel": "/meta/handshake", "version": "1.0",
                                      "supportedConnectionTypes": ["long-polling"]}])
    assert reply["successful"] is False and reply["error"] == "403::handshake_denied"
    assert reply["advice"]["reconnect"] == "none"


async def test_an_unreachable_cluster_engine_gives_a_clear_503(server, desktops, monkeypatch):
    """Clustered and Redis is down: the REST call says so instead of a bare internal error."""
    from cometd_broker.engine import EngineUnavailable

    alice = desktops()
    await alice.login("alice")
    await alice.rest("POST", "/api/v2/me", {"operationName": "StartContactCenterSession", "channels": ["sms"]})

    async def unreachable(*args, **kwargs):
        raise EngineUnavailable("redis connection lost")

    monkeypatch.setattr(server.app[BROKER], "publish_to_user", unreachable)
    status, reply = await alice.rest("POST", "/api/v2/me/channels/sms", {"operationName": "Ready"})
    assert status == 503
    assert reply == {"statusCode": 4, "statusMessage": "notification service unavailable, retry later "
                                                       "(redis connection lost)"}


async def test_a_cluster_store_keeps_sessions_and_readiness_for_the_next_leader(aiohttp_server, tmp_path) -> None:
    """keep_readiness (a cluster): the next leader, on the same store and the same shared HTTP sessions,
    has alice logged in and Ready, and offers her work without her calling anything again."""
    users = UserDirectory(User(name, hash_password(pw, iterations=1)) for name, pw in PASSWORDS.items())
    sessions = HttpSessions()  # shared by every leader, as a cluster's sessions in Redis are

    async def leader() -> tuple[Any, Any]:
        app = create_app(BrokerConfig())
        center = install_engine(app, app[BROKER], ContactCenterConfig(csrf=False), users, sessions,
                                StateStore(tmp_path / "state.db"), keep_readiness=True)
        return center, await aiohttp_server(app)

    async with aiohttp.ClientSession() as http:
        async def rest(server: Any, method: str, path: str, body: Any = None) -> dict[str, Any]:
            async with http.request(method, server.make_url(path), json=body, headers=basic("alice")) as response:
                return await response.json()

        async def states(server: Any) -> dict[str, str]:
            channels = (await rest(server, "GET", "/api/v2/me?subresources=*"))["user"]["channels"]
            return {c["channel"]: c["userState"]["state"] for c in channels}

        first_center, first = await leader()
        reply = await rest(first, "POST", "/api/v2/me", {"operationName": "StartContactCenterSession",
                                                         "channels": ["sms", "chat"]})
        assert reply["statusCode"] == 0, reply
        assert (await rest(first, "POST", "/api/v2/me/channels/sms", {"operationName": "Ready"}))["statusCode"] == 0
        assert (await rest(first, "POST", "/api/v2/me/channels/chat",
                           {"operationName": "NotReady", "reason": "Break"}))["statusCode"] == 0
        channels = (await rest(first, "GET", "/api/v2/me?subresources=*"))["user"]["channels"]
        offered = (await first_center.conversations.create_inbound(SMS, "Early", text="hi")).id
        assert first_center.conversations.interaction(offered).legs["alice"].state.value == "Invited"
        await first.close()  # the leader is gone; its store and the sessions remain

        second_center, second = await leader()
        assert (await rest(second, "GET", "/api/v2/me?subresources=*"))["user"]["channels"] == channels
        assert await states(second) == {"sms": "Ready", "chat": "NotReady"}
        # The offer pending at the failover is made again, to alice, still Ready: no new login, no Ready.
        assert second_center.conversations.interaction(offered).legs["alice"].state.value == "Invited"
        # Still logged in: the channel operations work without StartContactCenterSession.
        reply = await rest(second, "POST", "/api/v2/me/channels/sms", {"operationName": "NotReady"})
        assert reply["statusCode"] == 0, reply
        await second.close()

        _, third = await leader()  # and that change was kept too
        assert await states(third) == {"sms": "NotReady", "chat": "NotReady"}
