"""Structured logs: text or JSON lines, and the clientId and user of the session a line is about.

The formatter tests run in-process; the broker tests run a real `cometd-broker serve --log-format json`
subprocess, drive it over HTTP and parse every line it wrote."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
from conftest import USERS, USERS_OPTION, RunningBroker, start_broker

from cometd_broker import logs


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    """A logger writing through one handler set up like `configure` does, into a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("test_logs.capture")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield stream, logger
    logger.removeHandler(handler)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def use(logger: logging.Logger, formatter: logging.Formatter) -> None:
    logger.handlers[0].setFormatter(formatter)


class TestJsonFormatter:
    def test_fields(self, capture):
        stream, logger = capture
        use(logger, logs.JsonFormatter())
        logger.warning("queue of %d events", 3)
        (line,) = json_lines(stream)
        assert set(line) == {"ts", "level", "logger", "msg"}
        assert line["level"] == "WARNING" and line["logger"] == "test_logs.capture"
        assert line["msg"] == "queue of 3 events"
        assert line["ts"].endswith("Z") and line["ts"][10] == "T" and len(line["ts"]) == len("2024-06-10T08:00:00.123Z")

    def test_explicit_session_fields(self, capture):
        stream, logger = capture
        use(logger, logs.JsonFormatter())
        logger.info("session removed", extra=logs.session_fields("abc123", "alice"))
        (line,) = json_lines(stream)
        assert line["clientId"] == "abc123" and line["user"] == "alice"

    def test_bound_ids_and_explicit_ones_win(self, capture):
        stream, logger = capture
        use(logger, logs.JsonFormatter())
        with logs.bound("client-1", "alice"):
            logger.info("inside")
            logger.info("about bob", extra=logs.session_fields("client-2", "bob"))
        logger.info("outside")
        inside, about_bob, outside = json_lines(stream)
        assert (inside["clientId"], inside["user"]) == ("client-1", "alice")
        assert (about_bob["clientId"], about_bob["user"]) == ("client-2", "bob")
        assert "clientId" not in outside and "user" not in outside

    def test_exception_is_one_line_with_the_traceback(self, capture):
        stream, logger = capture
        use(logger, logs.JsonFormatter())
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("handler failed")
        (line,) = json_lines(stream)
        assert line["msg"] == "handler failed"
        assert "Traceback" in line["exc"] and "RuntimeError: boom" in line["exc"]

    def test_unserializable_arguments_are_text(self, capture):
        stream, logger = capture
        use(logger, logs.JsonFormatter())
        logger.info("peer %s", object.__new__(object), extra=logs.session_fields("c", None))
        (line,) = json_lines(stream)
        assert line["msg"].startswith("peer <object object") and line["clientId"] == "c" and "user" not in line


class TestTextFormatter:
    def test_ids_follow_the_message(self, capture):
        stream, logger = capture
        use(logger, logs.TextFormatter())
        logger.info("session removed", extra=logs.session_fields("abc123", "alice"))
        logger.info("no session")
        first, second = stream.getvalue().splitlines()
        assert first.endswith(" INFO test_logs.capture: session removed clientId=abc123 user=alice")
        assert second.endswith(" INFO test_logs.capture: no session")

    def test_ids_stay_on_the_message_line_before_a_traceback(self, capture):
        stream, logger = capture
        use(logger, logs.TextFormatter())
        with logs.bound(None, "alice"):
            try:
                raise ValueError("bad")
            except ValueError:
                logger.exception("request failed")
        lines = stream.getvalue().splitlines()
        assert lines[0].endswith("request failed user=alice")
        assert lines[1] == "Traceback (most recent call last):"


class TestContext:
    async def test_a_bound_user_stays_in_its_own_task(self, capture):
        stream, logger = capture
        use(logger, logs.JsonFormatter())

        async def request(user: str) -> None:
            logs.bind_user(user)
            await asyncio.sleep(0)
            logger.info("request")

        await asyncio.gather(asyncio.create_task(request("alice")), asyncio.create_task(request("bob")))
        logger.info("after")
        users = [line.get("user") for line in json_lines(stream)]
        assert sorted(users[:2]) == ["alice", "bob"] and users[2] is None

    async def test_unbound_context_drops_the_requesters_ids(self, capture):
        stream, logger = capture
        use(logger, logs.JsonFormatter())

        async def background() -> None:
            logger.info("timer fired")

        with logs.bound("client-1", "alice"):
            inherited = asyncio.get_running_loop().create_task(background())
            detached = asyncio.get_running_loop().create_task(background(), context=logs.unbound_context())
            logger.info("still alice")
        await asyncio.gather(inherited, detached)
        lines = json_lines(stream)
        assert lines[0]["user"] == "alice"
        assert [line.get("user") for line in lines[1:]] == ["alice", None]

    def test_configure_replaces_handlers_and_sets_level(self):
        root = logging.getLogger()
        saved_handlers, saved_level = list(root.handlers), root.level
        stream = io.StringIO()
        try:
            handler = logs.configure("warning", "json", stream)
            assert root.handlers == [handler] and root.level == logging.WARNING
            logging.getLogger("cometd_broker").info("dropped")
            logging.getLogger("cometd_broker").warning("kept", extra=logs.session_fields("c1", "u1"))
            assert [(line["msg"], line["clientId"], line["user"]) for line in json_lines(stream)] == [
                ("kept", "c1", "u1")]
            with pytest.raises(ValueError, match="log_format"):
                logs.configure("INFO", "xml", stream)
        finally:
            for handler in list(root.handlers):
                root.removeHandler(handler)
            for handler in saved_handlers:
                root.addHandler(handler)
            root.setLevel(saved_level)


