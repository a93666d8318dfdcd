"""Harness of the agent desktop's browser test: headless Chromium, a restartable broker, a customer.

Chromium is Debian's `chromium` package driven by Playwright with `executable_path` (Playwright never
downloads a browser here). Without Chromium, Playwright or the desktop's npm packages the test is skipped
locally and fails under CI (CI=true), so a broken CI setup cannot pass silently.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningBroker, free_port, wait_listening

REPO = Path(__file__).resolve().parents[2]
DESKTOP_DIR = REPO / "channels" / "desktop"
# This sandbox's closed network (and CI containers) need these: no sandboxing as root, no GPU, no
# background traffic to Google services that would only time out.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> str:
    """The Chromium executable, or skip (fail under CI) saying what is missing and how to install it."""
    problem = None
    chromium = chromium_path()
    if chromium is None:
        problem = "Chromium is not installed: apt-get install chromium (or set CHROMIUM_PATH)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "Playwright is not installed: pip install -e '.[test]'"
    if problem is None and not (DESKTOP_DIR / "node_modules" / "cometd" / "cometd.js").is_file():
        problem = "the desktop's CometD client is missing: npm ci --prefix channels/desktop"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    assert chromium is not None
    return chromium


def screenshot_folder(configured: str | None, prefix: str) -> Path:
    """Where a test's screenshots go: `configured` (an environment variable's value), or a new temporary
    folder named by `prefix`; the path is printed so a failing run can be looked at."""
    folder = Path(configured) if configured else Path(tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nagent desktop screenshots: {folder}")
    return folder


def add_user(users_file: Path, name: str, password: str, first_name: str) -> None:
    subprocess.run([sys.executable, "-m", "cometd_broker", "users", "add", name, "--file", str(users_file),
                    "--password-stdin", "--first-name", first_name], input=password + "\n", text=True,
                   check=True, capture_output=True)


@dataclass
class RestartableBroker:
    """A broker subprocess on a fixed port, stopped and started again with the same files."""

    args: list[str]
    port: int
    log_dir: Path
    running: RunningBroker | None = None
    starts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log_path = self.log_dir / f"broker-{self.starts}.log"
        command = [sys.executable, "-m", "cometd_broker", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   *self.args]
        with open(log_path, "wb") as log_file:  # a file, not a pipe: a chatty broker never blocks
            process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
        self.running = RunningBroker(f"{self.base}/cometd", self.port, process, str(log_path))
        wait_listening(self.running)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing is flushed or said goodbye to."""
        if self.running is not None and self.running.process.poll() is None:
            self.running.process.send_signal(signal.SIGKILL)
            self.running.process.wait(timeout=10)

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.log_dir.glob("*.log")))


def start_broker(tmp: Path, users: dict[str, tuple[str, str]], media_token: str,
                 extra_args: tuple[str, ...] = ()) -> RestartableBroker:
    users_file = tmp / "users.json"
    for name, (password, first_name) in users.items():
        add_user(users_file, name, password, first_name)
    args = ["--users-file", str(users_file), "--media-token", media_token, "--state-db", str(tmp / "state.db"),
            "--event-log", str(tmp / "events.db"), "--desktop-dir", str(DESKTOP_DIR), "--offer-timeout", "120",
            *extra_args]
    log_dir = tmp / "logs"
    log_dir.mkdir()
    broker = RestartableBroker(args, free_port(), log_dir)
    broker.start()
    return broker


class Customer:
    """The customer's side through the media gateway API (what an SMS aggregator would call)."""

    def __init__(self, broker: RestartableBroker, token: str, media: str = "sms") -> None:
        self.broker = broker
        self.token = token
        self.media = media
        self.id: str | None = None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.broker.base}/api/v2/media/{self.media}/interactions{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                reply = json.load(response)
        except urllib.error.HTTPError as error:
            reply = json.load(error)
        assert reply.get("statusCode") == 0, f"{method} {url}: {reply}"
        return reply

    def start(self, nickname: str, text: str) -> str:
        self.id = self._call("POST", "", {"nickname": nickname, "text": text})["id"]
        return self.id

    def say(self, text: str) -> None:
        self._call("POST", f"/{self.id}/messages", {"text": text})

    def typing(self, started: bool) -> None:
        self._call("POST", f"/{self.id}/typing", {"state": "started" if started else "stopped"})

    def transcript(self) -> list[dict[str, Any]]:
        return self._call("GET", f"/{self.id}/transcript")["messages"]

    def wait_for(self, predicate: Any, what: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The customer's transcript once `predicate(transcript)` holds."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.transcript()
            if predicate(messages):
                return messages
            if time.monotonic() > deadline:
                raise AssertionError(f"the customer never saw {what}; transcript: {messages}")
            time.sleep(0.1)
