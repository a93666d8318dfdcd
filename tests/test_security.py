"""Unit tests for cometd_broker.security: handshake authentication and channel authorization."""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cometd_broker.security import (
    ANONYMOUS,
    AuthenticationError,
    ChannelAuthorizer,
    ChannelRule,
    CredentialsAuthenticator,
    HandshakeRequest,
    Principal,
)

USERS = {"alice": "alice-secret", "bob": "bob:with:colons", "carol": "carol-secret"}
TOKENS = {"alice-token": "alice", "carol-token": "carol"}
ROLES = {"alice": ["admin", "agent"], "bob": ["agent"]}

ALICE = Principal("alice", frozenset({"admin", "agent"}))
BOB = Principal("bob", frozenset({"agent"}))
CAROL = Principal("carol")


def request(*, ext: object = None, headers: dict[str, str] | None = None,
            cookies: dict[str, str] | None = None) -> HandshakeRequest:
    message: dict[str, object] = {"channel": "/meta/handshake", "version": "1.0",
                                  "supportedConnectionTypes": ["long-polling"]}
    if ext is not None:
        message["ext"] = ext
    return HandshakeRequest(headers=headers or {}, cookies=cookies or {}, message=message, remote="127.0.0.1")


def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


@pytest.fixture
def auth() -> CredentialsAuthenticator:
    return CredentialsAuthenticator(USERS, tokens=TOKENS, roles=ROLES)


@pytest.fixture
def open_auth() -> CredentialsAuthenticator:
    return CredentialsAuthenticator(USERS, tokens=TOKENS, roles=ROLES, allow_anonymous=True)


# --------------------------------------------------------------------------- Principal


def test_principal_anonymous_flag():
    assert ANONYMOUS.anonymous
    assert ANONYMOUS.roles == frozenset()
    assert not Principal("x").anonymous


# --------------------------------------------------------------------------- ext.authentication


class TestExtAuthentication:
    async def test_user_and_password(self, auth):
        assert await auth.authenticate(request(ext={"authentication": {"user": "alice", "password": "alice-secret"}})) \
            == ALICE

    async def test_roles_are_attached(self, auth):
        principal = await auth.authenticate(
            request(ext={"authentication": {"user": "bob", "password": "bob:with:colons"}}))
        assert principal == BOB
        principal = await auth.authenticate(
            request(ext={"authentication": {"user": "carol", "password": "carol-secret"}}))
        assert principal.roles == frozenset()

    async def test_token(self, auth):
        assert await auth.authenticate(request(ext={"authentication": {"token": "carol-token"}})) == CAROL

    @pytest.mark.parametrize("credentials", [
        {"user": "alice", "password": "wrong"},
        {"user": "alice", "password": "bob:with:colons"},  # another user's secret
        {"user": "alice", "password": ""},
        {"user": "mallory", "password": "alice-secret"},
        {"user": "mallory", "password": "x"},
        {"token": "nope"},
        {"token": ""},
    ])
    async def test_wrong_credentials(self, auth, credentials):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(request(ext={"authentication": credentials}))

    @pytest.mark.parametrize("credentials", [
        "alice:alice-secret", ["alice", "alice-secret"], {}, {"user": "alice"},
        {"user": "alice", "password": 5}, {"user": 5, "password": "alice-secret"}, {"token": 123},
    ])
    async def test_malformed_ext_authentication(self, auth, credentials):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(request(ext={"authentication": credentials}))

    async def test_ext_takes_precedence_over_header(self, auth):
        principal = await auth.authenticate(request(ext={"authentication": {"token": "carol-token"}},
                                                    headers=basic("alice", "alice-secret")))
        assert principal == CAROL
        with pytest.raises(AuthenticationError):
            await auth.authenticate(request(ext={"authentication": {"token": "bad"}},
                                            headers=basic("alice", "alice-secret")))

    async def test_other_ext_keys_are_ignored(self, auth, open_auth):
        assert await open_auth.authenticate(request(ext={"ack": True})) == ANONYMOUS
        with pytest.raises(AuthenticationError):
            await auth.authenticate(request(ext={"ack": True}))