# ----------------------------------------------------------------------------- a real broker


class Http:
    """A tiny synchronous HTTP client with a cookie jar (one agent desktop)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})
        with self.opener.open(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def bayeux(self, path: str, *messages: dict[str, Any]) -> list[dict[str, Any]]:
        return self.request("POST", path, list(messages))


def handshake(http: Http, path: str, ext: dict[str, Any] | None = None) -> str:
    message: dict[str, Any] = {"channel": "/meta/handshake", "version": "1.0",
                               "supportedConnectionTypes": ["long-polling"]}
    if ext:
        message["ext"] = ext
    (reply,) = http.bayeux(path, message)
    assert reply["successful"], reply
    return reply["clientId"]


def stopped_log(running: RunningBroker) -> list[dict[str, Any]]:
    """Stop the broker and parse every line it wrote: each must be one JSON object."""
    running.stop()
    lines = running.log().splitlines()
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    for record in parsed:
        assert {"ts", "level", "logger", "msg"} <= set(record), record
    return parsed


def about(records: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [record for record in records if text in record["msg"]]


def test_bayeux_session_lines_carry_client_id_and_user():
    running = start_broker("--users", USERS_OPTION, "--max-queue", "1", "--log-format", "json",
                           "--log-level", "DEBUG")
    try:
        alice, bob = Http(running.url.rsplit("/", 1)[0]), Http(running.url.rsplit("/", 1)[0])
        auth = {"authentication": {"user": "alice", "password": USERS["alice"]}}
        alice_id = handshake(alice, "/cometd", auth)
        assert alice.bayeux("/cometd", {"channel": "/meta/connect", "clientId": alice_id,
                                        "connectionType": "long-polling"})[0]["successful"]
        alice.bayeux("/cometd", {"channel": "/meta/subscribe", "clientId": alice_id, "subscription": "/room"})
        bob_id = handshake(bob, "/cometd", {"authentication": {"user": "bob", "password": USERS["bob"]}})
        # Alice's queue holds one event: bob's second publish makes her a slow consumer, in bob's request.
        for n in range(2):
            bob.bayeux("/cometd", {"channel": "/room", "clientId": bob_id, "data": {"n": n}})
        bob.bayeux("/cometd", {"channel": "/meta/disconnect", "clientId": bob_id})
    finally:
        records = stopped_log(running)
    assert about(records, "listening on")  # the announcement too is a JSON line
    opened = about(records, "session opened")
    assert {(r["clientId"], r["user"]) for r in opened} == {(alice_id, "alice"), (bob_id, "bob")}
    (slow,) = about(records, "session too slow")
    assert (slow["clientId"], slow["user"], slow["level"]) == (alice_id, "alice", "WARNING")
    removed = about(records, "session removed")
    assert {(r["clientId"], r["user"]) for r in removed} >= {(alice_id, "alice"), (bob_id, "bob")}
    for record in records:
        if "session" in record["msg"] and record["logger"].startswith("cometd_broker"):
            assert record.get("clientId") and record.get("user"), record


def test_rest_lines_carry_the_user(tmp_path: Path):
    users = tmp_path / "users.json"
    subprocess.run([sys.executable, "-m", "cometd_broker", "users", "add", "alice", "--password", "alice-pw",
                    "--agent-id", "101", "--file", str(users)], check=True, capture_output=True, timeout=30)
    running = start_broker("--users-file", str(users), "--log-format", "json", "--log-level", "DEBUG")
    try:
        desktop = Http(f"http://127.0.0.1:{running.port}")
        signed_in = desktop.request("PUT", "/agentgateway/resource/onlineagent/101", {"password": "alice-pw"})
        guid = signed_in["result"]["guid"]
        desktop.request("DELETE", "/agentgateway/resource/onlineagent/101/logout", headers={"Guid": guid})
        # A GWS login, then the desktop's CometD handshake on the same cookie.
        login = urllib.request.Request(desktop.base + "/api/v2/me", headers={
            "Authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()})
        with desktop.opener.open(login, timeout=10) as response:
            assert json.loads(response.read())["statusCode"] == 0
        client_id = handshake(desktop, "/api/v2/notifications")
    finally:
        records = stopped_log(running)
    (signed_in_line,) = about(records, "agent 101 signed in")
    assert signed_in_line["user"] == "alice"
    (signed_out_line,) = about(records, "agent 101 signed out")  # tagged by the request's context
    assert signed_out_line["user"] == "alice"
    (opened,) = about(records, "session opened")
    assert (opened["clientId"], opened["user"]) == (client_id, "alice")


def test_text_format_shows_the_ids():
    running = start_broker("--users", USERS_OPTION, "--log-level", "DEBUG")
    try:
        client = Http(running.url.rsplit("/", 1)[0])
        client_id = handshake(client, "/cometd", {"authentication": {"user": "carol", "password": USERS["carol"]}})
    finally:
        running.stop()
    lines = [line for line in running.log().splitlines() if "session opened" in line]
    assert len(lines) == 1 and lines[0].endswith(f"clientId={client_id} user=carol"), lines
