"""Unit tests for cometd_broker.config and configfile: defaults, environment, file, flags, validation."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from cometd_broker import configfile
from cometd_broker.config import ALL_TRANSPORTS, ENV_PREFIX, BrokerConfig, from_env, load, options, resolve
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
        assert config.max_batch == 1000 and config.max_subscriptions == 1000

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
        ("max_batch", 0), ("max_subscriptions", 0),
        ("duplicate_connect_status", 200), ("duplicate_connect_status", 600), ("queue_full", "block"),
        ("transports", "websocket,smoke-signals"), ("transports", ""), ("transports", " , "),
        ("personal_prefix", "/v2/me/*"), ("personal_prefix", "/v2/me"), ("personal_prefix", "v2/me/**"),
        ("personal_prefix", "/v2//me/**"), ("mount", "cometd"), ("sweep_period", 0),
        ("wal_checkpoint_period", 0), ("wal_limit_mb", 0),
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


class TestPrecedence:
    """flags > environment > file > defaults, with each value's source."""

    def test_each_layer_overrides_the_one_below(self):
        file = {"timeout": 1000, "interval": 10, "max_interval": 3000}
        config, sources = resolve(env(interval="20", max_interval="4000"), file=file, flags={"max_interval": 5000})
        assert (config.timeout, config.interval, config.max_interval) == (1000, 20, 5000)
        assert sources["timeout"] == "file"
        assert sources["interval"] == "env"
        assert sources["max_interval"] == "flag"
        assert sources["port"] == "default"

    def test_the_batch_limit_comes_from_each_layer(self):
        config, sources = resolve(env(max_batch="40"), file={"max_batch": 50})
        assert config.max_batch == 40 and sources["max_batch"] == "env"
        config, sources = resolve({}, file={"max_batch": 50}, flags={"max_batch": 7})
        assert config.max_batch == 7 and sources["max_batch"] == "flag"

    def test_the_subscription_limit_comes_from_each_layer(self):
        config, sources = resolve(env(max_subscriptions="40"), file={"max_subscriptions": 30})
        assert config.max_subscriptions == 40 and sources["max_subscriptions"] == "env"
        config, sources = resolve({}, flags={"max_subscriptions": 7})
        assert config.max_subscriptions == 7 and sources["max_subscriptions"] == "flag"

    def test_none_flags_are_not_given(self):
        config, sources = resolve({}, file={"port": 9000}, flags={"port": None})
        assert config.port == 9000 and sources["port"] == "file"

    def test_file_values_are_validated(self):
        with pytest.raises(ValueError, match="timeout must be >= 0"):
            resolve({}, file={"timeout": -1})

    def test_event_log_from_the_file_conflicts_with_redis(self):
        with pytest.raises(ValueError, match="cannot be used with redis"):
            resolve({}, file={"event_log": "/data/events.db"}, flags={"redis": "redis://127.0.0.1:6379/0"}, cli=True)

    def test_command_line_default_event_log_gives_way_to_redis(self):
        config, sources = resolve({}, flags={"redis": "redis://127.0.0.1:6379/0"}, cli=True)
        assert config.event_log_url == "redis://127.0.0.1:6379/0"
        assert sources["event_log"] == "default"

    @pytest.mark.parametrize(("option", "value"), [("log_level", "TRACE"), ("log_format", "xml")])
    def test_log_options_are_validated(self, option, value):
        with pytest.raises(ValueError, match=option):
            from_env({}, **{option: value})

    def test_log_level_is_case_insensitive(self):
        assert from_env(env(log_level="debug")).log_level == "debug"


def write(tmp_path, text: str) -> str:
    path = tmp_path / "broker.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


PLUGIN_OPTIONS = [configfile.Option("contact-center", "users_file", str),
                  configfile.Option("contact-center", "csrf", bool),
                  configfile.Option("contact-center", "offer_timeout", float)]
KNOWN = configfile.broker_options() + PLUGIN_OPTIONS


