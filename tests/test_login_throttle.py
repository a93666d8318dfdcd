"""Login throttling: the sliding window per user and per address, the lockout, and how the CometD
handshake (long-polling and websocket, on both HTTP paths) and the contact-center REST API answer it."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from bayeux_helpers import both_http_servers, handshake, handshake_message
from conftest import USERS
from prometheus_client.parser import text_string_to_metric_families
from ws_helpers import Browsers

from channels.app import ContactCenterConfig, install_contact_center
from channels.auth import User, UserDirectory, hash_password
from channels.cluster import forwarded_client
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER
from cometd_broker.login_throttle import LoginThrottle, address_key, claimed_login, retry_seconds, shown

__all__ = ["both_http_servers"]  # the end-to-end handshake tests run on the lean path and on aiohttp

WINDOW = 1.5  # seconds: end-to-end tests wait for the lockout to pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def fail(throttle: LoginThrottle, user: str | None, address: str | None, times: int = 1) -> list[float]:
    return [throttle.failed(user, address, "rest", "wrong password") for _ in range(times)]


# ---------------------------------------------------------------------------- the throttle alone


class TestWindowAndLockout:
    def test_the_21st_attempt_is_refused_even_with_the_right_password_until_the_window_passes(self, clock):
        throttle = LoginThrottle(20, 60, clock=clock)
        for _ in range(20):
            assert throttle.check("alice", "10.0.0.1", "rest") == 0
            assert throttle.failed("alice", "10.0.0.1", "rest", "wrong password") == 0
        assert throttle.check("alice", "10.0.0.1", "rest") == 60
        clock.now += 59
        assert throttle.check("alice", "10.0.0.2", "rest") == pytest.approx(1)  # the user is locked ...
        assert throttle.check("bob", "10.0.0.1", "rest") == pytest.approx(1)  # ... and so is the address
        assert throttle.check("bob", "10.0.0.2", "rest") == 0
        clock.now += 1
        assert throttle.check("alice", "10.0.0.1", "rest") == 0
        assert throttle.succeeded("alice", "10.0.0.1", "rest") == 0
        assert throttle.throttled == {"rest": 3} and throttle.failures == {"rest": 20}
        assert throttle.lockouts == {"user": 1, "address": 1}

    def test_the_window_slides_failures_older_than_it_are_forgotten(self, clock):
        throttle = LoginThrottle(5, 60, clock=clock)
        fail(throttle, "alice", None, 4)
        clock.now += 30
        fail(throttle, "alice", None, 1)  # 5 within 60 s
        assert throttle.check("alice", None, "rest") == 60
        throttle = LoginThrottle(5, 60, clock=clock)
        fail(throttle, "alice", None, 4)
        clock.now += 61
        fail(throttle, "alice", None, 4)  # the first four have left the window
        assert throttle.check("alice", None, "rest") == 0
        fail(throttle, "alice", None, 1)
        assert throttle.check("alice", None, "rest") > 0

    def test_the_count_starts_afresh_after_a_lockout(self, clock):
        throttle = LoginThrottle(3, 10, clock=clock)
        fail(throttle, "alice", None, 3)
        clock.now += 10
        assert fail(throttle, "alice", None, 2) == [0, 0]
        assert throttle.check("alice", None, "rest") == 0

    def test_one_address_spraying_many_users_is_locked(self, clock):
        throttle = LoginThrottle(5, 60, clock=clock)
        for index in range(5):
            fail(throttle, f"user{index}", "192.0.2.7")
        assert throttle.check("someone-else", "192.0.2.7", "rest") == 60
        assert throttle.check("user0", "192.0.2.8", "rest") == 0  # each user failed only once
        assert throttle.lockouts == {"user": 0, "address": 1}

    def test_a_success_forgets_the_users_failures_not_the_addresss(self, clock):
        throttle = LoginThrottle(5, 60, clock=clock)
        fail(throttle, "alice", "192.0.2.7", 4)
        assert throttle.succeeded("alice", "192.0.2.7", "rest") == 0
        fail(throttle, "alice", "192.0.2.8", 4)
        assert throttle.check("alice", "192.0.2.8", "rest") == 0  # alice's count restarted at the success
        fail(throttle, "bob", "192.0.2.7")  # the address's fifth
        assert throttle.check("carol", "192.0.2.7", "rest") == 60

    def test_a_success_that_did_not_check_the_users_password_forgets_nothing(self, clock):
        throttle = LoginThrottle(3, 60, clock=clock)
        fail(throttle, "alice", None, 2)
        # bob's session cookie logged the handshake in; the alice it also claimed was never checked.
        assert throttle.succeeded("alice", None, "handshake", proven=False) == 0
        fail(throttle, "alice", None, 1)
        assert throttle.check("alice", None, "rest") == 60

    def test_an_attempt_that_finishes_after_a_lockout_started_is_refused(self, clock):
        throttle = LoginThrottle(3, 60, clock=clock)
        # Four concurrent guesses were admitted; three fail first and lock the user.
        assert all(throttle.check("alice", "192.0.2.7", "rest") == 0 for _ in range(4))
        assert fail(throttle, "alice", "192.0.2.7", 3) == [0, 0, 0]
        assert throttle.succeeded("alice", "192.0.2.7", "rest") == 60  # even the right one learns nothing
        assert throttle.failed("alice", "192.0.2.7", "rest", "wrong password") == 60

    def test_zero_max_failures_never_locks_but_still_counts(self, clock):
        throttle = LoginThrottle(0, 60, clock=clock)
        fail(throttle, "alice", "192.0.2.7", 100)
        assert throttle.check("alice", "192.0.2.7", "rest") == 0
        assert throttle.failures == {"rest": 100} and len(throttle) == 0

    def test_invalid_limits_are_refused(self):
        for args in ((-1, 60), (20, 0), (20, -1)):
            with pytest.raises(ValueError):
                LoginThrottle(*args)
        with pytest.raises(ValueError):
            LoginThrottle(20, 60, max_keys=0)

    def test_retry_seconds_rounds_up_and_is_never_zero(self):
        assert [retry_seconds(w) for w in (0.01, 1.0, 1.2, 59.9)] == [1, 1, 2, 60]


class TestMemoryBound:
    def test_a_spray_of_users_and_addresses_keeps_at_most_max_keys(self, clock):
        throttle = LoginThrottle(20, 60, max_keys=50, clock=clock)
        for index in range(5000):
            fail(throttle, f"user{index}", f"10.{index // 65536}.{index // 256 % 256}.{index % 256}")
        assert len(throttle) == 50
        assert throttle.stats()["tracked"] == 50

    def test_the_one_idle_longest_is_evicted_first(self, clock):
        throttle = LoginThrottle(3, 60, max_keys=4, clock=clock)
        fail(throttle, "alice", None, 2)
        fail(throttle, "bob", None, 1)
        fail(throttle, "alice", None, 1)  # alice locked, and now the most recent
        fail(throttle, "carol", None, 1)
        fail(throttle, "dave", None, 1)
        fail(throttle, "erin", None, 1)  # evicts bob, the one idle the longest
        assert len(throttle) == 4
        assert throttle.check("alice", None, "rest") > 0

    def test_idle_entries_are_swept_once_their_window_passed(self, clock):
        throttle = LoginThrottle(20, 60, clock=clock)
        for index in range(30):
            fail(throttle, f"user{index}", None)
        clock.now += 61
        fail(throttle, "late", None)
        assert len(throttle) == 1

    def test_long_user_names_are_counted_by_a_bounded_prefix(self, clock):
        throttle = LoginThrottle(2, 60, clock=clock)
        fail(throttle, "x" * 10_000 + "a", None)
        fail(throttle, "x" * 10_000 + "b", None)
        assert throttle.check("x" * 200, None, "rest") > 0


class TestKeysAndNames:
    def test_ipv6_addresses_are_counted_by_their_64_network(self):
        assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
        assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
        assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
        assert address_key("192.0.2.7") == "192.0.2.7"
        assert address_key("fe80::1%eth0") == "fe80::/64"
        assert address_key("unix-socket") == "unix-socket"
        assert address_key(None) is None and address_key("") is None

    def test_a_handshake_claims_the_user_of_ext_authentication_or_basic(self):
        def claim(ext: Any = None, header: str | None = None) -> tuple[bool, str | None]:
            message = {"channel": "/meta/handshake"} if ext is None else {"channel": "/meta/handshake", "ext": ext}
            return claimed_login({"Authorization": header} if header else {}, message)

        assert claim({"authentication": {"user": "alice", "password": "x"}}) == (True, "alice")
        assert claim({"authentication": {"token": "t"}}) == (True, None)
        assert claim({"authentication": "nonsense"}) == (True, None)
        assert claim(header="Basic " + base64.b64encode(b"bob:pw").decode()) == (True, "bob")
        assert claim(header="Basic !!!") == (True, None)
        assert claim(header="Bearer abc") == (True, None)
        assert claim({"ack": True}) == (False, None)  # a session cookie alone guesses no password
        assert claim() == (False, None)

    def test_log_lines_show_client_strings_safely(self):
        assert shown("alice") == "alice"
        assert shown(None) == "-"
        assert shown("evil\nlogin ok user=root") == repr("evil\nlogin ok user=root")
        assert len(shown("y" * 1000)) < 80

    def test_the_cluster_leader_counts_the_address_its_own_forwarding_appended(self):
        request = make_mocked_request("GET", "/api/v2/me", headers=[("X-Forwarded-For", "6.6.6.6"),
                                                                    ("X-Forwarded-For", "192.0.2.7")])
        assert forwarded_client(request) == "192.0.2.7"
        assert forwarded_client(make_mocked_request("GET", "/", headers={"X-Forwarded-For": "1.1.1.1, 192.0.2.8"})) \
            == "192.0.2.8"


class TestConfiguration:
    def test_defaults_and_validation(self):
        config = BrokerConfig()
        assert (config.login_max_failures, config.login_window, config.login_tracked_keys) == (20, 60.0, 10000)
        for bad in ({"login_max_failures": -1}, {"login_window": 0}, {"login_tracked_keys": 0}):
            with pytest.raises(ValueError, match="login_"):
                BrokerConfig(**bad).validate()

    def test_the_broker_builds_its_throttle_from_the_options(self):
        app = create_app(BrokerConfig(login_max_failures=7, login_window=9, login_tracked_keys=11))
        throttle = app[BROKER].login_throttle
        assert (throttle.max_failures, throttle.window, throttle.max_keys) == (7, 9, 11)


# ---------------------------------------------------------------------------- the CometD handshake


def wrong(user: str = "alice") -> dict[str, Any]:
    return {"authentication": {"user": user, "password": "not-" + USERS.get(user, "it")}}


def right(user: str = "alice") -> dict[str, Any]:
    return {"authentication": {"user": user, "password": USERS[user]}}


def assert_throttled(reply: dict[str, Any], window: float = WINDOW) -> None:
    assert reply["successful"] is False, reply
    assert reply["error"].startswith("429::too_many_failed_logins (retry in "), reply
    assert reply["advice"]["reconnect"] == "handshake"
    assert 0 < reply["advice"]["interval"] <= retry_seconds(window) * 1000
    assert reply["ext"]["authentication"]["retryAfter"] >= 1
    assert "clientId" not in reply


async def test_long_polling_handshake_21st_is_refused_then_the_right_password_works_after_the_window(
        make_client, caplog):
    client = await make_client(login_window=WINDOW)
    caplog.set_level(logging.DEBUG, "cometd_broker.login")
    for _ in range(20):
        [reply] = await handshake(client, ext=wrong())
        assert reply["error"] == "403::handshake_denied"
    [reply] = await handshake(client, ext=right())  # same HTTP status as a denied handshake: 200
    assert_throttled(reply)
    [reply] = await handshake(client, ext=right("bob"))  # the address is locked too
    assert_throttled(reply)
    await asyncio.sleep(WINDOW + 0.1)
    [reply] = await handshake(client, ext=right())
    assert reply["successful"] is True, reply

    failures = [r for r in caplog.records if r.getMessage().startswith("login failed")]
    assert len(failures) == 20 and all(r.levelno == logging.WARNING for r in failures)
    line = failures[0].getMessage()
    assert "user=alice" in line and "address=127.0.0.1" in line and "via=handshake" in line, line
    assert not any("alice-secret" in r.getMessage() or "not-alice-secret" in r.getMessage()
                   for r in caplog.records)
    locked = [r.getMessage() for r in caplog.records if r.getMessage().startswith("login locked")]
    assert sorted(m.split(" for ")[0] for m in locked) == ["login locked address=127.0.0.1", "login locked user=alice"]


async def test_basic_header_handshakes_are_counted_per_user(make_client):
    client = await make_client(login_max_failures=3, login_window=WINDOW)

    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    for _ in range(3):
        [reply] = await handshake(client, headers=basic("carol", "guess"))
        assert reply["error"] == "403::handshake_denied"
    [reply] = await handshake(client, headers=basic("carol", USERS["carol"]))
    assert_throttled(reply)


async def test_per_address_lockout_across_users_and_token_guesses(make_client):
    client = await make_client(login_max_failures=3, login_window=WINDOW)
    for ext in (wrong("alice"), wrong("bob"), {"authentication": {"token": "guessed"}}):
        [reply] = await handshake(client, ext=ext)
        assert reply["error"] == "403::handshake_denied"
    [reply] = await handshake(client, ext=right("carol"))  # carol never failed: her address did
    assert_throttled(reply)


async def test_handshakes_without_credentials_are_not_failed_logins(make_client):
    client = await make_client(login_max_failures=2)
    for _ in range(5):
        [reply] = await handshake(client)
        assert reply["error"] == "403::handshake_denied"
    [reply] = await handshake(client, ext=right())
    assert reply["successful"] is True
    assert len(client.app[BROKER].login_throttle) == 0


async def test_websocket_handshake_is_throttled_alike(make_client):
    client = await make_client(login_max_failures=3, login_window=WINDOW)
    browsers = Browsers()
    try:
        peer = await browsers.open(client).websocket()
        types = ("websocket", "long-polling")
        for _ in range(3):
            reply = await peer.request(handshake_message(connection_types=types, ext=wrong()))
            assert reply["error"] == "403::handshake_denied"
        assert_throttled(await peer.request(handshake_message(connection_types=types, ext=right())))
        await asyncio.sleep(WINDOW + 0.1)
        assert (await peer.request(handshake_message(connection_types=types, ext=right())))["successful"] is True
    finally:
        await browsers.close()


async def test_handshake_metrics_count_failures_and_refusals(make_client):
    client = await make_client(login_max_failures=2, login_window=WINDOW)
    for _ in range(2):
        await handshake(client, ext=wrong())
    await handshake(client, ext=right())
    page = await scrape(client)
    assert page[("cometd_login_failures_total", (("via", "handshake"),))] == 2
    assert page[("cometd_login_throttled_total", (("via", "handshake"),))] == 1
    assert page[("cometd_login_failures_total", (("via", "rest"),))] == 0
    assert page[("cometd_login_lockouts_total", (("key", "user"),))] == 1
    assert page[("cometd_login_lockouts_total", (("key", "address"),))] == 1
    assert page[("cometd_login_tracked_keys", ())] == 2
    assert page[("cometd_handshakes_total", (("result", "denied"),))] == 3


async def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with client.get("/metrics") as response:
        text = await response.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


# ---------------------------------------------------------------------------- the contact-center REST API

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}


def basic(user: str, password: str | None = None) -> dict[str, str]:
    secret = PASSWORDS[user] if password is None else password
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


AGENT_IDS = {"alice": "101", "bob": "102"}


async def contact_center(aiohttp_client: Any, **options: Any) -> Any:
    users = UserDirectory(User(name, hash_password(pw, iterations=1), agent_id=AGENT_IDS[name])
                          for name, pw in PASSWORDS.items())
    app = create_app(BrokerConfig(**options))
    install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=False), users=users)
    return await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())  # every call logs in


async def get_me(client: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    async with client.get("/api/v2/me", headers=headers) as response:
        return response.status, await response.json(), response.headers


async def test_rest_21st_login_is_429_with_the_envelope_and_retry_after_then_works_after_the_window(
        aiohttp_client, caplog):
    client = await contact_center(aiohttp_client, login_window=WINDOW)
    caplog.set_level(logging.INFO, "cometd_broker.login")
    for _ in range(20):
        status, body, _ = await get_me(client, basic("alice", "guess"))
        assert (status, body["statusCode"]) == (401, 20)
    status, body, headers = await get_me(client, basic("alice"))
    assert status == 429
    assert body == {"statusCode": 20, "statusMessage": f"too many failed logins: retry in {retry_seconds(WINDOW)} s"}
    assert headers["Retry-After"] == str(retry_seconds(WINDOW))
    assert "WWW-Authenticate" not in headers
    await asyncio.sleep(WINDOW + 0.1)
    status, body, _ = await get_me(client, basic("alice"))
    assert (status, body["statusCode"]) == (200, 0)

    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("login failed")]
    assert len(failures) == 20
    assert "user=alice address=127.0.0.1 via=rest" in failures[0]
    assert not any("guess" in r.getMessage() or "alice-pw" in r.getMessage() for r in caplog.records)


async def test_rest_and_handshake_share_one_budget_and_a_session_cookie_still_handshakes(aiohttp_client):
    client = await contact_center(aiohttp_client, login_max_failures=3, login_window=WINDOW)
    async with client.get("/api/v2/me", headers=basic("bob")) as response:  # bob logs in before the attack
        assert response.status == 200
        cookie = response.cookies["JSESSIONID"].value
    for _ in range(3):
        assert (await get_me(client, basic("alice", "guess")))[0] == 401
    [reply] = await handshake(client, path="/api/v2/notifications", headers=basic("alice"))
    assert_throttled(reply)
    assert (await get_me(client, basic("bob")))[0] == 429  # the address is locked for REST logins too
    # bob's desktop presents its session cookie, no password: the lockout does not cut it off.
    [reply] = await handshake(client, path="/api/v2/notifications", cookies={"JSESSIONID": cookie})
    assert reply["successful"] is True, reply
    page = await scrape(client)
    assert page[("cometd_login_failures_total", (("via", "rest"),))] == 3
    assert page[("cometd_login_throttled_total", (("via", "rest"),))] == 1
    assert page[("cometd_login_throttled_total", (("via", "handshake"),))] == 1


async def test_huawei_gateway_sign_in_shares_the_throttle_under_the_agents_login_name(aiohttp_client, caplog):
    client = await contact_center(aiohttp_client, login_max_failures=3, login_window=WINDOW)
    caplog.set_level(logging.INFO, "cometd_broker.login")

    async def sign_in(agent_id: str, password: str) -> dict[str, Any]:
        async with client.put(f"/agentgateway/resource/onlineagent/{agent_id}",
                              data=f'{{"password": "{password}"}}',
                              headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200  # Huawei clients branch on retcode
            return await response.json()

    for _ in range(2):
        assert (await sign_in("101", "guess"))["retcode"] == "000-002"
    assert (await get_me(client, basic("alice", "guess")))[0] == 401  # alice's third failure, over REST
    answer = await sign_in("101", PASSWORDS["alice"])
    assert answer["retcode"] == "000-002" and "too many failed sign-ins" in answer["message"], answer
    assert "user=alice address=127.0.0.1 via=gateway" in caplog.records[0].getMessage()
    await asyncio.sleep(WINDOW + 0.1)
    assert (await sign_in("101", PASSWORDS["alice"]))["retcode"] == "0"
    page = await scrape(client)
    assert page[("cometd_login_failures_total", (("via", "gateway"),))] == 2
    assert page[("cometd_login_throttled_total", (("via", "gateway"),))] == 1