# --------------------------------------------------------------------------- Authorization header


class TestAuthorizationHeader:
    async def test_bearer(self, auth):
        assert await auth.authenticate(request(headers={"Authorization": "Bearer alice-token"})) == ALICE

    async def test_scheme_is_case_insensitive(self, auth):
        assert await auth.authenticate(request(headers={"Authorization": "bearer alice-token"})) == ALICE
        header = basic("bob", "bob:with:colons")["Authorization"].replace("Basic", "BASIC")
        assert await auth.authenticate(request(headers={"Authorization": header})) == BOB

    async def test_password_is_not_a_token(self, auth):
        """A guessed password alone (without its user name) must not log anyone in."""
        with pytest.raises(AuthenticationError, match="invalid token"):
            await auth.authenticate(request(headers={"Authorization": "Bearer alice-secret"}))
        with pytest.raises(AuthenticationError, match="invalid token"):
            await auth.authenticate(request(ext={"authentication": {"token": "alice-secret"}}))

    async def test_user_with_token_instead_of_password_is_refused(self, auth):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(request(ext={"authentication": {"user": "alice", "token": "alice-token"}}))

    async def test_bearer_wrong(self, auth):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(request(headers={"Authorization": "Bearer alice-tokeN"}))

    async def test_basic(self, auth):
        assert await auth.authenticate(request(headers=basic("alice", "alice-secret"))) == ALICE

    async def test_basic_secret_may_contain_colons(self, auth):
        assert await auth.authenticate(request(headers=basic("bob", "bob:with:colons"))) == BOB

    @pytest.mark.parametrize(("user", "secret"), [("alice", "wrong"), ("alice", ""), ("mallory", "alice-secret"),
                                                  ("", "alice-secret"), ("bob", "alice-secret")])
    async def test_basic_wrong(self, auth, user, secret):
        with pytest.raises(AuthenticationError, match="invalid user or secret"):
            await auth.authenticate(request(headers=basic(user, secret)))

    @pytest.mark.parametrize("value", ["!!!notbase64!!!", "YWxpY2U6YWxpY2Utc2VjcmV0!", "a", "%%%%",
                                       base64.b64encode(b"no-colon-here").decode(),
                                       base64.b64encode(b"\xff\xfe:\xff").decode()])
    async def test_basic_malformed(self, auth, value):
        with pytest.raises(AuthenticationError, match="malformed Basic credentials"):
            await auth.authenticate(request(headers={"Authorization": f"Basic {value}"}))

    @pytest.mark.parametrize("header", ["Digest username=alice", "Token alice-secret", "alice-secret",
                                        "Bearer", "Basic", "Negotiate abc"])
    async def test_unknown_or_empty_scheme(self, auth, header):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(request(headers={"Authorization": header}))

    async def test_unknown_scheme_is_named(self, auth):
        with pytest.raises(AuthenticationError, match="digest"):
            await auth.authenticate(request(headers={"Authorization": "Digest username=alice"}))


# --------------------------------------------------------------------------- session cookie


