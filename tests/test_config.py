"""Unit tests for cometd_broker.config: defaults, environment variables, overrides and validation."""

from __future__ import annotations

import dataclasses

import pytest

from cometd_broker.config import ALL_TRANSPORTS, ENV_PREFIX, BrokerConfig, from_env, load, options
from cometd_broker.security import ChannelRule


def env(**values: str) -> dict[str, str]:
    return {ENV_PREFIX + name.upper(): value for name, value in values.items()}


class TestDefaults:
    def test_documented_defaults(self):
        config = from_env({})
        assert config.timeout == 25000
        assert config.interval == 0
        assert config.max_interval == 10000
        assert config.host == "127.0.0.1"
        assert config.port == 8080
        assert config.mount == "/cometd"
        assert config.transport_list == ["websocket", "long-polling", "callback-polling"]
        assert config.max_sessions_per_browser == 1
        assert config.multi_session_interval == 2000
        assert config.browser_cookie == "BAYEUX_BROWSER"
        assert config.duplicate_connect_status == 500
        assert config.queue_full == "disconnect"
        assert config.allow_anonymous is False
        assert config.users == "" and config.user_map == {}
        assert config.personal_prefix == "/v2/me/**"
        assert config.channel_rules == "" and config.rule_list == []
        assert config.sweep_period == 1.0
        assert config.max_queue >= 1 and config.max_queue_bytes >= 1 and config.max_message_size >= 1

    def test_from_env_equals_plain_constructor(self):
        assert from_env({}) == BrokerConfig()

    def test_defaults_validate(self):
        BrokerConfig().validate()

    def test_every_option_is_documented(self):
        fields = options()
        assert {f.name for f in fields} == {f.name for f in dataclasses.fields(BrokerConfig)}
        for f in fields:
            assert f.metadata.get("doc"), f.name

    def test_all_transports(self):
        assert ALL_TRANSPORTS == ("websocket", "long-polling", "callback-polling")


class TestEnvironment:
    def test_env_overrides_defaults(self):
        config = from_env(env(timeout="1000", interval="5", max_interval="3000", host="0.0.0.0", port="9000",
                              transports="long-polling", queue_full="drop-oldest", sweep_period="0.25"))
        assert config.timeout == 1000
        assert config.interval == 5
        assert config.max_interval == 3000
        assert config.host == "0.0.0.0"
        assert config.port == 9000
        assert config.transport_list == ["long-polling"]
        assert config.queue_full == "drop-oldest"
        assert config.sweep_period == 0.25

    def test_env_values_are_converted(self):
        config = from_env(env(timeout="1000", sweep_period="2"))
        assert type(config.timeout) is int
        assert type(config.sweep_period) is float

    @pytest.mark.parametrize(("text", "expected"), [("1", True), ("true", True), ("YES", True), ("on", True),
                                                    ("0", False), ("false", False), ("No", False), ("off", False),
                                                    ("", False)])
    def test_boolean_env(self, text, expected):
        assert from_env(env(allow_anonymous=text)).allow_anonymous is expected

    def test_bad_boolean_env_names_the_variable(self):
        with pytest.raises(ValueError, match="COMETD_BROKER_ALLOW_ANONYMOUS"):
            from_env(env(allow_anonymous="maybe"))

    @pytest.mark.parametrize(("name", "text"), [("timeout", "abc"), ("port", "80.5"), ("sweep_period", "fast")])
    def test_bad_number_env_names_the_variable(self, name, text):
        with pytest.raises(ValueError, match=ENV_PREFIX + name.upper()):
            from_env(env(**{name: text}))

    def test_explicit_overrides_win_over_env(self):
        config = from_env(env(timeout="1000", transports="websocket", allow_anonymous="true"),
                          timeout=2000, transports="long-polling", allow_anonymous=False)
        assert config.timeout == 2000
        assert config.transport_list == ["long-polling"]
        assert config.allow_anonymous is False

    def test_none_overrides_leave_env_and_defaults_alone(self):
        config = from_env(env(timeout="1000"), timeout=None, interval=None)
        assert config.timeout == 1000
        assert config.interval == 0

    def test_unrelated_environment_is_ignored(self):
        config = from_env({"TIMEOUT": "1", "COMETD_TIMEOUT": "2", "PATH": "/bin"})
        assert config.timeout == 25000

    def test_load_reads_os_environ(self, monkeypatch):
        monkeypatch.setenv("COMETD_BROKER_TIMEOUT", "1234")
        monkeypatch.setenv("COMETD_BROKER_USERS", "zed:zed-secret")
        config = load()
        assert config.timeout == 1234
        assert config.user_map == {"zed": "zed-secret"}
        assert load(timeout=99).timeout == 99

    def test_env_values_are_validated(self):
        with pytest.raises(ValueError, match="timeout"):
            from_env(env(timeout="-1"))