class TestConfigFile:
    def test_tables_keys_with_dashes_or_underscores_and_types(self, tmp_path):
        path = write(tmp_path, '[broker]\nport = 9000\nmax-interval = 5000\nallow_anonymous = true\n'
                               'sweep-period = 2\nevent-log = "/data/e.db"\n'
                               '[contact_center]\nusers-file = "/data/u.json"\ncsrf = false\noffer_timeout = 5\n')
        values = configfile.read(path, KNOWN)
        assert values["broker"] == {"port": 9000, "max_interval": 5000, "allow_anonymous": True,
                                    "sweep_period": 2.0, "event_log": "/data/e.db"}
        assert type(values["broker"]["sweep_period"]) is float
        assert values["contact-center"] == {"users_file": "/data/u.json", "csrf": False, "offer_timeout": 5.0}

    def test_empty_file(self, tmp_path):
        assert configfile.read(write(tmp_path, "# nothing\n"), KNOWN) == {}

    @pytest.mark.parametrize(("text", "message"), [
        ('[broker]\nprot = 1\n', "unknown key 'prot' in [broker] (did you mean 'port'?)"),
        ('[broker]\nport = "8080"\n', "[broker] port must be an integer, got string '8080'"),
        ('[broker]\nport = 80.5\n', "[broker] port must be an integer, got float 80.5"),
        ('[broker]\nport = true\n', "[broker] port must be an integer, got boolean True"),
        ('[broker]\nsweep-period = "1"\n', "[broker] sweep-period must be a number, got string '1'"),
        ('[broker]\nallow-anonymous = 1\n', "[broker] allow-anonymous must be true or false, got integer 1"),
        ('[broker]\ntransports = ["websocket"]\n', "[broker] transports must be a string, got array"),
        ('[broker]\nport = 1\n[broker.extra]\nx = 1\n', "unknown key 'extra' in [broker]"),
        ('[broker]\nport = 1\nPORT = 2\n', "unknown key 'PORT'"),
        ('[broker]\nmax-queue = 1\nmax_queue = 2\n', "[broker] sets max-queue twice"),
        ('[brokers]\nport = 1\n', "unknown table [brokers] (did you mean 'broker'?); tables are [broker], "
                                  "[contact-center]"),
        ('port = 1\n', "key 'port' must be inside a table such as [broker]"),
        ('broker = 1\n', "broker must be a table ([broker]), not a value"),
        ('[contact-center]\ncsrf = "no"\n', "[contact-center] csrf must be true or false, got string 'no'"),
        ('[broker]\nport = \n', "not valid TOML: Invalid value (at line 2, column 8)"),
    ])
    def test_errors_name_the_file_table_and_key(self, tmp_path, text, message):
        path = write(tmp_path, text)
        with pytest.raises(configfile.ConfigFileError) as caught:
            configfile.read(path, KNOWN)
        assert str(caught.value).startswith(path + ": ")
        assert message in str(caught.value)

    def test_missing_file(self, tmp_path):
        with pytest.raises(configfile.ConfigFileError, match=r"cannot read config file .*absent\.toml: No such file"):
            configfile.read(str(tmp_path / "absent.toml"), KNOWN)

    def test_example_file_loads_and_validates(self):
        path = Path(__file__).parent.parent / "examples" / "broker.toml"
        values = configfile.read(str(path), [*KNOWN, configfile.Option("contact-center", "state_db", str),
                                             configfile.Option("contact-center", "queues", str)])
        config, sources = resolve({}, file=values["broker"], cli=True)
        assert config.event_log == "/data/events.db" and sources["event_log"] == "file"
        assert config.log_format == "json"
        assert values["contact-center"]["state_db"] == "/data/state.db"


class TestShownValues:
    def setting(self, name: str, value: object) -> configfile.Setting:
        option = next(o for o in configfile.broker_options() if o.name == name)
        return configfile.Setting(option, value, "flag")

    @pytest.mark.parametrize("name", ["admin_token", "users", "tokens"])
    def test_secrets_are_masked(self, name):
        assert configfile.shown(self.setting(name, "alice:very-secret")) == "****"

    def test_a_file_of_secrets_is_shown_by_path(self):
        assert configfile.shown(self.setting("users", "@/run/secrets/users")) == "@/run/secrets/users"

    def test_unset_secret_is_shown_empty(self):
        assert configfile.shown(self.setting("admin_token", "")) == ""

    @pytest.mark.parametrize(("url", "shown"), [
        ("redis://:pw@redis:6379/0", "redis://:****@redis:6379/0"),
        ("rediss://user:pw@redis.example:6380/1", "rediss://user:****@redis.example:6380/1"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
    ])
    def test_url_passwords_are_masked(self, url, shown):
        assert configfile.shown(self.setting("redis", url)) == shown
        assert configfile.shown(self.setting("event_log", url)) == shown

    def test_toml_output_reads_back(self):
        config, sources = resolve(env(port="9000"), file={"mount": "/push"}, flags={"admin_token": "x" * 20})
        text = configfile.render_toml(configfile.broker_settings(config, sources), "/etc/broker.toml")
        assert "port = 9000  # env COMETD_BROKER_PORT\n" in text
        assert 'mount = "/push"  # file\n' in text
        assert 'admin-token = "****"  # flag\n' in text
        assert "x" * 20 not in text
        parsed = tomllib.loads(text)["broker"]
        assert parsed["port"] == 9000 and parsed["max-queue-bytes"] == config.max_queue_bytes
        assert set(parsed) == {o.key for o in configfile.broker_options()}