class TestSessionCookie:
    SESSIONS = {"good-cookie": Principal("dave", frozenset({"supervisor"}))}

    @pytest.fixture(params=["sync", "async"])
    def cookie_auth(self, request) -> CredentialsAuthenticator:
        if request.param == "sync":
            def resolver(value: str) -> Principal | None:
                return self.SESSIONS.get(value)
        else:
            async def resolver(value: str) -> Principal | None:
                return self.SESSIONS.get(value)
        return CredentialsAuthenticator(USERS, tokens=TOKENS, session_cookie="APPSESSION", session_resolver=resolver)

    async def test_known_cookie(self, cookie_auth):
        assert await cookie_auth.authenticate(request(cookies={"APPSESSION": "good-cookie"})) == \
            Principal("dave", frozenset({"supervisor"}))

    async def test_unknown_cookie_is_refused(self, cookie_auth):
        with pytest.raises(AuthenticationError, match="session cookie"):
            await cookie_auth.authenticate(request(cookies={"APPSESSION": "forged"}))

    async def test_unknown_cookie_is_refused_even_with_anonymous_allowed(self, cookie_auth):
        cookie_auth.allow_anonymous = True
        with pytest.raises(AuthenticationError):
            await cookie_auth.authenticate(request(cookies={"APPSESSION": "forged"}))

    async def test_other_cookie_names_are_ignored(self, cookie_auth):
        with pytest.raises(AuthenticationError, match="credentials required"):
            await cookie_auth.authenticate(request(cookies={"OTHER": "good-cookie"}))
        cookie_auth.allow_anonymous = True
        assert await cookie_auth.authenticate(request(cookies={"OTHER": "good-cookie"})) == ANONYMOUS

    async def test_header_takes_precedence_over_cookie(self, cookie_auth):
        principal = await cookie_auth.authenticate(request(headers={"Authorization": "Bearer alice-token"},
                                                           cookies={"APPSESSION": "good-cookie"}))
        assert principal.user_id == "alice"

    async def test_resolver_is_called_with_the_cookie_value(self):
        seen: list[str] = []

        async def resolver(value: str) -> Principal | None:
            seen.append(value)
            return Principal("erin")

        auth = CredentialsAuthenticator(session_cookie="S", session_resolver=resolver)
        assert await auth.authenticate(request(cookies={"S": "v-123"})) == Principal("erin")
        assert seen == ["v-123"]


# --------------------------------------------------------------------------- anonymous


class TestAnonymous:
    async def test_no_credentials_and_anonymous_refused(self, auth):
        with pytest.raises(AuthenticationError, match="credentials required"):
            await auth.authenticate(request())

    async def test_no_credentials_and_anonymous_allowed(self, open_auth):
        principal = await open_auth.authenticate(request())
        assert principal == ANONYMOUS
        assert principal.anonymous

    async def test_default_is_no_anonymous(self):
        with pytest.raises(AuthenticationError):
            await CredentialsAuthenticator().authenticate(request())

    @pytest.mark.parametrize("kwargs", [
        {"ext": {"authentication": {"user": "alice", "password": "wrong"}}},
        {"ext": {"authentication": {"token": "wrong"}}},
        {"ext": {"authentication": "garbage"}},
        {"headers": {"Authorization": "Bearer wrong"}},
        {"headers": basic("alice", "wrong")},
        {"headers": {"Authorization": "Basic ???"}},
        {"headers": {"Authorization": "Digest x"}},
    ])
    async def test_wrong_credentials_refused_even_when_anonymous_allowed(self, open_auth, kwargs):
        with pytest.raises(AuthenticationError):
            await open_auth.authenticate(request(**kwargs))

    async def test_good_credentials_with_anonymous_allowed_are_not_downgraded(self, open_auth):
        assert await open_auth.authenticate(request(headers=basic("alice", "alice-secret"))) == ALICE


# --------------------------------------------------------------------------- ChannelRule


class TestChannelRule:
    def test_parse_full(self):
        assert ChannelRule.parse("/ops/** subscribe=role:admin publish=nobody") == \
            ChannelRule("/ops/**", "role:admin", "nobody")

    def test_parse_defaults(self):
        assert ChannelRule.parse("/news/*") == ChannelRule("/news/*", "anyone", "anyone")
        assert ChannelRule.parse("  /a   publish=authenticated ") == ChannelRule("/a", "anyone", "authenticated")

    @pytest.mark.parametrize("text", [
        "/a/** subscribe",              # no '='
        "/a/** read=anyone",            # unknown key
        "/a/** subscribe=everyone",     # unknown access
        "/a/** publish=role:",          # role without a name
        "/a/** subscribe=",             # empty access
        "a/b subscribe=anyone",         # not a channel
        "/**/a",                        # wildcard not last
        "/a//b",
        "",
    ])
    def test_parse_errors(self, text):
        with pytest.raises(ValueError):
            ChannelRule.parse(text)

    def test_parse_error_names_the_rule(self):
        with pytest.raises(ValueError, match="everyone"):
            ChannelRule.parse("/a/** subscribe=everyone")
        with pytest.raises(ValueError, match="/a/b/c"):
            ChannelRule.parse("/a/b/c read=x")

    def test_constructor_validates(self):
        with pytest.raises(ValueError):
            ChannelRule("/a", subscribe="root")
        with pytest.raises(ValueError):
            ChannelRule("/a/*/b")


