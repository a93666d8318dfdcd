"""Interop harness: run third-party JavaScript Bayeux clients (tests/interop/node/*.mjs) under
Node against a real broker subprocess, and read what they saw as JSON lines. It also lends every
interop test the fault-injecting proxy (`chaos_proxy`) and an HTTP publisher.

A pytest plugin, loaded by the test modules with `pytest_plugins = ["node_harness"]` (not a
conftest.py: a second module named `conftest` would shadow tests/conftest.py for the tests
that do `from conftest import USERS`).

The Node packages come from tests/interop/node/package-lock.json: `npm ci --prefix
tests/interop/node`. Without Node or those packages the tests are skipped locally and fail
under CI (CI=true), so a broken CI setup cannot pass silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from chaos_proxy import ChaosProxy
from conftest import wait_listening

NODE_DIR = Path(__file__).parent / "node"
Event = dict[str, Any]
Predicate = Callable[[Event], bool]


def _node_problem() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    for package in ("cometd", "cometd-nodejs-client", "faye"):
        if not (NODE_DIR / "node_modules" / package / "package.json").exists():
            return f"npm package {package} is missing: run `npm ci --prefix tests/interop/node`"
    return None


def _install_node_packages() -> None:
    """`npm ci` from the lock file, once, when node is here but the packages are not."""
    if shutil.which("node") is None or shutil.which("npm") is None or _node_problem() is None:
        return
    command = ["npm", "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = getattr(exc, "stderr", "") or ""
        pytest.fail(f"`{' '.join(command)}` failed: {exc}\n{output[-2000:]}")


@pytest.fixture(scope="session")
def node_ready() -> None:
    _install_node_packages()
    problem = _node_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"interop tests cannot run: {problem}")
        pytest.skip(problem)


class NodeClient:
    """One Node client process: its JSON-line observations, collected as they arrive."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, stderr_path: str) -> None:
        self.name = name
        self.process = process
        self.stderr_path = stderr_path
        self.events: list[Event] = []
        self.noise: list[str] = []  # stdout lines that are not JSON (should stay empty)
        self._changed = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"read-{name}")

    async def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").strip()
            try:
                event = json.loads(text)
            except ValueError:
                self.noise.append(text)
                continue
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    def stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def describe(self) -> str:
        lines = "\n".join(json.dumps(e) for e in self.events)
        return f"--- {self.name} stdout ---\n{lines}\n--- {self.name} stderr (tail) ---\n{self.stderr()[-3000:]}"

    def of(self, event: str, **fields: Any) -> list[Event]:
        """Events named `event` whose fields equal `fields`."""
        return [e for e in self.events if e.get("event") == event
                and all(e.get(k) == v for k, v in fields.items())]

    async def wait_for(self, predicate: Predicate, timeout: float = 10.0, what: str = "event",
                       after: Event | None = None) -> Event:
        """The first event (already seen or future) matching `predicate`, only among the
        events that came after `after` when given."""
        start = 0 if after is None else next(i for i, e in enumerate(self.events) if e is after) + 1

        def found() -> Event | None:
            return next((e for e in self.events[start:] if predicate(e)), None)

        async def wait() -> Event:
            async with self._changed:
                while (event := found()) is None:
                    if self._reader.done():
                        raise AssertionError(f"{self.name} exited before {what}\n{self.describe()}")
                    await self._changed.wait()
                return event

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name}: no {what} within {timeout} s\n{self.describe()}") from None

    async def wait_event(self, event: str, timeout: float = 10.0, after: Event | None = None,
                         **fields: Any) -> Event:
        return await self.wait_for(
            lambda e: e.get("event") == event and all(e.get(k) == v for k, v in fields.items()),
            timeout, f"{event!r} {fields or ''}", after)

    def _answered(self, connect_id: Any) -> bool:
        return any(e.get("id") == connect_id for e in self.of("meta", channel="/meta/connect"))

    async def held_connect(self, settle: float = 0.2) -> Event:
        """Wait until a /meta/connect the client sent is unanswered, give it `settle` seconds to
        reach the broker over loopback, and check it is still unanswered: the broker holds it."""
        sent = await self.wait_for(lambda e: e.get("event") == "connect_sent" and not self._answered(e["id"]),
                                   what="an unanswered /meta/connect")
        await asyncio.sleep(settle)
        assert not self._answered(sent["id"]), (
            f"{self.name}: /meta/connect {sent['id']} was answered at once instead of being held\n"
            + self.describe())
        return sent

    async def exit_code(self, timeout: float = 25.0) -> int:
        """Wait for the process to end (its own deadline is 20 s) and for its output to be read."""
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
            await asyncio.wait_for(self._reader, 5)
        except TimeoutError:
            raise AssertionError(f"{self.name} did not exit within {timeout} s\n{self.describe()}") from None
        return code

    async def expect_success(self, timeout: float = 25.0) -> None:
        code = await self.exit_code(timeout)
        assert code == 0, f"{self.name} exited with {code}\n{self.describe()}"
        assert not self.noise, f"{self.name} printed non-JSON lines on stdout: {self.noise[:5]}"

    def pause(self) -> None:
        """Freeze the process (SIGSTOP), like a laptop lid closed or a stuck event loop."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
                self.process.kill()
            await self.process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)


@pytest.fixture
async def node_client(node_ready: None) -> AsyncIterator[Callable[..., Any]]:
    """`await node_client("cometd_client.mjs", url=..., scenario=..., **options)` -> a running
    NodeClient; option names use underscores (deadline_ms -> --deadline-ms=...)."""
    clients: list[NodeClient] = []
    paths: list[str] = []

    async def start(script: str, name: str | None = None, **options: Any) -> NodeClient:
        args = [f"--{key.replace('_', '-')}={value}" for key, value in options.items() if value is not None]
        with tempfile.NamedTemporaryFile(prefix="node-", suffix=".stderr", delete=False) as stderr:
            paths.append(stderr.name)
            process = await asyncio.create_subprocess_exec(
                "node", str(NODE_DIR / script), *args, cwd=NODE_DIR, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=stderr)
        client = NodeClient(name or f"{script}[{options.get('scenario')}]", process, stderr.name)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.kill()
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


@pytest.fixture
def restart_broker() -> Iterator[Callable[..., Any]]:
    """`restart_broker(running, crash=True)` stops a `broker_process` broker (SIGKILL when
    `crash`, else a graceful SIGTERM) and starts the same command on the same port, so clients
    come back to a broker that has never seen their clientId. Returns the new RunningBroker."""
    started: list[Any] = []

    def restart(running: Any, *, crash: bool) -> Any:
        if crash:
            running.process.kill()
            running.process.wait(timeout=5)
        else:
            running.stop()
        with tempfile.NamedTemporaryFile(prefix=f"broker-{running.port}-restarted-", suffix=".log",
                                         delete=False) as log_file:
            process = subprocess.Popen(running.process.args, stdout=log_file, stderr=subprocess.STDOUT)
        again = type(running)(running.url, running.port, process, log_file.name)
        started.append(again)
        wait_listening(again)
        return again

    yield restart
    for running in started:
        running.stop()


@pytest.fixture
def wait_for_log() -> Callable[..., Any]:
    """`await wait_for_log(broker, text, *also, timeout=10)`: poll a broker subprocess's log for a line
    holding `text` and every string of `also` (a session's line ends with `clientId=... user=...`)."""

    def logged(broker: Any, parts: tuple[str, ...]) -> bool:
        return any(all(part in line for part in parts) for line in broker.log().splitlines())

    async def wait(broker: Any, text: str, *also: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not logged(broker, (text, *also)):
            if time.monotonic() > deadline:
                raise AssertionError(f"the broker never logged {text!r} within {timeout} s:\n{broker.log()[-3000:]}")
            await asyncio.sleep(0.05)

    return wait


class HttpPublisher:
    """A minimal Bayeux client over plain aiohttp POSTs (long-polling): handshake, publish,
    disconnect. Used as the "other client" whose messages the JavaScript clients receive."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.client_id: str | None = None
        self._ids = 0

    def _id(self) -> str:
        self._ids += 1
        return str(self._ids)

    async def send(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        async with self.http.post(self.url, json=messages) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "application/json"
            return await response.json()

    async def handshake(self, ext: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"channel": "/meta/handshake", "version": "1.0", "id": self._id(),
                                   "supportedConnectionTypes": ["long-polling"]}
        if ext is not None:
            message["ext"] = ext
        [reply] = await self.send([message])
        assert reply["successful"] is True, reply
        self.client_id = reply["clientId"]
        return reply

    async def publish(self, channel: str, data: Any) -> dict[str, Any]:
        message_id = self._id()
        replies = await self.send([{"channel": channel, "data": data, "clientId": self.client_id,
                                    "id": message_id}])
        ack = next(r for r in replies if r.get("id") == message_id and "successful" in r)
        assert ack == {"channel": channel, "successful": True, "id": message_id}, replies
        return ack

    async def close(self) -> None:
        try:
            if self.client_id is not None:
                await self.send([{"channel": "/meta/disconnect", "clientId": self.client_id, "id": self._id()}])
        finally:
            await self.http.close()


@pytest.fixture
async def http_publisher() -> AsyncIterator[Callable[..., Any]]:
    """`await http_publisher(url, ext=None)` -> a handshaken HttpPublisher, closed after the test."""
    publishers: list[HttpPublisher] = []

    async def make(url: str, ext: dict[str, Any] | None = None) -> HttpPublisher:
        publisher = HttpPublisher(url)
        publishers.append(publisher)
        await publisher.handshake(ext)
        return publisher

    yield make
    for publisher in publishers:
        with contextlib.suppress(Exception):
            await publisher.close()


@pytest.fixture
async def chaos_proxy() -> AsyncIterator[Callable[[int], Any]]:
    """`await chaos_proxy(upstream_port)` -> a started ChaosProxy, stopped after the test."""
    proxies: list[ChaosProxy] = []

    async def make(port: int) -> ChaosProxy:
        proxy = ChaosProxy(port)
        proxies.append(proxy)
        await proxy.start()
        return proxy

    yield make
    for proxy in proxies:
        await proxy.stop()
