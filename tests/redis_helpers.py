"""A real redis-server for the tests: started on a free loopback port, stopped by its PID.

No persistence (`--save '' --appendonly no`): a restart is a Redis that lost its data, the
harder case for the cluster. Without redis-server (or the redis package) the tests that need it
are skipped, except under CI (CI=true), where that is a broken setup and fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence

import pytest
from conftest import free_port


def require_redis() -> str:
    """The redis-server executable, or skip (fail under CI) when it or the redis package is missing."""
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server")
                                              else None)
    try:
        import redis  # noqa: F401
    except ImportError:
        binary = None
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server and the redis package are required under CI (.ci/run installs them)")
        pytest.skip("redis-server or the redis Python package is not installed")
    return binary


@contextlib.contextmanager
def running_redis(*args: str) -> Iterator[RedisServer]:
    """A started redis-server (with extra command-line `args`), stopped afterwards: the body of the
    test modules' `redis_server` fixtures, each of its own scope."""
    server = RedisServer(require_redis(), args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RedisServer:
    def __init__(self, binary: str, args: Sequence[str] = ()) -> None:
        self.binary = binary
        self.args = list(args)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        self.log_path = os.path.join(self.dir, "redis.log")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self.dir, *self.args],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):  # up (with or without a password)
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in time")

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL: the brokers see their connections reset, as on a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