# --------------------------------------------------------------------------- ChannelAuthorizer


class TestPersonalPrefix:
    @pytest.fixture
    def authorizer(self) -> ChannelAuthorizer:
        return ChannelAuthorizer("/v2/me/**")

    @pytest.mark.parametrize("pattern", ["/v2/me/interactions", "/v2/me/**", "/v2/me/*", "/v2/me/a/b"])
    def test_anonymous_cannot_subscribe_personal(self, authorizer, pattern):
        assert authorizer.subscribe_denied(ANONYMOUS, pattern) is not None

    @pytest.mark.parametrize("pattern", ["/**", "/v2/**", "/v2/*", "/v2/me", "/news"])
    def test_anonymous_may_subscribe_outside_personal(self, authorizer, pattern):
        assert authorizer.subscribe_denied(ANONYMOUS, pattern) is None

    @pytest.mark.parametrize("pattern", ["/v2/me/interactions", "/v2/me/**", "/**"])
    def test_authenticated_may_subscribe_personal(self, authorizer, pattern):
        assert authorizer.subscribe_denied(CAROL, pattern) is None

    @pytest.mark.parametrize("principal", [ANONYMOUS, CAROL, ALICE])
    @pytest.mark.parametrize("channel", ["/v2/me/interactions", "/v2/me/a/b"])
    def test_nobody_publishes_personal(self, authorizer, principal, channel):
        assert authorizer.publish_denied(principal, channel) is not None

    def test_publish_outside_personal_is_allowed_by_default(self, authorizer):
        assert authorizer.publish_denied(ANONYMOUS, "/v2/me") is None
        assert authorizer.publish_denied(ANONYMOUS, "/v2/other") is None

    def test_personal_rule_beats_permissive_rules(self):
        authorizer = ChannelAuthorizer("/v2/me/**", [ChannelRule("/**", "anyone", "anyone")])
        assert authorizer.publish_denied(ALICE, "/v2/me/x") is not None
        assert authorizer.subscribe_denied(ANONYMOUS, "/v2/me/x") is not None


