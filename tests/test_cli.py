"""The console script: options from flags and environment, the listening line, clean stop, clear errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, start_broker


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cometd_broker", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def test_invalid_option_is_named_and_exits_2():
    result = run_cli("serve", "--timeout", "-1")
    assert result.returncode == 2
    assert "invalid configuration: timeout must be >= 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_environment_variable_is_named():
    result = run_cli("serve", env={"COMETD_BROKER_MAX_INTERVAL": "soon"})
    assert result.returncode == 2
    assert "COMETD_BROKER_MAX_INTERVAL must be int, got 'soon'" in result.stderr


def test_serve_prints_where_it_listens_and_stops_cleanly_on_sigterm():
    running = start_broker("--allow-anonymous", "--mount", "/push")
    try:
        log = running.log()
        assert f"listening on http://127.0.0.1:{running.port}/push" in log
        assert "transports: websocket, long-polling, callback-polling" in log
        handshake = json.dumps([{"channel": "/meta/handshake", "version": "1.0",
                                 "supportedConnectionTypes": ["long-polling"]}]).encode()
        request = urllib.request.Request(running.url, data=handshake, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)[0]["successful"] is True
    finally:
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=15) == 0
    log = running.log()
    assert "Traceback" not in log
    # The operator sees the stop: which signal, the sessions it ended, and how long it took.
    assert "INFO cometd_broker: stopping on SIGTERM: 1 client(s) connected, answering their held connects" in log, log
    assert re.search(r"INFO cometd_broker: stopped in \d+\.\d\d s\n", log), log


def test_environment_configures_and_flags_win():
    port = free_port()
    running = start_broker("--allow-anonymous", env={"COMETD_BROKER_MOUNT": "/from-env",
                                                     "COMETD_BROKER_PORT": str(port)})
    try:
        assert "/from-env (transports" in running.log()
    finally:
        running.stop()


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "cometd-broker"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("cometd-broker ")


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "broker.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def config_json(*args: str, env: dict[str, str] | None = None) -> dict:
    result = run_cli("config", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def without_test_env() -> dict[str, str]:
    """The environment minus conftest's COMETD_BROKER_* defaults, so sources read "default"."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COMETD_BROKER_")}


def run_clean(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cometd_broker", *args], capture_output=True, text=True,
                          timeout=30, env={**without_test_env(), **(env or {})})


