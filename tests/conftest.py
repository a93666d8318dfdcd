"""Shared fixtures: an in-process broker behind aiohttp's test server, and a real broker subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from cometd_broker import BrokerConfig, create_app
from cometd_broker.serving import LeanAppRunner

# Every broker subprocess a test starts keeps contact-center state and its event log in memory unless
# the test passes --state-db / --event-log: brokers must not share (or leave behind) files in the
# working directory.
os.environ.setdefault("COMETD_BROKER_STATE_DB", ":memory:")
os.environ.setdefault("COMETD_BROKER_EVENT_LOG", "memory:")

# Credentials used by every test that authenticates.
USERS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
USERS_OPTION = ",".join(f"{user}:{secret}" for user, secret in USERS.items())
TOKENS = {"alice": "alice-token", "bob": "bob-token", "carol": "carol-token"}  # user -> bearer token
TOKENS_OPTION = ",".join(f"{token}={user}" for user, token in TOKENS.items())


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Any]:
    """A real redis-server of the module's own (tests/redis_helpers.py), stopped after its last test."""
    from redis_helpers import running_redis  # imported here: redis_helpers imports this module

    with running_redis() as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LeanTestServer(TestServer):
    """aiohttp's test server with `cometd-broker serve`'s runner: long-polls take the lean path."""

    async def _make_runner(self, **kwargs: Any) -> LeanAppRunner:
        return LeanAppRunner(self.app, **kwargs)


@pytest.fixture
def http_server() -> str:
    """Which HTTP server `make_client` uses: "lean" as `serve` does; suites that test long-polling
    override this fixture with both values (see test_long_polling.py)."""
    return "lean"


@pytest.fixture
def make_client(aiohttp_client, http_server: str) -> Callable:
    """`await make_client(**config)` -> an aiohttp TestClient for a fresh broker app."""

    async def make(**options):
        options.setdefault("users", USERS_OPTION)
        options.setdefault("tokens", TOKENS_OPTION)
        app = create_app(BrokerConfig(**options))
        return await aiohttp_client(LeanTestServer(app) if http_server == "lean" else app)

    return make


@dataclass
class RunningBroker:
    url: str  # the Bayeux endpoint, e.g. http://127.0.0.1:PORT/cometd
    port: int
    process: subprocess.Popen
    log_path: str

    def log(self) -> str:
        """Everything the broker printed so far (for assertions and failure messages)."""
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def wait_listening(running: RunningBroker, timeout: float = 15.0) -> None:
    """Block until the broker subprocess accepts connections on its port; fail if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"broker exited with {running.process.returncode}: {running.log()}")
        try:
            with socket.create_connection(("127.0.0.1", running.port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    running.process.kill()
    raise RuntimeError(f"broker did not listen on port {running.port} in time")


def start_broker(*args: str, env: dict[str, str] | None = None, timeout: float = 15.0) -> RunningBroker:
    """Start `python -m cometd_broker serve` on a free loopback port and wait until it listens."""
    port = free_port()
    command = [sys.executable, "-m", "cometd_broker", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    # A file, not a pipe: a chatty broker must never block on a full pipe.
    with tempfile.NamedTemporaryFile(prefix=f"broker-{port}-", suffix=".log", delete=False) as log_file:
        process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    running = RunningBroker("", port, process, log_file.name)
    wait_listening(running, timeout)
    mount = "/cometd"
    for i, arg in enumerate(args):
        if arg == "--mount":
            mount = args[i + 1]
    running.url = f"http://127.0.0.1:{port}{mount}"
    return running


@pytest.fixture
def broker_process() -> Iterator[Callable[..., RunningBroker]]:
    """`broker_process(*flags, env=...)` starts a real broker subprocess, stopped after the test."""
    started: list[RunningBroker] = []

    def start(*args: str, env: dict[str, str] | None = None) -> RunningBroker:
        running = start_broker(*args, env=env)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