class TestRuleOrder:
    RULES = [
        ChannelRule("/ops/admin/**", subscribe="role:admin", publish="role:admin"),
        ChannelRule("/ops/**", subscribe="authenticated", publish="authenticated"),
        ChannelRule("/locked/**", subscribe="nobody", publish="nobody"),
        ChannelRule("/agents/*", subscribe="role:agent", publish="nobody"),
    ]

    @pytest.fixture
    def authorizer(self) -> ChannelAuthorizer:
        return ChannelAuthorizer("/v2/me/**", self.RULES)

    def test_first_containing_rule_wins_for_publish(self, authorizer):
        assert authorizer.publish_denied(CAROL, "/ops/admin/x") is not None  # admin rule, not /ops/**
        assert authorizer.publish_denied(ALICE, "/ops/admin/x") is None
        assert authorizer.publish_denied(CAROL, "/ops/x") is None
        assert authorizer.publish_denied(ANONYMOUS, "/ops/x") is not None
        assert authorizer.publish_denied(ANONYMOUS, "/ops/admin") is not None  # /ops/admin is under /ops/**

    def test_order_matters(self):
        reversed_rules = ChannelAuthorizer("/v2/me/**", [self.RULES[1], self.RULES[0]])
        # /ops/** now contains /ops/admin/x first, so any authenticated user may publish there.
        assert reversed_rules.publish_denied(CAROL, "/ops/admin/x") is None
        assert reversed_rules.subscribe_denied(CAROL, "/ops/admin/x") is None

    def test_nobody(self, authorizer):
        for principal in (ANONYMOUS, CAROL, ALICE):
            assert authorizer.publish_denied(principal, "/locked/a") is not None
            assert authorizer.subscribe_denied(principal, "/locked/a") is not None
            assert authorizer.subscribe_denied(principal, "/locked/**") is not None

    def test_role(self, authorizer):
        assert authorizer.subscribe_denied(BOB, "/agents/bob") is None
        assert authorizer.subscribe_denied(ALICE, "/agents/*") is None
        assert authorizer.subscribe_denied(CAROL, "/agents/bob") is not None
        assert authorizer.subscribe_denied(ANONYMOUS, "/agents/*") is not None
        assert authorizer.publish_denied(BOB, "/agents/bob") is not None

    def test_exact_subscriptions(self, authorizer):
        assert authorizer.subscribe_denied(CAROL, "/ops/admin/x") is not None
        assert authorizer.subscribe_denied(ALICE, "/ops/admin/x") is None
        assert authorizer.subscribe_denied(CAROL, "/ops/x") is None
        assert authorizer.subscribe_denied(ANONYMOUS, "/ops/x") is not None

    def test_wildcard_needs_every_overlapping_rule(self, authorizer):
        # /ops/** reaches /ops/admin/... too, so it needs the admin rule as well.
        assert authorizer.subscribe_denied(CAROL, "/ops/**") is not None
        assert authorizer.subscribe_denied(ALICE, "/ops/**") is None
        # /ops/* only reaches /ops/<x>, which /ops/admin/** (one or more segments) never matches.
        assert authorizer.subscribe_denied(CAROL, "/ops/*") is None
        # /** overlaps the admin, locked and agents rules.
        assert authorizer.subscribe_denied(ALICE, "/**") is not None  # locked: nobody
        assert authorizer.subscribe_denied(ANONYMOUS, "/**") is not None

    def test_wildcard_stops_at_first_containing_rule(self):
        authorizer = ChannelAuthorizer("/v2/me/**", [
            ChannelRule("/a/**", subscribe="anyone"),
            ChannelRule("/a/b/**", subscribe="nobody"),  # shadowed by /a/** for everything under /a
            ChannelRule("/**", subscribe="authenticated"),
        ])
        assert authorizer.subscribe_denied(ANONYMOUS, "/a/b/c") is None
        assert authorizer.subscribe_denied(ANONYMOUS, "/a/b/**") is None
        assert authorizer.subscribe_denied(ANONYMOUS, "/a/**") is None
        assert authorizer.subscribe_denied(ANONYMOUS, "/x") is not None  # falls to /**
        assert authorizer.subscribe_denied(CAROL, "/x") is None
        # /** is not contained in /a/** so it must also pass the nobody rule it overlaps.
        assert authorizer.subscribe_denied(CAROL, "/**") is not None

    def test_reason_names_the_rule(self, authorizer):
        reason = authorizer.subscribe_denied(CAROL, "/ops/admin/x")
        assert reason is not None and "/ops/admin/**" in reason and "role:admin" in reason
        reason = authorizer.publish_denied(ANONYMOUS, "/ops/x")
        assert reason is not None and "/ops/**" in reason

    def test_uncovered_channels_use_defaults(self, authorizer):
        assert authorizer.subscribe_denied(ANONYMOUS, "/news/today") is None
        assert authorizer.publish_denied(ANONYMOUS, "/news/today") is None
        strict = ChannelAuthorizer("/v2/me/**", self.RULES, default_subscribe="authenticated",
                                   default_publish="nobody")
        assert strict.subscribe_denied(ANONYMOUS, "/news/today") is not None
        assert strict.subscribe_denied(CAROL, "/news/today") is None
        assert strict.publish_denied(ALICE, "/news/today") is not None
        # A rule still overrides the default.
        assert strict.publish_denied(CAROL, "/ops/x") is None

    def test_service_subscriptions_are_never_denied(self):
        authorizer = ChannelAuthorizer("/v2/me/**", [ChannelRule("/service/**", subscribe="nobody")],
                                       default_subscribe="nobody")
        assert authorizer.subscribe_denied(ANONYMOUS, "/service/echo") is None