class TestValidation:
    @pytest.mark.parametrize(("option", "value"), [
        ("timeout", -1), ("interval", -5), ("max_interval", -1), ("multi_session_interval", -1),
        ("max_queue", 0), ("max_queue_bytes", 0), ("max_message_size", -1), ("max_sessions_per_browser", 0),
        ("duplicate_connect_status", 200), ("duplicate_connect_status", 600), ("queue_full", "block"),
        ("transports", "websocket,smoke-signals"), ("transports", ""), ("transports", " , "),
        ("personal_prefix", "/v2/me/*"), ("personal_prefix", "/v2/me"), ("personal_prefix", "v2/me/**"),
        ("personal_prefix", "/v2//me/**"), ("mount", "cometd"), ("sweep_period", 0),
    ])
    def test_errors_name_the_option(self, option, value):
        with pytest.raises(ValueError, match=option):
            from_env({}, **{option: value})
        with pytest.raises(ValueError, match=option):
            BrokerConfig(**{option: value}).validate()

    def test_zero_timing_is_valid(self):
        config = from_env({}, timeout=0, interval=0, max_interval=0)
        assert (config.timeout, config.interval, config.max_interval) == (0, 0, 0)

    def test_transports_keep_order_and_strip_spaces(self):
        config = from_env({}, transports=" long-polling , websocket ,")
        assert config.transport_list == ["long-polling", "websocket"]

    @pytest.mark.parametrize("users", ["alice", "alice:", ":secret", "alice:a,bob", "alice:a, ,bob"])
    def test_malformed_users_entry(self, users):
        with pytest.raises(ValueError, match="users entry"):
            from_env({}, users=users)

    def test_users(self):
        config = from_env({}, users="alice:a-secret, bob:b:with:colons ,")
        assert config.user_map == {"alice": "a-secret", "bob": "b:with:colons"}

    def test_channel_rules(self):
        config = from_env({}, channel_rules="/ops/** subscribe=role:admin; /news/* publish=nobody ;")
        assert config.rule_list == [ChannelRule("/ops/**", "role:admin", "anyone"),
                                    ChannelRule("/news/*", "anyone", "nobody")]

    @pytest.mark.parametrize("rules", ["/ops/** subscribe=root", "/ops/**/x", "/ops/** read=anyone"])
    def test_bad_channel_rules(self, rules):
        with pytest.raises(ValueError, match="channel rule"):
            from_env({}, channel_rules=rules)

    def test_personal_prefix_may_be_changed(self):
        assert from_env({}, personal_prefix="/agent/me/**").personal_prefix == "/agent/me/**"


class TestUsersFile:
    def test_users_from_file(self, tmp_path):
        path = tmp_path / "users.txt"
        path.write_text("# operators\nalice:alice-secret\n\n  bob:bob:secret  \ncarol:c\n", encoding="utf-8")
        config = from_env({}, users=f"@{path}")
        assert config.user_map == {"alice": "alice-secret", "bob": "bob:secret", "carol": "c"}

    def test_users_file_from_env(self, tmp_path):
        path = tmp_path / "users.txt"
        path.write_text("dave:d-secret\n", encoding="utf-8")
        assert from_env(env(users=f"@{path}")).user_map == {"dave": "d-secret"}

    def test_malformed_line_in_file(self, tmp_path):
        path = tmp_path / "users.txt"
        path.write_text("alice:alice-secret\nbob\n", encoding="utf-8")
        with pytest.raises(ValueError, match="users entry 'bob'"):
            from_env({}, users=f"@{path}")

    def test_missing_file(self, tmp_path):
        with pytest.raises(OSError):
            from_env({}, users=f"@{tmp_path / 'absent.txt'}")

    def test_empty_file(self, tmp_path):
        path = tmp_path / "users.txt"
        path.write_text("", encoding="utf-8")
        assert from_env({}, users=f"@{path}").user_map == {}
