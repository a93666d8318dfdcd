"""channels.auth: password hashes, the users file, HTTP sessions, the REST middleware and the handshake."""

from __future__ import annotations

import base64
import functools
import json
import os
import stat

import pytest
from aiohttp import web

from channels import auth
from channels.auth import (
    ROLES,
    GwsAuthenticator,
    HttpSessions,
    User,
    UserDirectory,
    auth_middleware,
    current_session,
    current_user,
    hash_password,
    verify_password,
)
from channels.gws.envelope import envelope_middleware, ok
from cometd_broker.security import AuthenticationError, HandshakeRequest, Principal

FAST = 1000  # PBKDF2 iterations in tests: the production default takes ~0.1 s per hash


@pytest.fixture
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "hash_password", functools.partial(auth.hash_password, iterations=FAST))


def make_user(user_id: str, password: str, **fields) -> User:
    return User(user_id, hash_password(password, iterations=FAST), **fields)


def basic(user: str, password: str) -> dict[str, str]:
    """An `Authorization: Basic` header (aiohttp's BasicAuth is deprecated)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def users() -> UserDirectory:
    return UserDirectory([
        make_user("alice", "alice-pw", roles=frozenset({"agent", "supervisor"}), first_name="Alice",
                  agent_id="1001"),
        make_user("bob", "bob:pw:with:colons"),
    ])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sessions(clock: FakeClock) -> HttpSessions:
    return HttpSessions(idle_timeout=1800.0, clock=clock)


# --- passwords -------------------------------------------------------------------------------------


def test_hash_round_trip_and_wrong_password():
    hashed = hash_password("s3cret pässword", iterations=FAST)
    scheme, iterations, salt, digest = hashed.split("$")
    assert (scheme, iterations) == ("pbkdf2_sha256", str(FAST))
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert verify_password("s3cret pässword", hashed)
    assert not verify_password("s3cret passwort", hashed)
    assert not verify_password("", hashed)


def test_same_password_hashes_differently():
    assert hash_password("pw", iterations=FAST) != hash_password("pw", iterations=FAST)


def test_default_iterations():
    assert hash_password("pw").split("$")[1] == "200000"


GOOD = hash_password("pw", iterations=FAST)
_, _, GOOD_SALT, GOOD_DIGEST = GOOD.split("$")


@pytest.mark.parametrize("bad", [
    "", "pw", "$$$", "md5$1000$" + GOOD_SALT + "$" + GOOD_DIGEST,
    f"pbkdf2_sha256$abc${GOOD_SALT}${GOOD_DIGEST}",
    f"pbkdf2_sha256$0${GOOD_SALT}${GOOD_DIGEST}",
    f"pbkdf2_sha256$-5${GOOD_SALT}${GOOD_DIGEST}",
    f"pbkdf2_sha256$999999999${GOOD_SALT}${GOOD_DIGEST}",
    f"pbkdf2_sha256$1000$not*base64${GOOD_DIGEST}",
    f"pbkdf2_sha256$1000$${GOOD_DIGEST}",
    f"pbkdf2_sha256$1000${GOOD_SALT}${base64.b64encode(b'short').decode()}",
    f"pbkdf2_sha256$1000${GOOD_SALT}${GOOD_DIGEST}$extra",
])
def test_malformed_hash_never_verifies(bad):
    assert verify_password("pw", GOOD)
    assert verify_password("pw", bad) is False


# --- users -----------------------------------------------------------------------------------------


def test_add_get_and_by_agent_id(fast_hashing):
    directory = UserDirectory()
    added = directory.add("carol", "carol-pw", roles=["supervisor", "agent"], first_name="Carol",
                          last_name="Jones", agent_id="2002")
    assert directory.get("carol") is added
    assert directory.by_agent_id("2002") is added
    assert directory.get("dave") is None and directory.by_agent_id("2003") is None
    assert added.roles == frozenset({"supervisor", "agent"})
    assert (added.first_name, added.last_name) == ("Carol", "Jones")
    assert "carol-pw" not in added.password_hash and verify_password("carol-pw", added.password_hash)
    assert added.principal == Principal("carol", frozenset({"supervisor", "agent"}))
    assert "carol" in directory and "dave" not in directory and len(directory) == 1
    assert [u.user_id for u in directory] == ["carol"]


def test_add_defaults_to_agent_role(fast_hashing):
    user = UserDirectory().add("dave", "pw")
    assert user.roles == frozenset({"agent"}) and user.agent_id is None
    assert set(ROLES) == {"agent", "supervisor", "admin"}


@pytest.mark.parametrize(("user_id", "password", "options", "message"), [
    ("alice", "pw", {}, "user 'alice' already exists"),
    ("carol", "pw", {"agent_id": "1001"}, "agent id 1001 already belongs to user 'alice'"),
    ("", "pw", {}, "user id '' must be 1-64 characters"),
    ("al ice", "pw", {}, "user id 'al ice' must be 1-64 characters"),
    ("x" * 65, "pw", {}, "must be 1-64 characters"),
    ("carol/x", "pw", {}, "must be 1-64 characters"),
    ("carol", "pw", {"roles": ["agent", "root"]}, "unknown role 'root'"),
    ("carol", "pw", {"roles": "agent"}, "not the string 'agent'"),
    ("carol", "pw", {"agent_id": "100"}, "agent id '100' must be a whole number 101..59999"),
    ("carol", "pw", {"agent_id": "60000"}, "101..59999"),
    ("carol", "pw", {"agent_id": "0101"}, "without leading zeros"),
    ("carol", "pw", {"agent_id": "12a"}, "101..59999"),
    ("carol", "pw", {"agent_id": 1002}, "101..59999"),
    ("carol", "", {}, "password must not be empty"),
])
def test_add_validation_errors(users, fast_hashing, user_id, password, options, message):
    before = len(users)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        users.add(user_id, password, **options)
    assert len(users) == before


def test_user_id_edges_accepted(fast_hashing):
    directory = UserDirectory()
    for user_id in ("a", "x" * 64, "first.last@example-1_com"):
        directory.add(user_id, "pw")
    assert len(directory) == 3
    assert directory.add("e", "pw", agent_id="101").agent_id == "101"
    assert directory.add("f", "pw", agent_id="59999").agent_id == "59999"


def test_directory_rejects_duplicates_given_to_constructor():
    with pytest.raises(ValueError, match="user 'bob' already exists"):
        UserDirectory([make_user("bob", "a"), make_user("bob", "b")])


def test_user_validates_its_hash():
    with pytest.raises(ValueError, match="password hash of 'eve' is not a pbkdf2_sha256"):
        User("eve", "plaintext")


def test_authenticate(users):
    assert users.authenticate("alice", "alice-pw") is users.get("alice")
    assert users.authenticate("bob", "bob:pw:with:colons") is users.get("bob")
    assert users.authenticate("alice", "bob:pw:with:colons") is None
    assert users.authenticate("alice", "") is None
    assert users.authenticate("nobody", "alice-pw") is None


def test_unknown_user_still_pays_for_a_hash(users, monkeypatch):
    checked = []
    monkeypatch.setattr(auth, "verify_password", lambda pw, h: checked.append(h) or False)
    assert users.authenticate("nobody", "pw") is None
    assert len(checked) == 1 and checked[0].startswith("pbkdf2_sha256$200000$")


# --- the users file --------------------------------------------------------------------------------


def test_save_load_round_trip(users, tmp_path):
    path = tmp_path / "users.json"
    users.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "alice-pw" not in path.read_text()
    document = json.loads(path.read_text())
    assert document["users"][0] == {
        "userId": "alice", "passwordHash": users.get("alice").password_hash, "roles": ["agent", "supervisor"],
        "firstName": "Alice", "lastName": "", "agentId": "1001"}
    loaded = UserDirectory.load(str(path))
    assert list(loaded) == list(users)
    assert loaded.authenticate("alice", "alice-pw") == users.get("alice")
    assert loaded.by_agent_id("1001").user_id == "alice"
    assert os.listdir(tmp_path) == ["users.json"]  # no temp file left behind


def test_save_replaces_an_existing_file_and_makes_it_private(users, tmp_path):
    path = tmp_path / "users.json"
    path.write_text('{"users": []}')
    path.chmod(0o644)
    users.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(UserDirectory.load(path)) == 2


def test_load_fills_defaults_and_accepts_a_numeric_agent_id(tmp_path):
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"users": [{"userId": "zed", "passwordHash": GOOD, "agentId": 1234}]}))
    zed = UserDirectory.load(path).get("zed")
    assert zed == User("zed", GOOD, frozenset({"agent"}), "", "", "1234")


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ("[]", 'expected an object {"users": [...]}'),
    ('{"users": {}}', 'expected an object {"users": [...]}'),
    ('{"users": [{"userId": "a", "passwordHash": "GOOD"}, 7]}', "users[1]: must be an object"),
    ('{"users": [{"userId": "a", "passwordHash": "GOOD"}, {"userId": "b"}]}',
     "users[1] ('b'): 'passwordHash' must be a string"),
    ('{"users": [{"passwordHash": "GOOD"}]}', "users[0]: 'userId' must be a string"),
    ('{"users": [{"userId": "a", "passwordHash": "GOOD", "role": ["agent"]}]}', "users[0] ('a'): unknown field 'role'"),
    ('{"users": [{"userId": "a", "passwordHash": "GOOD", "roles": "agent"}]}', "'roles' must be an array of strings"),
    ('{"users": [{"userId": "a", "passwordHash": "GOOD", "roles": ["boss"]}]}', "users[0] ('a'): unknown role 'boss'"),
    ('{"users": [{"userId": "a", "passwordHash": "plain"}]}', "users[0] ('a'): password hash of 'a' is not"),
    ('{"users": [{"userId": "a", "passwordHash": "GOOD", "agentId": "7"}]}', "users[0] ('a'): agent id '7'"),
    ('{"users": [{"userId": "a", "passwordHash": "GOOD", "firstName": 3}]}', "first and last name must be strings"),
    ('{"users": [{"userId": "a", "passwordHash": "GOOD"}, {"userId": "a", "passwordHash": "GOOD"}]}',
     "users[1] ('a'): user 'a' already exists"),
])
def test_load_errors_name_the_file_and_the_entry(tmp_path, content, message):
    path = tmp_path / "bad-users.json"
    path.write_text(content.replace("GOOD", GOOD))
    with pytest.raises(ValueError) as caught:
        UserDirectory.load(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_load_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        UserDirectory.load(tmp_path / "absent.json")


# --- HTTP sessions ---------------------------------------------------------------------------------


def test_sessions_have_unguessable_distinct_ids_and_tokens(users, sessions, clock):
    first, second = sessions.create(users.get("alice")), sessions.create(users.get("alice"))
    assert first.session_id != second.session_id and first.csrf_token != second.csrf_token
    assert first.csrf_token != first.session_id
    for secret in (first.session_id, first.csrf_token):
        assert len(secret) >= 22  # >= 128 bits in url-safe base64
    assert (first.user_id, first.created, first.last_seen) == ("alice", clock.now, clock.now)
    assert sessions.get(first.session_id) is first
    assert sessions.get("no-such-session") is None


def test_session_idle_expiry_and_touch(users, sessions, clock):
    session = sessions.create(users.get("alice"))
    clock.now += 1799
    assert sessions.get(session.session_id) is session  # use resets the idle timer
    assert session.last_seen == clock.now
    clock.now += 1799
    assert sessions.get(session.session_id) is session
    clock.now += 1800
    assert sessions.get(session.session_id) is None
    assert len(sessions) == 0
    clock.now -= 1000  # even if the clock could go back, a dropped session stays gone
    assert sessions.get(session.session_id) is None


def test_end_and_end_user(users, sessions):
    a1, a2 = sessions.create(users.get("alice")), sessions.create(users.get("alice"))
    b1 = sessions.create(users.get("bob"))
    sessions.end(a1.session_id)
    sessions.end(a1.session_id)  # ending twice is harmless
    assert sessions.get(a1.session_id) is None and sessions.get(a2.session_id) is a2
    sessions.end_user("alice")
    assert sessions.get(a2.session_id) is None
    assert sessions.get(b1.session_id) is b1
    sessions.end_user("nobody")
    assert len(sessions) == 1


def test_principal_for(users, sessions, clock):
    session = sessions.create(users.get("alice"))
    assert sessions.principal_for(session.session_id) == Principal("alice", frozenset({"agent", "supervisor"}))
    assert sessions.principal_for("unknown") is None
    clock.now += 1800
    assert sessions.principal_for(session.session_id) is None


def test_sweep_drops_only_expired(users, sessions, clock):
    old = sessions.create(users.get("alice"))
    clock.now += 1000
    recent = sessions.create(users.get("bob"))
    used = sessions.create(users.get("alice"))
    clock.now += 500
    sessions.get(old.session_id)  # touched: no longer the oldest
    clock.now += 1300
    assert sessions.sweep() == 2  # recent and used were idle for 1800 s
    assert len(sessions) == 1
    assert sessions.get(old.session_id) is old
    assert sessions.get(recent.session_id) is None and sessions.get(used.session_id) is None
    assert sessions.sweep() == 0


def test_sweep_is_bounded(users, clock, monkeypatch):
    sessions = HttpSessions(idle_timeout=10, clock=clock)
    monkeypatch.setattr(HttpSessions, "SWEEP_LIMIT", 3)
    for _ in range(5):
        sessions.create(users.get("bob"))
    clock.now += 10
    assert (sessions.sweep(), sessions.sweep(), sessions.sweep()) == (3, 2, 0)


def test_create_caps_sessions_per_user(users, clock):
    sessions = HttpSessions(clock=clock, max_per_user=2)
    first, second = sessions.create(users.get("alice")), sessions.create(users.get("alice"))
    clock.now += 1
    sessions.get(first.session_id)  # first is now the more recently used
    third = sessions.create(users.get("alice"))
    assert sessions.get(second.session_id) is None
    assert sessions.get(first.session_id) is first and sessions.get(third.session_id) is third
    assert sessions.create(users.get("bob")) is not None and len(sessions) == 3


# --- the REST middleware ---------------------------------------------------------------------------


async def me(request: web.Request) -> web.Response:
    user, session = current_user(request), current_session(request)
    return ok(user=user.user_id, session=session.session_id)


async def change(request: web.Request) -> web.Response:
    return ok(changed=current_user(request).user_id)


async def unprotected(request: web.Request) -> web.Response:
    return web.Response(text=f"open {current_session(request)}")


async def needs_user(request: web.Request) -> web.Response:
    current_user(request)
    return web.Response(text="unreachable")


def make_app(users: UserDirectory, sessions: HttpSessions, **options) -> web.Application:
    app = web.Application(middlewares=[envelope_middleware, auth_middleware(users, sessions, **options)])
    app.router.add_get("/api/v2/me", me)
    app.router.add_post("/api/v2/me", change)
    app.router.add_put("/api/v2/me", change)
    app.router.add_delete("/api/v2/me", change)
    app.router.add_patch("/api/v2/me", change)
    app.router.add_route("*", "/api/v2/notifications/{tail:.*}", unprotected)
    app.router.add_get("/api/v2extra", unprotected)
    app.router.add_get("/public", needs_user)
    return app


ALICE = basic("alice", "alice-pw")


@pytest.fixture
async def client(aiohttp_client, users, sessions):
    return await aiohttp_client(make_app(users, sessions))


async def login(client) -> tuple[str, str]:
    """Basic GET; the session id and CSRF token it hands out (the client's cookie jar keeps the cookie)."""
    response = await client.get("/api/v2/me", headers=ALICE)
    assert response.status == 200
    return response.cookies["JSESSIONID"].value, response.headers["X-CSRF-TOKEN"]


def assert_unauthorized(response, body, message: str) -> None:
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="GWS"'
    assert response.content_type == "application/json"
    assert body == {"statusCode": 20, "statusMessage": message}


async def test_basic_login_sets_session_cookie_and_the_cookie_alone_then_works(client, sessions):
    response = await client.get("/api/v2/me", headers=ALICE)
    assert response.status == 200
    body = await response.json()
    assert body["statusCode"] == 0 and body["user"] == "alice"
    cookie = response.cookies["JSESSIONID"]
    assert cookie.value == body["session"] and sessions.get(cookie.value).user_id == "alice"
    assert cookie["httponly"] is True and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    set_cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/" in set_cookie

    again = await client.get("/api/v2/me")  # cookie jar only, no credentials
    assert again.status == 200
    assert (await again.json())["session"] == cookie.value
    assert "Set-Cookie" not in again.headers  # the same session, no new cookie
    assert len(sessions) == 1


async def test_session_cookie_is_secure_when_the_broker_port_speaks_tls(aiohttp_client, users, sessions):
    """With --tls-cert the cookie is Secure even on a request that reached this process over plain HTTP:
    in a cluster the login is relayed to the leader over its private port (cluster.py)."""
    plain = await aiohttp_client(make_app(users, sessions))
    assert "Secure" not in (await plain.get("/api/v2/me", headers=ALICE)).headers["Set-Cookie"]
    secure = await aiohttp_client(make_app(users, sessions, secure_cookie=True))
    response = await secure.get("/api/v2/me", headers=ALICE)
    assert response.status == 200
    assert response.cookies["JSESSIONID"]["secure"] is True
    assert "; Secure" in response.headers["Set-Cookie"]


async def test_explicit_cookie_header_works_without_the_jar(client, aiohttp_client):
    session_id, _ = await login(client)
    client.session.cookie_jar.clear()
    response = await client.get("/api/v2/me", headers={"Cookie": f"JSESSIONID={session_id}"})
    assert response.status == 200 and (await response.json())["user"] == "alice"


async def test_missing_credentials(client):
    response = await client.get("/api/v2/me")
    assert_unauthorized(response, await response.json(), "authentication required: log in with Basic credentials")


@pytest.mark.parametrize("credentials", [basic("alice", "wrong"), basic("mallory", "alice-pw"),
                                         basic("alice", "")])
async def test_wrong_credentials_never_say_which_part(client, sessions, credentials):
    response = await client.get("/api/v2/me", headers=credentials)
    assert_unauthorized(response, await response.json(), "invalid user name or password")
    assert "Set-Cookie" not in response.headers and len(sessions) == 0


MALFORMED = "malformed Basic credentials: expected base64 of user:password"


@pytest.mark.parametrize(("header", "message"), [
    ("Basic !!!", MALFORMED),
    ("Basic " + base64.b64encode(b"no-colon").decode(), MALFORMED),
    ("Basic " + base64.b64encode(b":no-user").decode(), MALFORMED),
    ("Basic " + base64.b64encode(b"\xff:x").decode(), MALFORMED),
    ("Bearer abc", "unsupported Authorization scheme 'Bearer': use Basic"),
])
async def test_malformed_authorization(client, header, message):
    response = await client.get("/api/v2/me", headers={"Authorization": header})
    assert_unauthorized(response, await response.json(), message)


async def test_unknown_cookie_without_credentials_says_expired(client):
    response = await client.get("/api/v2/me", headers={"Cookie": "JSESSIONID=forged"})
    assert_unauthorized(response, await response.json(), "session is unknown or expired: log in again")


async def test_stale_cookie_with_basic_starts_a_new_session(client):
    response = await client.get("/api/v2/me", headers={**ALICE, "Cookie": "JSESSIONID=forged"})
    assert response.status == 200
    assert response.cookies["JSESSIONID"].value not in ("", "forged")


async def test_csrf_token_on_every_get(client, sessions):
    session_id, token = await login(client)
    assert token == sessions.get(session_id).csrf_token
    again = await client.get("/api/v2/me")
    assert again.headers["X-CSRF-HEADER"] == "X-CSRF-TOKEN"
    assert again.headers["X-CSRF-TOKEN"] == token  # lives as long as the session


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_state_changing_request_needs_the_token(client, method):
    _, token = await login(client)
    for headers in ({}, {"X-CSRF-TOKEN": ""}, {"X-CSRF-TOKEN": token[:-1]}, {"X-CSRF-TOKEN": token + "x"},
                    {"X-CSRF-HEADER": token}):
        refused = await client.request(method, "/api/v2/me", headers=headers)
        assert refused.status == 403, headers
        assert await refused.json() == {"statusCode": 3, "statusMessage": "Missing or invalid Csrf token"}
    accepted = await client.request(method, "/api/v2/me", headers={"X-CSRF-TOKEN": token})
    assert accepted.status == 200
    assert await accepted.json() == {"statusCode": 0, "changed": "alice"}
    assert "X-CSRF-TOKEN" not in accepted.headers  # handed out on GET only


async def test_token_of_another_session_is_refused(client, aiohttp_client, users, sessions):
    _, alice_token = await login(client)
    other = await aiohttp_client(make_app(users, sessions))
    await other.get("/api/v2/me", headers=basic("bob", "bob:pw:with:colons"))
    response = await other.post("/api/v2/me", headers={"X-CSRF-TOKEN": alice_token})
    assert response.status == 403


async def test_basic_only_post_is_refused_until_a_get(client, sessions):
    response = await client.post("/api/v2/me", headers=ALICE)
    assert response.status == 403
    assert await response.json() == {"statusCode": 3, "statusMessage": "Missing or invalid Csrf token"}
    assert "Set-Cookie" not in response.headers and len(sessions) == 0
    wrong = await client.post("/api/v2/me", headers=basic("alice", "nope"))
    assert_unauthorized(wrong, await wrong.json(), "invalid user name or password")


async def test_basic_is_ignored_when_the_cookie_is_valid(client):
    _, token = await login(client)
    response = await client.post("/api/v2/me", headers={**basic("alice", "stale"), "X-CSRF-TOKEN": token})
    assert response.status == 200


async def test_without_csrf(aiohttp_client, users, sessions):
    client = await aiohttp_client(make_app(users, sessions, csrf=False))
    basic_only = await client.post("/api/v2/me", headers=ALICE)
    assert basic_only.status == 200 and "X-CSRF-TOKEN" not in basic_only.headers
    got = await client.get("/api/v2/me")
    assert got.status == 200 and "X-CSRF-TOKEN" not in got.headers
    assert (await client.delete("/api/v2/me")).status == 200


async def test_exempt_and_other_paths_are_untouched(client):
    for method, path in (("GET", "/api/v2/notifications/handshake"), ("POST", "/api/v2/notifications/connect"),
                         ("GET", "/api/v2extra")):
        response = await client.request(method, path)
        assert response.status == 200, path
        assert await response.text() == "open None"
        assert "X-CSRF-TOKEN" not in response.headers and "Set-Cookie" not in response.headers


async def test_current_user_outside_the_middleware_is_not_authenticated(client):
    response = await client.get("/public")
    assert response.status == 401
    assert await response.json() == {"statusCode": 20, "statusMessage": "not authenticated"}


async def test_idle_session_expires(client, clock):
    await login(client)
    clock.now += 1799
    assert (await client.get("/api/v2/me")).status == 200
    clock.now += 1800
    response = await client.get("/api/v2/me")
    assert_unauthorized(response, await response.json(), "session is unknown or expired: log in again")


async def test_end_user_logs_out_every_session(client, aiohttp_client, users, sessions):
    other = await aiohttp_client(make_app(users, sessions))
    await login(client)
    await other.get("/api/v2/me", headers=ALICE)
    assert len(sessions) == 2
    sessions.end_user("alice")
    for each in (client, other):
        assert (await each.get("/api/v2/me")).status == 401


# --- the CometD handshake --------------------------------------------------------------------------


def handshake(*, headers=None, cookies=None, ext=None) -> HandshakeRequest:
    message = {"channel": "/meta/handshake"}
    if ext is not None:
        message["ext"] = ext
    return HandshakeRequest(headers=headers or {}, cookies=cookies or {}, message=message)


ALICE_PRINCIPAL = Principal("alice", frozenset({"agent", "supervisor"}))


@pytest.fixture
def authenticator(users, sessions) -> GwsAuthenticator:
    return GwsAuthenticator(users, sessions)


async def test_handshake_with_session_cookie(authenticator, users, sessions, clock):
    session = sessions.create(users.get("alice"))
    clock.now += 100
    principal = await authenticator.authenticate(handshake(cookies={"JSESSIONID": session.session_id}))
    assert principal == ALICE_PRINCIPAL
    assert session.last_seen == clock.now  # the handshake keeps the REST session alive


async def test_handshake_with_basic(authenticator):
    assert await authenticator.authenticate(handshake(headers=basic("alice", "alice-pw"))) == ALICE_PRINCIPAL
    bob = await authenticator.authenticate(handshake(headers=basic("bob", "bob:pw:with:colons")))
    assert bob == Principal("bob", frozenset({"agent"}))


async def test_handshake_with_ext_authentication(authenticator):
    request = handshake(ext={"authentication": {"user": "alice", "password": "alice-pw"}})
    assert await authenticator.authenticate(request) == ALICE_PRINCIPAL


async def test_stale_cookie_falls_back_to_credentials(authenticator):
    request = handshake(cookies={"JSESSIONID": "expired"}, headers=basic("alice", "alice-pw"))
    assert await authenticator.authenticate(request) == ALICE_PRINCIPAL


@pytest.mark.parametrize(("request_kwargs", "message"), [
    ({}, "authentication required: a JSESSIONID cookie, Authorization: Basic, or ext.authentication"),
    ({"cookies": {"JSESSIONID": "expired"}}, "session cookie is unknown or expired: log in again"),
    ({"headers": basic("alice", "wrong")}, "invalid user name or password"),
    ({"headers": basic("mallory", "alice-pw")}, "invalid user name or password"),
    ({"headers": {"Authorization": "Basic ???"}}, "malformed Basic credentials"),
    ({"headers": {"Authorization": "Bearer alice-token"}}, "unsupported Authorization scheme 'Bearer'"),
    ({"ext": {"authentication": {"user": "alice", "password": "wrong"}}}, "invalid user name or password"),
    ({"ext": {"authentication": {"user": "alice"}}}, "ext.authentication needs a string user and a string password"),
    ({"ext": {"authentication": "alice:alice-pw"}}, "ext.authentication needs a string user and a string password"),
    ({"ext": {"authentication": {"token": "t"}}}, "ext.authentication needs a string user and a string password"),
    ({"cookies": {"JSESSIONID": "expired"}, "headers": basic("alice", "wrong")}, "invalid user name or password"),
])
async def test_handshake_failures_are_specific(authenticator, request_kwargs, message):
    with pytest.raises(AuthenticationError) as caught:
        await authenticator.authenticate(handshake(**request_kwargs))
    assert str(caught.value).startswith(message)


async def test_handshake_cookie_of_idle_session_is_refused(authenticator, users, sessions, clock):
    session = sessions.create(users.get("alice"))
    clock.now += 1800
    with pytest.raises(AuthenticationError, match="unknown or expired"):
        await authenticator.authenticate(handshake(cookies={"JSESSIONID": session.session_id}))