# --------------------------------------------------------------------------- authorizer properties

SEGMENTS = ("a", "b", "me")
_segments = st.sampled_from(SEGMENTS)
_channels = st.lists(_segments, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
_patterns = st.one_of(
    _channels,
    st.lists(_segments, max_size=2).map(lambda p: "/" + "/".join([*p, "*"])),
    st.lists(_segments, max_size=2).map(lambda p: "/" + "/".join([*p, "**"])),
)
_access = st.sampled_from(["anyone", "authenticated", "nobody", "role:admin", "role:agent"])
_rules = st.lists(st.builds(ChannelRule, _patterns, _access, _access), max_size=5)
_principals = st.sampled_from([ANONYMOUS, ALICE, BOB, CAROL])
UNIVERSE = ["/" + "/".join(parts) for depth in range(1, 5) for parts in itertools.product(SEGMENTS, repeat=depth)]


def ref_matches(pattern: str, channel: str) -> bool:
    p, c = pattern[1:].split("/"), channel[1:].split("/")
    if p[-1] == "**":
        return len(c) >= len(p) and c[: len(p) - 1] == p[:-1]
    if p[-1] == "*":
        return len(c) == len(p) and c[:-1] == p[:-1]
    return p == c


def ref_allows(access: str, principal: Principal) -> bool:
    if access == "anyone":
        return True
    if access == "authenticated":
        return principal.user_id is not None
    if access == "nobody":
        return False
    return access.removeprefix("role:") in principal.roles


@settings(max_examples=250, deadline=None)
@given(_rules, _principals, _channels)
def test_publish_matches_first_matching_rule(rules, principal, channel):
    authorizer = ChannelAuthorizer("/me/**", rules, default_publish="authenticated")
    if ref_matches("/me/**", channel):
        expected = False
    else:
        rule = next((r for r in rules if ref_matches(r.pattern, channel)), None)
        expected = ref_allows(rule.publish if rule else "authenticated", principal)
    assert (authorizer.publish_denied(principal, channel) is None) == expected


@settings(max_examples=250, deadline=None)
@given(_rules, _principals, _patterns)
def test_wildcard_subscription_never_escalates(rules, principal, pattern):
    # If a pattern may be subscribed, every channel it reaches may be subscribed on its own
    # (personal channels excepted: the broker resolves those per user).
    authorizer = ChannelAuthorizer("/me/**", rules, default_subscribe="role:agent")
    if authorizer.subscribe_denied(principal, pattern) is not None:
        return
    for channel in UNIVERSE:
        if ref_matches(pattern, channel) and not ref_matches("/me/**", channel):
            assert authorizer.subscribe_denied(principal, channel) is None, (pattern, channel)


class TestChainedAuthenticator:
    async def test_first_success_wins_and_failures_are_combined(self, auth):
        from cometd_broker.security import ChainedAuthenticator

        sessions = {"cookie-1": Principal("dave")}
        by_cookie = CredentialsAuthenticator(session_cookie="APPSESSION", session_resolver=sessions.get)
        chain = ChainedAuthenticator(by_cookie, auth)
        assert await chain.authenticate(request(cookies={"APPSESSION": "cookie-1"})) == Principal("dave")
        assert await chain.authenticate(request(headers=basic("alice", "alice-secret"))) == ALICE
        with pytest.raises(AuthenticationError, match="invalid user or secret"):
            await chain.authenticate(request(headers=basic("alice", "wrong")))

    def test_needs_one_authenticator(self):
        from cometd_broker.security import ChainedAuthenticator

        with pytest.raises(ValueError):
            ChainedAuthenticator()
