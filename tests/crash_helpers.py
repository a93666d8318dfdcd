"""Raw-Bayeux clients that survive a broker crash, for tests/test_crash_resume.py.

Plain aiohttp, no Bayeux client library: every request is one JSON POST, so the test sees exactly
what the broker sends. The broker's URL can change under the clients (a restart on a new port): they
read `Target.url` before every request and retry (bounded by a deadline) while the broker is down.

A publish attempt ends in one of three ways:
- acknowledged: the broker answered `successful: true` (the event is in the log);
- refused: the broker said no, or the connection was refused - the event was certainly not recorded;
- ambiguous: the request may have reached the broker before it died (reset, disconnect, timeout) -
  the event may or may not be in the log, and the retry may record it a second time.
Only acknowledged seqs must reach every subscriber; a seq may appear twice only if one of its attempts
was ambiguous (at-least-once publishing by the test, not a broker duplicate: the two copies carry
different replayIds).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

_ids = itertools.count(1)
REQUEST_TIMEOUT = 5.0  # seconds: any single request (long-polls are held for at most HOLD_MS)
HOLD_MS = 500
RETRY_PAUSE = 0.05


@dataclass
class Target:
    """Where the broker currently is (its Bayeux endpoint and the REST base)."""

    url: str  # http://127.0.0.1:PORT/cometd
    deadline: float  # time.monotonic() after which every loop gives up

    @property
    def base(self) -> str:
        return self.url.rsplit("/cometd", 1)[0]

    def expired(self) -> bool:
        return time.monotonic() > self.deadline


class Ambiguous(Exception):
    """The request may or may not have been processed."""


class Refused(Exception):
    """The request was certainly not processed (connection refused, or an explicit failure)."""


def _mid() -> str:
    return str(next(_ids))


async def post_json(http: aiohttp.ClientSession, url: str, body: Any,
                    headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST `body`; (status, parsed JSON). Refused when the connection could not be opened,
    Ambiguous when it broke after the request may have been sent."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            async with http.post(url, json=body, headers=headers) as response:
                return response.status, await response.json(content_type=None)
    except aiohttp.ClientConnectorError as exc:
        raise Refused(str(exc)) from exc
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise Ambiguous(f"{type(exc).__name__}: {exc}") from exc


@dataclass
class Subscriber:
    """A long-polling Bayeux client with ext.replay that re-handshakes (resuming from the last
    replayId it saw) whenever its session or the broker goes away."""

    name: str
    target: Target
    channel: str
    auth: dict[str, str] | None = None  # ext.authentication
    last_id: int = 0  # replayId of the newest event received (0: from the start)
    events: list[dict[str, Any]] = field(default_factory=list)  # every delivered event, in arrival order
    handshakes: int = 0
    replay_replies: list[dict[str, Any]] = field(default_factory=list)  # subscribe replies' ext.replay
    problems: list[str] = field(default_factory=list)  # protocol anomalies (asserted empty)
    client_id: str | None = None
    stopping: bool = False

    async def _open(self, http: aiohttp.ClientSession) -> None:
        ext: dict[str, Any] = {"replay": {self.channel: self.last_id}}
        if self.auth is not None:
            ext["authentication"] = self.auth
        handshake = {"channel": "/meta/handshake", "version": "1.0", "minimumVersion": "1.0",
                     "supportedConnectionTypes": ["long-polling"], "id": _mid(), "ext": ext}
        _, [reply] = await post_json(http, self.target.url, [handshake])
        if reply.get("successful") is not True:
            raise Refused(f"handshake failed: {reply}")
        if reply.get("ext", {}).get("replay") is not True:
            self.problems.append(f"handshake reply without ext.replay: {reply}")
        client_id = reply["clientId"]
        self.handshakes += 1
        subscribe = {"channel": "/meta/subscribe", "clientId": client_id, "subscription": self.channel,
                     "id": _mid(), "ext": {"replay": {self.channel: self.last_id}}}
        _, replies = await post_json(http, self.target.url, [subscribe])
        [sub] = [r for r in replies if r.get("channel") == "/meta/subscribe"]
        if sub.get("successful") is not True:
            raise Refused(f"subscribe failed: {sub}")
        self.replay_replies.append(sub.get("ext", {}).get("replay", {}))
        self.client_id = client_id

    async def run(self) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            while not self.stopping and not self.target.expired():
                try:
                    if self.client_id is None:
                        await self._open(http)
                    connect = {"channel": "/meta/connect", "clientId": self.client_id,
                               "connectionType": "long-polling", "id": _mid(), "advice": {"timeout": HOLD_MS}}
                    _, replies = await post_json(http, self.target.url, [connect])
                except (Refused, Ambiguous):
                    self.client_id = None  # the broker went away (or refused us): re-handshake and resume
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
                for message in replies:
                    if message.get("channel") == "/meta/connect" and "successful" in message:
                        if message["successful"] is not True:
                            self.client_id = None  # e.g. 402 session_unknown: re-handshake
                    elif "successful" not in message and "data" in message:
                        replay_id = message.get("ext", {}).get("replayId")
                        if not isinstance(replay_id, int):
                            self.problems.append(f"event without ext.replayId: {message}")
                            continue
                        self.events.append(message)
                        self.last_id = replay_id


@dataclass
class Publisher:
    """Publishes seq 0..count-1, each retried until acknowledged; records what happened to each."""

    target: Target
    count: int
    pause: float = 0.005
    acked: list[int] = field(default_factory=list)
    ambiguous: set[int] = field(default_factory=set)
    failures: int = 0
    in_progress: int = -1

    async def attempt(self, http: aiohttp.ClientSession, seq: int) -> None:
        """One publish attempt: returns when acknowledged, raises Refused or Ambiguous otherwise."""
        raise NotImplementedError

    async def reset(self) -> None:
        """Forget per-broker state (a session) after a failure."""

    async def run(self) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            for seq in range(self.count):
                self.in_progress = seq
                while True:
                    if self.target.expired():
                        return
                    try:
                        await self.attempt(http, seq)
                    except Ambiguous:
                        self.ambiguous.add(seq)
                    except Refused:
                        pass
                    else:
                        self.acked.append(seq)
                        break
                    self.failures += 1
                    await self.reset()
                    await asyncio.sleep(RETRY_PAUSE)
                await asyncio.sleep(self.pause)


@dataclass
class BayeuxPublisher(Publisher):
    """Publishes `{"seq": n}` on a shared channel from an anonymous Bayeux session."""

    channel: str = "/feed"
    client_id: str | None = None

    async def reset(self) -> None:
        self.client_id = None

    async def attempt(self, http: aiohttp.ClientSession, seq: int) -> None:
        if self.client_id is None:
            handshake = {"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"],
                         "id": _mid()}
            try:
                _, [reply] = await post_json(http, self.target.url, [handshake])
            except Ambiguous as exc:
                raise Refused(str(exc)) from exc  # no publish was sent
            if reply.get("successful") is not True:
                raise Refused(f"handshake failed: {reply}")
            self.client_id = reply["clientId"]
        publish = {"channel": self.channel, "clientId": self.client_id, "data": {"seq": seq}, "id": _mid()}
        _, replies = await post_json(http, self.target.url, [publish])
        [reply] = [r for r in replies if r.get("channel") == self.channel and "successful" in r]
        if reply["successful"] is not True:
            raise Refused(f"publish failed: {reply}")


@dataclass
class RestPublisher(Publisher):
    """Publishes per-user events through the REST API: each `NotReady` with `reason: seq-N` on
    /api/v2/me/channels/chat makes the server publish on the user's /v2/me/channels."""

    user: str = "u"
    password: str = "pw"
    logged_in: bool = False

    def _headers(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def reset(self) -> None:
        self.logged_in = False

    async def attempt(self, http: aiohttp.ClientSession, seq: int) -> None:
        if not self.logged_in:
            try:
                status, reply = await post_json(http, f"{self.target.base}/api/v2/me",
                                                {"operationName": "StartContactCenterSession", "channels": ["chat"]},
                                                self._headers())
            except Ambiguous as exc:
                raise Refused(str(exc)) from exc  # not the seq's publish
            if status != 200 or reply.get("statusCode") != 0:
                raise Refused(f"StartContactCenterSession failed: {status} {reply}")
            self.logged_in = True
        status, reply = await post_json(http, f"{self.target.base}/api/v2/me/channels/chat",
                                        {"operationName": "NotReady", "reason": f"seq-{seq}"}, self._headers())
        if status != 200 or reply.get("statusCode") != 0:
            raise Refused(f"NotReady failed: {status} {reply}")


def seq_of(event: dict[str, Any]) -> int | None:
    """The test seq an event carries (shared `{"seq": n}` or per-user `reason: "seq-n"`), else None."""
    data = event.get("data")
    if isinstance(data, dict) and isinstance(data.get("seq"), int):
        return data["seq"]
    if isinstance(data, dict) and isinstance(data.get("channels"), list):
        for entry in data["channels"]:
            reason = entry.get("userState", {}).get("reason", "")
            if isinstance(reason, str) and reason.startswith("seq-"):
                return int(reason[4:])
    return None


def delivery_problems(subscriber: Subscriber, publisher: Publisher) -> list[str]:
    """Everything wrong with what `subscriber` received, given what `publisher` knows it published."""
    problems = list(subscriber.problems)
    ids = [e["ext"]["replayId"] for e in subscriber.events]
    for before, after in itertools.pairwise(ids):
        if after <= before:
            problems.append(f"replayId {after} after {before}: not strictly increasing (a duplicate or reorder)")
    seqs = [s for s in map(seq_of, subscriber.events) if s is not None]
    seen: dict[int, int] = {}
    for s in seqs:
        seen[s] = seen.get(s, 0) + 1
    missing = sorted(set(publisher.acked) - set(seen))
    if missing:
        problems.append(f"{len(missing)} acknowledged seqs never delivered: {missing[:20]}")
    repeated = sorted(s for s, n in seen.items() if n > 1 and s not in publisher.ambiguous)
    if repeated:
        problems.append(f"seqs delivered more than once (and never ambiguously published): {repeated[:20]}")
    collapsed = [s for i, s in enumerate(seqs) if i == 0 or s != seqs[i - 1]]
    if collapsed != sorted(set(collapsed)):
        problems.append(f"seqs out of order: {collapsed[:50]}")
    unexpected = sorted(set(seen) - set(publisher.acked) - publisher.ambiguous)
    if unexpected:
        problems.append(f"seqs delivered that were never published: {unexpected[:20]}")
    return [f"{subscriber.name}: {p}" for p in problems]


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Until `predicate()` holds, polling every 20 ms; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