class TestConfigCommand:
    def test_precedence_flag_over_env_over_file_over_default_for_broker_and_plugin(self, tmp_path):
        path = write_config(tmp_path, '[broker]\ntimeout = 1000\ninterval = 10\nmax-interval = 3000\n'
                                      '[contact-center]\nqueues = "file-q"\noffer-timeout = 5\nusers-file = "u.json"\n')
        result = run_clean("config", "--json", "--config", path, "--max-interval", "5000", "--queues", "flag-q",
                           env={"COMETD_BROKER_INTERVAL": "20", "COMETD_BROKER_MAX_INTERVAL": "4000",
                                "COMETD_BROKER_OFFER_TIMEOUT": "7", "COMETD_BROKER_QUEUES": "env-q"})
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        assert shown["file"] == path
        broker, center = shown["options"]["broker"], shown["options"]["contact-center"]
        assert broker["timeout"] == {"value": 1000, "source": "file", "env": "COMETD_BROKER_TIMEOUT"}
        assert broker["interval"]["value"] == 20 and broker["interval"]["source"] == "env"
        assert broker["max-interval"]["value"] == 5000 and broker["max-interval"]["source"] == "flag"
        assert broker["port"] == {"value": 8080, "source": "default", "env": "COMETD_BROKER_PORT"}
        assert broker["event-log"] == {"value": "cometd-broker-events.db", "source": "default",
                                       "env": "COMETD_BROKER_EVENT_LOG"}
        assert center["queues"]["value"] == "flag-q" and center["queues"]["source"] == "flag"
        assert center["offer-timeout"]["value"] == 7.0 and center["offer-timeout"]["source"] == "env"
        assert center["users-file"]["value"] == "u.json" and center["users-file"]["source"] == "file"
        assert center["demo"] == {"value": False, "source": "default", "env": "COMETD_BROKER_DEMO"}

    def test_toml_output_with_sources_and_masked_secrets(self, tmp_path):
        path = write_config(tmp_path, '[broker]\nadmin-token = "file-admin-token-0123456789"\n'
                                      '[contact-center]\nmedia-token = "media-secret"\n')
        result = run_clean("config", "--config", path, "--redis", "redis://:redis-pw@127.0.0.1:6379/0",
                           "--users", "alice:alice-pw", env={"COMETD_BROKER_PORT": "9000"})
        assert result.returncode == 0, result.stderr
        text = result.stdout
        assert f"# config file: {path}\n" in text
        assert "port = 9000  # env COMETD_BROKER_PORT\n" in text
        assert 'admin-token = "****"  # file\n' in text
        assert 'media-token = "****"  # file\n' in text
        assert 'users = "****"  # flag\n' in text
        assert 'redis = "redis://:****@127.0.0.1:6379/0"  # flag\n' in text
        assert "# base-url is not set  # default\n" in text
        for secret in ("file-admin-token", "media-secret", "alice-pw", "redis-pw"):
            assert secret not in text
        assert tomllib.loads(text)["broker"]["port"] == 9000

    def test_batch_limit_from_file_flag_and_default(self, tmp_path):
        path = write_config(tmp_path, '[broker]\nmax-batch = 50\n')
        shown = json.loads(run_clean("config", "--json", "--config", path).stdout)
        assert shown["options"]["broker"]["max-batch"] == {"value": 50, "source": "file",
                                                           "env": "COMETD_BROKER_MAX_BATCH"}
        shown = json.loads(run_clean("config", "--json", "--config", path, "--max-batch", "200").stdout)
        assert shown["options"]["broker"]["max-batch"]["value"] == 200
        assert json.loads(run_clean("config", "--json").stdout)["options"]["broker"]["max-batch"]["value"] == 1000

    def test_subscription_limit_from_file_and_default(self, tmp_path):
        path = write_config(tmp_path, '[broker]\nmax-subscriptions = 50\n')
        shown = json.loads(run_clean("config", "--json", "--config", path).stdout)
        assert shown["options"]["broker"]["max-subscriptions"] == {"value": 50, "source": "file",
                                                                   "env": "COMETD_BROKER_MAX_SUBSCRIPTIONS"}
        defaults = json.loads(run_clean("config", "--json").stdout)["options"]["broker"]
        assert defaults["max-subscriptions"]["value"] == 1000

    def test_config_file_from_the_environment(self, tmp_path):
        path = write_config(tmp_path, '[broker]\nmount = "/from-file"\n')
        shown = config_json(env={"COMETD_BROKER_CONFIG": path})
        assert shown["file"] == path
        assert shown["options"]["broker"]["mount"]["value"] == "/from-file"
        assert config_json("--config", path, "--mount", "/flag")["options"]["broker"]["mount"]["value"] == "/flag"

    def test_without_a_file(self):
        shown = run_clean("config", "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["file"] is None

    def test_example_file(self):
        example = str(Path(__file__).parent.parent / "examples" / "broker.toml")
        result = run_clean("config", "--json", "--config", example)
        assert result.returncode == 0, result.stderr
        options = json.loads(result.stdout)["options"]
        assert options["broker"]["log-format"] == {"value": "json", "source": "file",
                                                   "env": "COMETD_BROKER_LOG_FORMAT"}
        assert options["contact-center"]["state-db"]["value"] == "/data/state.db"

    def test_invalid_values_are_named(self, tmp_path):
        path = write_config(tmp_path, "[broker]\ntimeout = -5\n")
        result = run_cli("config", "--config", path)
        assert result.returncode == 2
        assert "invalid configuration: timeout must be >= 0" in result.stderr


class TestServeWithConfigFile:
    @pytest.mark.parametrize(("text", "message"), [
        ("[broker]\nprot = 8080\n", "unknown key 'prot' in [broker] (did you mean 'port'?)"),
        ('[broker]\nport = "8080"\n', "[broker] port must be an integer, got string '8080'"),
        ("[contact-center]\nofer-timeout = 3\n", "unknown key 'ofer-timeout' in [contact-center]"),
        ("[broker\n", "not valid TOML"),
    ])
    def test_bad_file_exits_2_naming_file_and_key(self, tmp_path, text, message):
        path = write_config(tmp_path, text)
        result = run_cli("serve", "--config", path)
        assert result.returncode == 2
        assert f"cometd-broker: invalid configuration: {path}: " in result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr

    def test_missing_file(self, tmp_path):
        result = run_cli("serve", "--config", str(tmp_path / "nope.toml"))
        assert result.returncode == 2
        assert "cannot read config file" in result.stderr and "nope.toml" in result.stderr

    def test_serve_uses_the_file_below_flags(self, tmp_path):
        path = write_config(tmp_path, '[broker]\nmount = "/from-file"\nallow-anonymous = true\nport = 1\n')
        running = start_broker("--config", path)  # start_broker's --port flag wins over the file's port
        try:
            assert f"listening on http://127.0.0.1:{running.port}/from-file (" in running.log()
            assert "anonymous allowed" in running.log()
        finally:
            running.stop()


ROOT = Path(__file__).parent.parent


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's final stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def docker_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for name, arguments in instructions:
        if name == "ENV":
            for pair in arguments.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


class TestDockerfile:
    """What the image promises: non-root, a volume holding the SQLite stores, a health check on /health.
    (No Docker engine runs the tests, so the image itself is not built here.)"""

    def test_runs_as_a_non_root_user(self):
        users = [arguments for name, arguments in dockerfile_instructions() if name == "USER"]
        assert users, "the final stage sets no USER: the broker would run as root"
        assert users[-1].split(":")[0] not in ("root", "0")

    def test_sqlite_stores_default_to_the_volume_through_real_options(self):
        instructions = dockerfile_instructions()
        assert ("VOLUME", "/data") in instructions
        env = docker_env(instructions)
        result = run_clean("config", "--json", env=env)
        assert result.returncode == 0, result.stderr
        options = json.loads(result.stdout)["options"]
        assert options["broker"]["event-log"]["source"] == "env"
        assert options["broker"]["event-log"]["value"].startswith("/data/")
        assert options["contact-center"]["state-db"]["source"] == "env"
        assert options["contact-center"]["state-db"]["value"].startswith("/data/")

    def test_healthcheck_asks_health_on_the_configured_port(self):
        checks = [arguments for name, arguments in dockerfile_instructions() if name == "HEALTHCHECK"]
        assert len(checks) == 1 and "/health" in checks[0] and "COMETD_BROKER_PORT" in checks[0]
        assert "8080" in dict(dockerfile_instructions()).get("EXPOSE", "")

    def test_installs_existing_extras_and_serves_on_all_interfaces(self):
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        extras = pyproject["project"]["optional-dependencies"]
        install = " ".join(arguments for name, arguments in dockerfile_instructions() if name == "RUN")
        assert '"cometd-broker[fast,redis,jwt]"' in install and {"fast", "redis", "jwt"} <= set(extras)
        command = json.loads(dict(dockerfile_instructions())["CMD"])
        assert command == ["cometd-broker", "serve", "--host", "0.0.0.0"]
