"""The console script: options from flags and environment, the listening line, clean stop, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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
    finally:
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=15) == 0
    assert "Traceback" not in running.log()


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
