"""What a first run on a clean machine meets: mistakes said in one line (exit 2), and where data is kept."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import free_port, start_broker

from cometd_broker.cli import describe_event_log

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "media-token-0123456789"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cometd_broker", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})}, cwd=ROOT)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cometd-broker")]  # not log lines
    assert len(lines) == 1, result.stderr
    return lines[0]


# ----------------------------------------------------------------------------- an empty media token


@pytest.mark.parametrize("how", ["flag", "env", "file"])
def test_an_empty_media_token_given_explicitly_is_an_error(tmp_path, how):
    """`--media-token "$GATEWAY_TOKEN"` with the variable unset must not turn the media API off silently."""
    args: list[str] = ["serve", "--port", str(free_port())]
    env: dict[str, str] = {}
    if how == "flag":
        args += ["--media-token", ""]
    elif how == "env":
        env["COMETD_BROKER_MEDIA_TOKEN"] = ""
    else:
        config = tmp_path / "broker.toml"
        config.write_text('[contact-center]\nmedia-token = ""\n', encoding="utf-8")
        args += ["--config", str(config)]
    line = one_error_line(run_cli(*args, env=env))
    assert "media-token is empty" in line and "leave media-token unset" in line


# ----------------------------------------------------------------------------- where data is kept


def test_start_up_names_the_event_log_and_the_state_store_by_absolute_path(tmp_path):
    events, state = tmp_path / "events.db", tmp_path / "state.db"
    running = start_broker("--event-log", str(events), "--state-db", str(state), "--media-token", TOKEN)
    try:
        log = running.log()
    finally:
        running.stop()
    assert f"data: event log {events}; contact-center state {state}" in log, log
    assert "capacity chat=1, sms=1" in log


def test_start_up_says_when_data_is_kept_in_memory():
    running = start_broker("--allow-anonymous", env={"COMETD_BROKER_EVENT_LOG": "memory:"})
    try:
        log = running.log()
    finally:
        running.stop()
    assert "data: event log in memory (lost on exit)\n" in log, log  # no contact-center API: no state store


def test_relative_paths_are_named_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert describe_event_log("cometd-broker-events.db") == str(tmp_path / "cometd-broker-events.db")
    assert describe_event_log("sqlite:logs/events.db") == str(tmp_path / "logs" / "events.db")
    assert describe_event_log("sqlite:///var/lib/events.db") == "/var/lib/events.db"
    assert describe_event_log("memory:") == "in memory (lost on exit)"
    assert describe_event_log("redis://:secret@host:6379/0") == "in Redis at redis://:****@host:6379/0"


# ----------------------------------------------------------------------------- start-up failures


def test_a_busy_port_is_one_line_and_exit_2():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_error_line(run_cli("serve", "--allow-anonymous", "--port", str(port)))
    assert line.startswith(f"cometd-broker: cannot listen on 127.0.0.1:{port}: "), line
    assert line.endswith("Address already in use"), line


NO_REDIS = textwrap.dedent("""
    import sys

    class HideRedis:  # as if the `redis` extra were not installed
        def find_spec(self, name, path=None, target=None):
            if name == "redis" or name.startswith("redis."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, HideRedis())
    from cometd_broker.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_redis_without_the_redis_package_is_one_line_and_exit_2():
    url = "redis://127.0.0.1:1/0"
    result = subprocess.run([sys.executable, "-c", NO_REDIS, "serve", "--allow-anonymous", "--redis", url,
                             "--port", str(free_port())], capture_output=True, text=True, timeout=30, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COMETD_BROKER_EVENT_LOG": url})
    line = one_error_line(result)
    assert "needs the redis package" in line and "cometd-broker[redis]" in line, line


# ----------------------------------------------------------------------------- capacity per channel


def test_capacity_is_an_option_from_flag_env_or_file(tmp_path):
    line = one_error_line(run_cli("serve", "--port", str(free_port()), "--media-token", TOKEN,
                                  "--capacity", "voice=2"))
    assert "capacity names unknown channel 'voice'" in line
    config = tmp_path / "broker.toml"
    config.write_text('[contact-center]\ncapacity = "2,chat=4"\n', encoding="utf-8")
    result = run_cli("config", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    capacity = json.loads(result.stdout)["options"]["contact-center"]["capacity"]
    assert (capacity["value"], capacity["source"]) == ("2,chat=4", "file")
