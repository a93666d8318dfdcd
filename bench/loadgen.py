"""A raw-Bayeux load generator for bench/run.py: many sessions multiplexed on one event loop.

Speaks Bayeux 1.0 itself over aiohttp (long-polling with pooled keep-alive connections, and
websocket), so it can drive any Bayeux server the same way. One process, meant to be pinned to
its own core (bench/run.py runs it under `taskset -c 1`); uvloop when installed.

Scenarios (`--scenario`):
  fanout   N subscribers on one channel; publish rate stepped up
  p2p      N subscribers each on its own channel; total publish rate stepped up
  idle     many websocket sessions and parked long-polls: RSS per session, handshakes/s
  agents   the contact-center API (cometd-broker only): REST operations driving /v2/me notifications

Every published message carries `{"s": seq, "t": send time, "k": step}` with the send time from
this process's monotonic clock, so latency is measured on one clock. Loss is counted per
(subscriber, step): every expected delivery that has not arrived once the step has drained.

It prints one JSON document on stdout. With `--server-pid` it also reads the server's CPU time
(/proc/PID/stat utime+stime) around every step, its RSS and peak RSS (VmRSS, VmHWM in
/proc/PID/status); its own CPU comes from resource.getrusage. The server's CPU includes its
descendants (the workers of `serve --workers N`); `--extra-pids` names processes measured beside
it, per step and per process (redis-server in bench/run.py's redis scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

try:
    import uvloop
except ImportError:  # pragma: no cover - the bench still runs, a little slower
    uvloop = None

CLK_TCK = os.sysconf("SC_CLK_TCK")
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=90, sock_connect=30)


def now() -> float:
    return time.monotonic()


# --------------------------------------------------------------------------- server process metrics

def proc_cpu(pid: int | None) -> float:
    """utime + stime of a process and its descendants (the workers of `serve --workers N`), in
    seconds (0 without a pid)."""
    if not pid:
        return 0.0
    return sum(cpu_by_process([pid]).values())


def proc_mem(pid: int | None) -> dict[str, int]:
    """VmRSS and VmHWM in KiB."""
    out = {"rss_kb": 0, "hwm_kb": 0}
    if not pid:
        return out
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                out["hwm_kb"] = int(line.split()[1])
    return out


# process trees: a supervisor's workers, and --extra-pids (redis-server) beside the server

def proc_children(pid: int) -> list[int]:
    """The direct children of a process (/proc/PID/task/*/children, over all its threads)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def proc_tree(pid: int) -> list[int]:
    """A process and all its descendants, the process first."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        if p not in tree:
            tree.append(p)
            todo.extend(proc_children(p))
    return tree


def cpu_by_process(roots: list[int]) -> dict[str, float]:
    """utime + stime in seconds of every live process in the trees of `roots`, by pid (as text)."""
    out: dict[str, float] = {}
    for root in roots:
        for pid in proc_tree(root):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            out[str(pid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def proc_names(roots: list[int]) -> dict[str, dict[str, Any]]:
    """pid -> parent pid, command name and memory, for every process in the trees of `roots`."""
    out: dict[str, dict[str, Any]] = {}
    for root in roots:
        for pid in proc_tree(root):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    head, rest = f.read().rsplit(")", 1)
                out[str(pid)] = {"ppid": int(rest.split()[1]), "comm": head.split("(", 1)[1], **proc_mem(pid)}
            except OSError:
                continue
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {pid: round(cpu - before.get(pid, 0.0), 3) for pid, cpu in after.items()}


def pid_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def machine_busy() -> float:
    """CPU seconds all processes on the machine spent busy (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


# --------------------------------------------------------------------------- measurement

class Recorder:
    """Deliveries of the current step: counts, duplicates and the arrival batches latency is
    computed from once the step is over (so the measuring costs little while it runs)."""

    def __init__(self) -> None:
        self.step = -1
        self.received = 0
        self.duplicates = 0
        self.stale = 0  # deliveries of an earlier step that arrived late
        self.parsed = 0  # deliveries that took the parsing path (gaps, repeats, late arrivals)
        self.reads = 0  # replies or frames that carried deliveries
        self.step_first: dict[str, int] = {}  # channel -> first sequence number of this step
        self.sent_at: dict[str, list[float]] = {}  # channel -> send time of every sequence number
        self.batches: list[tuple[list[float], int, int, float]] = []  # (sent_at, first seq, count, arrival)

    def start(self, step: int, step_first: dict[str, int]) -> None:
        self.step = step
        self.step_first = dict(step_first)
        self.received = 0
        self.duplicates = 0
        self.stale = 0
        self.parsed = 0
        self.reads = 0
        self.batches = []

    def arrived(self, channel: str, first: int, count: int, t: float) -> None:
        """`count` consecutive sequence numbers from `first`, received at `t`, none seen before."""
        start = self.step_first.get(channel, 0)
        if first < start:
            old = min(count, start - first)
            self.stale += old
            first, count = first + old, count - old
            if not count:
                return
        self.received += count
        self.batches.append((self.sent_at[channel], first, count, t))  # one per reply or frame read

    def latencies(self) -> list[float]:
        out: list[float] = []
        for sent, first, count, t in self.batches:
            out.extend([t - x for x in sent[first:first + count]])
        out.sort()
        return out


# the sequence number of a published message, as every server serializes our data object
SEQ = re.compile(rb'"data":\{"s":(\d+),')


class Client:
    """One Bayeux session; the base of the long-polling and websocket clients."""

    def __init__(self, gen: LoadGen, index: int, channels: list[str]) -> None:
        self.gen = gen
        self.index = index
        self.channels = channels
        self.client_id: str | None = None
        self.expect: dict[str, int] = {}  # channel -> next sequence number due
        self.missing: set[tuple[str, int]] = set()  # (channel, seq) skipped so far, may still arrive
        # the fast path's check that a delivery is on this client's one channel
        self.channel_token = b'"channel":"' + channels[0].encode() + b'"' if len(channels) == 1 else b""
        self.ids = 0
        self.rehandshakes = 0
        self.errors = 0
        self.ready = asyncio.Event()
        self.stopping = False
        self.extra_notifications: list[dict[str, Any]] = []  # agents scenario
        self.on_data = None  # optional callback(message) for the agents scenario

    def next_id(self) -> str:
        self.ids += 1
        return str(self.ids)

    def handshake_msg(self, transport: str, ext: dict[str, Any] | None = None) -> dict[str, Any]:
        m = {"channel": "/meta/handshake", "version": "1.0", "minimumVersion": "1.0",
             "supportedConnectionTypes": [transport], "id": self.next_id()}
        if ext:
            m["ext"] = ext
        return m

    def connect_msg(self, transport: str) -> dict[str, Any]:
        return {"channel": "/meta/connect", "clientId": self.client_id, "connectionType": transport,
                "id": self.next_id()}

    def subscribe_msgs(self) -> list[dict[str, Any]]:
        return [{"channel": "/meta/subscribe", "clientId": self.client_id, "subscription": c,
                 "id": self.next_id()} for c in self.channels]

    def take(self, body: bytes, t: float) -> bool:
        """Account a response or frame of data messages without parsing it as JSON: the sequence
        numbers are found by a regex and must be exactly the next ones due on this client's one
        channel. False (nothing accounted) when anything else is in it; the caller then parses it."""
        found = SEQ.findall(body)
        n = len(found)
        if not n or not self.channel_token or body.count(self.channel_token) != n:
            return False
        channel = self.channels[0]
        first = int(found[0])
        if first != self.expect.get(channel, 0) or int(found[-1]) != first + n - 1 or (
                n > 2 and list(map(int, found)) != list(range(first, first + n))):
            return False
        self.expect[channel] = first + n
        rec = self.gen.rec
        rec.reads += 1
        rec.arrived(channel, first, n, t)
        return True

    def deliver(self, message: dict[str, Any], t: float) -> None:
        """Account one parsed data message (the slow path: gaps, repeats, late arrivals)."""
        data = message.get("data")
        if self.on_data is not None:
            self.on_data(self, message, t)
            return
        if not isinstance(data, dict) or "s" not in data:
            return
        rec = self.gen.rec
        channel = message.get("channel", "")
        seq = data["s"]
        due = self.expect.get(channel, 0)
        if seq == due:
            self.expect[channel] = seq + 1
        elif seq > due:
            # a gap: concurrent publish requests may be processed out of order; remember the
            # missing numbers so a late arrival counts as delivered, a repeat as a duplicate
            self.missing.update((channel, x) for x in range(due, seq))
            self.expect[channel] = seq + 1
        elif (channel, seq) in self.missing:
            self.missing.discard((channel, seq))
        else:
            rec.duplicates += 1
            return
        if channel in rec.sent_at:
            rec.parsed += 1
            rec.arrived(channel, seq, 1, t)


class LongPollingClient(Client):
    transport = "long-polling"
    own_connection = True  # connects on a connection of its own (_PollConnection), not the pool

    def __init__(self, gen: LoadGen, index: int, channels: list[str], headers: dict[str, str] | None = None,
                 ext: dict[str, Any] | None = None) -> None:
        super().__init__(gen, index, channels)
        self.cookie = ""
        self.base_headers = headers or {}
        self.ext = ext
        self.wake: asyncio.Future[tuple[int, bytes, float] | None] | None = None
        self.fast = False  # the first reply goes through the parsing path (CometD answers it at once)
        self.request_head: bytes | None = None

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", **self.base_headers}
        if self.cookie:
            h["Cookie"] = self.cookie if "Cookie" not in h else h["Cookie"] + "; " + self.cookie
        return h

    def _pool(self, messages: list[dict[str, Any]]) -> RawHttpPool | None:
        """The lean pool this request goes through (None: aiohttp's client)."""
        return self.gen.raw

    async def post(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raw = self._pool(messages)
        if raw is not None:
            status, cookies, body = await raw.post(orjson.dumps(messages), self._headers())
            if status != 200:
                self.errors += 1
                return [{"successful": False, "http": status}]
            if cookies and not self.cookie:
                self.cookie = "; ".join(c.split(b";", 1)[0].decode() for c in cookies)
            return orjson.loads(body)
        async with self.gen.http.post(self.gen.url, data=orjson.dumps(messages), headers=self._headers()) as r:
            body = await r.read()
            if r.status != 200:
                self.errors += 1
                return [{"successful": False, "http": r.status}]
            if not self.cookie:
                jar = [c.split(";", 1)[0] for c in r.headers.getall("Set-Cookie", [])]
                if jar:
                    self.cookie = "; ".join(jar)
        return orjson.loads(body)

    async def handshake(self) -> bool:
        replies = await self.post([self.handshake_msg(self.transport, self.ext)])
        for m in replies:
            if m.get("channel") == "/meta/handshake" and m.get("successful"):
                self.client_id = m["clientId"]
                return True
        self.errors += 1
        return False

    async def setup(self) -> bool:
        """Handshake, subscribe, first connect (answered at once by CometD servers)."""
        if not await self.handshake():
            return False
        if self.channels:
            replies = await self.post(self.subscribe_msgs())
            if not all(m.get("successful") for m in replies if m.get("channel") == "/meta/subscribe"):
                self.errors += 1
                return False
        return True

    async def run(self) -> None:
        """The connect loop: re-issue a connect as soon as the previous one is answered. With the
        lean client, a `_PollConnection` of its own re-issues it from the callback that completes
        the previous one; this coroutine only wakes for what that fast path does not handle."""
        raw = self.gen.raw
        if raw is None or self.on_data is not None or not self.own_connection:
            return await self._run_pooled()
        loop = asyncio.get_running_loop()
        conn: _PollConnection | None = None
        while not self.stopping:
            self.wake = loop.create_future()
            if conn is None or conn.closed:
                try:
                    _, conn = await loop.create_connection(lambda: _PollConnection(self), raw.host, raw.port)
                except OSError:
                    self.errors += 1
                    await asyncio.sleep(0.1)
                    continue
            else:
                conn.send()
            outcome = await self.wake
            if outcome is None:
                continue  # the connection closed: open another
            status, body, t = outcome
            if status != 200:
                self.errors += 1
                await asyncio.sleep(0.05)
                continue
            if not await self._handle(orjson.loads(body), t):
                await asyncio.sleep(0.05)
            self.fast = True

    def connect_request(self) -> bytes:
        """A whole HTTP request carrying the next /meta/connect."""
        self.ids += 1
        body = b'[{"channel":"/meta/connect","clientId":"%s","connectionType":"long-polling","id":"%d"}]' % (
            self.client_id.encode(), self.ids)  # type: ignore[union-attr]
        if self.request_head is None:
            raw = self.gen.raw
            assert raw is not None
            extra = "".join(f"{k}: {v}\r\n" for k, v in self._headers().items())
            self.request_head = f"POST {raw.path} HTTP/1.1\r\nHost: {raw.host}:{raw.port}\r\n{extra}".encode()
        return self.request_head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    async def _run_pooled(self) -> None:
        transport = self.transport
        while not self.stopping:
            try:
                replies = await self.post([self.connect_msg(transport)])
            except (TimeoutError, aiohttp.ClientError, OSError):
                self.errors += 1
                await asyncio.sleep(0.1)
                continue
            if not await self._handle(replies, now()):
                await asyncio.sleep(0.05)

    async def _handle(self, replies: list[dict[str, Any]], t: float) -> bool:
        """A connect's replies: deliveries accounted, a re-handshake when advised; False on failure."""
        ok = True
        carried = False
        for m in replies:
            ch = m.get("channel")
            if ch == "/meta/connect":
                if not m.get("successful"):
                    ok = False
                    advice = m.get("advice") or {}
                    if advice.get("reconnect") == "handshake":
                        self.rehandshakes += 1
                        self.request_head = None
                        await self.setup()
            elif ch is not None and "data" in m:
                self.deliver(m, t)
                carried = True
            elif "http" in m:
                ok = False
        self.gen.rec.reads += carried
        self.ready.set()
        return ok


class _PollConnection(asyncio.Protocol):
    """A long-polling client's own keep-alive connection for its connect loop. A reply that is
    successful and holds only the next data messages due is accounted by `Client.take` and the
    next connect written at once: no task, future or JSON parse per cycle. Anything else wakes
    the client's coroutine with (status, body, arrival time)."""

    def __init__(self, client: LongPollingClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.body_at = 0
        self.status = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.transport.write(self.client.connect_request())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        wake = self.client.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                at = head.find(b"\r\ncontent-length:")
                if at < 0 or b"\r\ntransfer-encoding:" in head:
                    assert self.transport is not None
                    self.transport.close()  # not a response this lean reader handles
                    return
                stop = head.find(b"\r\n", at + 2)
                self.status = int(head[9:12])
                self.body_at = end + 4
                self.need = self.body_at + int(head[at + 17:stop if stop > 0 else len(head)])
            if len(buf) < self.need:
                return
            body = bytes(buf[self.body_at:self.need])
            del buf[:self.need]
            self.need = -1
            t = now()
            client = self.client
            if (self.status == 200 and client.fast and b'"successful":false' not in body
                    and (client.take(body, t) or b'"data"' not in body)):
                if not client.stopping:
                    self.send()
            else:
                wake = client.wake
                if wake is not None and not wake.done():
                    wake.set_result((self.status, body, t))


class WebSocketClient(Client):
    """Bayeux over a websocket of its own (`_WsConnection`): frames are read in the protocol
    callback, and a frame holding only the next data messages due is accounted without parsing."""

    transport = "websocket"

    def __init__(self, gen: LoadGen, index: int, channels: list[str]) -> None:
        super().__init__(gen, index, channels)
        self.ws: _WsConnection | None = None
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def send(self, messages: list[dict[str, Any]]) -> None:
        assert self.ws is not None
        self.ws.send_text(orjson.dumps(messages))

    async def request(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        futures = []
        for m in messages:
            f = loop.create_future()
            self.pending[m["id"]] = f
            futures.append(f)
        self.send(messages)
        return list(await asyncio.gather(*futures))

    async def setup(self) -> bool:
        raw = self.gen.raw or RawHttpPool(self.gen.url)
        loop = asyncio.get_running_loop()
        _, self.ws = await loop.create_connection(lambda: _WsConnection(self, raw), raw.host, raw.port)
        await self.ws.opened
        [hs] = await self.request([self.handshake_msg(self.transport)])
        if not hs.get("successful"):
            self.errors += 1
            return False
        self.client_id = hs["clientId"]
        if self.channels:
            replies = await self.request(self.subscribe_msgs())
            if not all(m.get("successful") for m in replies):
                self.errors += 1
                return False
        self.send([self.connect_msg(self.transport)])
        return True

    def on_text(self, data: bytes, t: float) -> None:
        if b'"/meta/' not in data and self.take(data, t):
            return
        parsed = orjson.loads(data)
        if isinstance(parsed, dict):
            parsed = [parsed]
        carried = False
        for m in parsed:
            ch = m.get("channel")
            if ch == "/meta/connect":
                self.ready.set()
                if not m.get("successful"):
                    self.errors += 1
                    advice = m.get("advice") or {}
                    if advice.get("reconnect") == "handshake":
                        self.rehandshakes += 1
                        continue
                if not self.stopping:
                    self.send([self.connect_msg(self.transport)])
                continue
            mid = m.get("id")
            f = self.pending.pop(mid, None) if mid is not None and ch and ch.startswith("/meta/") else None
            if f is not None:
                f.set_result(m)
            elif "data" in m:
                self.deliver(m, t)
                carried = True
            elif mid is not None and mid in self.pending:
                self.pending.pop(mid).set_result(m)
        self.gen.rec.reads += carried

    async def run(self) -> None:
        assert self.ws is not None
        await self.ws.closed

    async def close(self) -> None:
        self.stopping = True
        if self.ws is not None:
            self.ws.close()


class _WsConnection(asyncio.Protocol):
    """A minimal RFC 6455 client: the upgrade, masked text frames out, unmasked frames in
    (pings answered, fragments joined); each text message goes to `client.on_text`."""

    def __init__(self, client: WebSocketClient, raw: RawHttpPool) -> None:
        self.client = client
        self.raw = raw
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.fragments = bytearray()
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET {self.raw.path} HTTP/1.1\r\nHost: {self.raw.host}:{self.raw.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionResetError("websocket closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_text(self, payload: bytes) -> None:
        self._send(0x1, payload)

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        # a zero mask: masking is required of clients, and XOR with zeros leaves the payload as is
        assert self.transport is not None
        self.transport.write(head + b"\0\0\0\0" + payload)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(bytes(buf[:end]).decode("latin-1")))
                self.close()
                return
            self.upgraded = True
            del buf[:end + 4]
            self.opened.set_result(None)
        t = now()
        at = 0
        size = len(buf)
        while size - at >= 2:
            b0, b1 = buf[at], buf[at + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - at < 4:
                    break
                n = int.from_bytes(buf[at + 2:at + 4], "big")
                head = 4
            elif n == 127:
                if size - at < 10:
                    break
                n = int.from_bytes(buf[at + 2:at + 10], "big")
                head = 10
            if size - at < head + n:
                break
            payload = bytes(buf[at + head:at + head + n])
            at += head + n
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self._send(0xA, payload)  # pong
            elif opcode == 0x8:
                self.close()
            elif opcode in (0x1, 0x2, 0x0):
                if not b0 & 0x80:  # a fragment: keep until the final one
                    self.fragments += payload
                    continue
                if self.fragments:
                    payload = bytes(self.fragments) + payload
                    self.fragments = bytearray()
                self.client.on_text(payload, t)
        del buf[:at]


# --------------------------------------------------------------------------- a lean HTTP/1.1 client

class _HttpConn(asyncio.Protocol):
    """One keep-alive connection: a request written whole, a Content-Length response read whole."""

    def __init__(self, pool: RawHttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, list[bytes], bytes]] | None = None
        self.need = -1  # total bytes of the current response, once its head is parsed
        self.head: tuple[int, list[bytes]] | None = None
        self.body_at = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length = 0
            cookies = []
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(value)
                elif lname == b"set-cookie":
                    cookies.append(value.strip())
                elif lname == b"transfer-encoding":
                    raise RuntimeError("chunked responses are not supported by the lean client")
            self.head = (status, cookies)
            self.body_at = end + 4
            self.need = self.body_at + length
        if len(buf) >= self.need:
            body = bytes(buf[self.body_at:self.need])
            del buf[:self.need]
            self.need = -1
            waiter, self.waiter = self.waiter, None
            assert self.head is not None
            if waiter is not None and not waiter.done():
                waiter.set_result((self.head[0], self.head[1], body))


class RawHttpPool:
    """POSTs over pooled keep-alive connections; far cheaper per request than a general client,
    so thousands of long-polls per second cost the load generator little CPU."""

    def __init__(self, url: str) -> None:
        rest = url.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        self.host, _, port = hostport.partition(":")
        self.port = int(port or 80)
        self.path = "/" + path
        self.idle: list[_HttpConn] = []
        self.opened = 0

    def _idle_connection(self) -> _HttpConn | None:
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                return c
        return None

    async def _new_connection(self) -> _HttpConn:
        _, conn = await asyncio.get_running_loop().create_connection(lambda: _HttpConn(self), self.host, self.port)
        self.opened += 1
        return conn

    def _head(self, body: bytes, headers: dict[str, str], path: str | None) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (f"POST {path or self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n").encode()

    @staticmethod
    async def _exchange(conn: _HttpConn, request: bytes) -> tuple[int, list[bytes], bytes]:
        conn.waiter = asyncio.get_running_loop().create_future()
        assert conn.transport is not None
        conn.transport.write(request)
        return await conn.waiter

    async def post(self, body: bytes, headers: dict[str, str], path: str | None = None
                   ) -> tuple[int, list[bytes], bytes]:
        conn = self._idle_connection() or await self._new_connection()
        result = await self._exchange(conn, self._head(body, headers, path) + body)
        if not conn.closed:
            self.idle.append(conn)
        return result


# --------------------------------------------------------------------------- connection affinity (--sticky-connections)

def _misrouted(body: bytes) -> bool:
    """A reply saying the session is unknown (402) to every message: another process got the request."""
    try:
        replies = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return bool(replies) and all(isinstance(m, dict) and str(m.get("error", "")).startswith("402")
                                 for m in replies)


class StickyPool(RawHttpPool):
    """One session's own keep-alive connections, each used only once a request on it reached the
    process that holds the session: what a load balancer with session affinity does. Behind
    `serve --workers N` the kernel spreads *connections* over the workers (SO_REUSEPORT) while a
    session lives in one worker; a new connection whose first reply is 402 session_unknown reached
    another worker: it is closed and the request sent again on another new connection (counted in
    `misrouted`; a 402 on a connection already proven passes through: the session is really gone)."""

    MAX_TRIES = 16

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.misrouted = 0
        self.generation = 0  # bumped by a handshake: connections of an older session are dropped

    def forget(self) -> None:
        self.generation += 1
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()

    async def post(self, body: bytes, headers: dict[str, str], path: str | None = None
                   ) -> tuple[int, list[bytes], bytes]:
        request = self._head(body, headers, path) + body
        for _ in range(self.MAX_TRIES):
            conn = self._idle_connection()
            fresh = conn is None
            if conn is None:
                conn = await self._new_connection()
                conn.generation = self.generation  # type: ignore[attr-defined]
            result = await self._exchange(conn, request)
            if fresh and result[0] == 200 and _misrouted(result[2]):
                self.misrouted += 1
                assert conn.transport is not None
                conn.transport.close()
                continue
            if not conn.closed and conn.generation == self.generation:  # type: ignore[attr-defined]
                self.idle.append(conn)
            elif not conn.closed and conn.transport is not None:
                conn.transport.close()
            return result
        raise ConnectionError(f"no connection reached the session's process in {self.MAX_TRIES} tries")


class StickyLongPollingClient(LongPollingClient):
    """A long-polling session on its own StickyPool (`--sticky-connections`)."""

    own_connection = False  # every request, connects too, goes through the sticky pool

    def __init__(self, gen: LoadGen, index: int, channels: list[str], headers: dict[str, str] | None = None,
                 ext: dict[str, Any] | None = None) -> None:
        super().__init__(gen, index, channels, headers, ext)
        self.pool = StickyPool(gen.url)

    @property
    def misrouted(self) -> int:
        return self.pool.misrouted

    def _pool(self, messages: list[dict[str, Any]]) -> RawHttpPool | None:
        if messages and messages[0].get("channel") == "/meta/handshake":
            self.pool.forget()  # the new session may live in another process
        return self.pool


# --------------------------------------------------------------------------- the generator

@dataclass
class Step:
    rate: float
    published: int = 0
    expected: int = 0
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    delivered_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    server_cpu_s: float = 0.0
    server_cpu_per_100k: float = 0.0
    loadgen_cpu_pct: float = 0.0
    server_cpu_pct: float = 0.0
    publish_rate_actual: float = 0.0
    per_read: float = 0.0  # messages per long-poll reply or websocket frame (server-side batching)
    parsed: int = 0  # of them, accounted by the parsing path (out-of-order arrivals)
    ok: bool = True
    why: str = ""


@dataclass
class LoadGen:
    url: str
    server_pid: int | None
    http: aiohttp.ClientSession = field(init=False)
    rec: Recorder = field(default_factory=Recorder)
    raw: RawHttpPool | None = None  # long-polling over the lean client (default) rather than aiohttp
    lean: bool = True
    tasks: list[Any] = field(default_factory=list)  # the clients' loops (kept referenced)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:]

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=False, keepalive_timeout=60,
                                         enable_cleanup_closed=False)
        if self.lean:
            self.raw = RawHttpPool(self.url)
        self.http = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                          timeout=HTTP_TIMEOUT, json_serialize=lambda o: orjson.dumps(o).decode())

    async def close(self) -> None:
        await self.http.close()


async def gather_bounded(coros: list[Any], concurrency: int) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


class Publisher:
    """Publishes from its own long-polling session, paced in 10 ms ticks, batching what is due."""

    def __init__(self, gen: LoadGen, max_inflight: int = 32, max_batch: int = 500) -> None:
        self.gen = gen
        self.client = LongPollingClient(gen, -1, [])
        self.max_inflight = max_inflight
        self.max_batch = max_batch
        self.inflight = 0
        self.failures = 0
        self.held_back = 0  # ticks that left publishes due because max_inflight requests were unanswered

    async def setup(self) -> None:
        if not await self.client.handshake():
            raise RuntimeError("publisher handshake failed")
        self.loop_task = asyncio.get_running_loop().create_task(self.client.run())  # keeps the session alive

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        try:
            replies = await self.client.post(batch)
            self.failures += sum(1 for m in replies if not m.get("successful"))
        except (TimeoutError, aiohttp.ClientError, OSError):
            self.failures += len(batch)
        finally:
            self.inflight -= 1

    async def run_step(self, step: int, rate: float, seconds: float, channels: list[str],
                       seqs: dict[str, int]) -> int:
        """Publish at `rate` msg/s for `seconds`, round-robin over `channels`; returns how many were sent."""
        loop = asyncio.get_running_loop()
        start = now()
        sent = 0
        rr = 0
        tasks = set()
        cid = self.client.client_id
        nch = len(channels)
        sent_at = self.gen.rec.sent_at
        for ch in channels:
            sent_at.setdefault(ch, [])
        while True:
            elapsed = now() - start
            if elapsed >= seconds:
                break
            # Everything due goes out this tick, in requests of max_batch at most: one request per
            # tick capped the publisher at about max_batch / 10 ms (46,000 msg/s), whatever the server.
            due = int(rate * elapsed) + 1 - sent
            while due > 0 and self.inflight < self.max_inflight:
                size = min(due, self.max_batch)
                batch = []
                t = now()
                for _ in range(size):
                    ch = channels[rr % nch]
                    rr += 1
                    s = seqs.get(ch, 0)
                    seqs[ch] = s + 1
                    sent_at[ch].append(t)  # index s: what latency is measured from
                    batch.append({"channel": ch, "clientId": cid, "data": {"s": s, "t": t, "k": step}})
                sent += size
                due -= size
                self.inflight += 1
                task = loop.create_task(self._post(batch))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if due > 0:  # the server has not answered max_inflight requests yet
                self.held_back += 1
            await asyncio.sleep(0.01)
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        return sent


async def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    gen = LoadGen(args.url, args.server_pid, lean=not args.aiohttp_http)
    await gen.open()
    result: dict[str, Any] = {"scenario": args.scenario, "transport": args.transport, "clients": args.clients,
                              "steps": []}
    n = args.clients
    if args.scenario == "fanout":
        chan_of = ["/bench/fan"] * n
        pub_channels = ["/bench/fan"]
    else:
        chan_of = [f"/bench/p2p/{i}" for i in range(n)]
        pub_channels = chan_of
    subs_per_channel: dict[str, int] = {}
    for c in chan_of:
        subs_per_channel[c] = subs_per_channel.get(c, 0) + 1
    cls = WebSocketClient if args.transport == "websocket" else LongPollingClient
    if args.sticky_connections and cls is LongPollingClient:
        cls = StickyLongPollingClient
    clients = [cls(gen, i, [chan_of[i]]) for i in range(n)]
    t0 = now()
    outcomes = await gather_bounded([c.setup() for c in clients], args.concurrency)
    failed = [o for o in outcomes if o is not True]
    if failed:
        result["setup_failures"] = len(failed)
        result["setup_error"] = repr(failed[0])
    live = [c for c, o in zip(clients, outcomes, strict=True) if o is True]
    gen.tasks = [asyncio.get_running_loop().create_task(c.run()) for c in live]
    await asyncio.sleep(0.5)  # subscribed; let every first connect reach the server (Faye holds it)
    result["setup_seconds"] = round(now() - t0, 2)
    pub = Publisher(gen)
    if args.sticky_connections:
        pub.client = StickyLongPollingClient(gen, -1, [])
    await pub.setup()
    await asyncio.sleep(0.5)
    seqs: dict[str, int] = {}
    rates = [float(r) for r in args.rates.split(",")]
    best: dict[str, Any] | None = None

    async def measure(k: int, rate: float) -> Step:
        """One step at `rate`: publish for --step-seconds, drain, and judge it."""
        gen.rec.start(k, seqs)
        procs0, extra0 = cpu_by_process([args.server_pid] if args.server_pid else []), cpu_by_process(args.extra_pids)
        cpu0, own0, busy0, t_start = proc_cpu(args.server_pid), own_cpu(), machine_busy(), now()
        held_back = pub.held_back
        sent = await pub.run_step(k, rate, args.step_seconds, pub_channels, seqs)
        held_back = pub.held_back - held_back
        pub_seconds = now() - t_start
        if args.scenario == "fanout":
            expected = sent * sum(1 for c in live)
        else:
            live_channels = {c.channels[0] for c in live}
            per = {}
            for i in range(sent):
                ch = pub_channels[i % len(pub_channels)]
                per[ch] = per.get(ch, 0) + 1
            expected = sum(v for ch, v in per.items() if ch in live_channels)
        # drain: wait until everything arrived or the drain timeout passed
        deadline = now() + args.drain_seconds
        while gen.rec.received < expected and now() < deadline:
            await asyncio.sleep(0.02)
        t_end = now()
        cpu1, own1, busy1 = proc_cpu(args.server_pid), own_cpu(), machine_busy()
        procs1, extra1 = cpu_by_process([args.server_pid] if args.server_pid else []), cpu_by_process(args.extra_pids)
        rec = gen.rec
        lat = rec.latencies()
        st = Step(rate=rate, published=sent, expected=expected, received=rec.received,
                  lost=max(0, expected - rec.received), duplicates=rec.duplicates)
        st.seconds = round(t_end - t_start, 3)
        # delivered msg/s over the publishing window plus the drain actually needed
        st.delivered_per_s = round(rec.received / max(t_end - t_start, 1e-9), 1)
        st.publish_rate_actual = round(sent / max(pub_seconds, 1e-9), 1)
        st.p50_ms = round(percentile(lat, 0.50) * 1000, 2)
        st.p99_ms = round(percentile(lat, 0.99) * 1000, 2)
        st.max_ms = round((lat[-1] if lat else 0) * 1000, 2)
        st.per_read = round(rec.received / rec.reads, 2) if rec.reads else 0.0
        st.parsed = rec.parsed
        st.server_cpu_s = round(cpu1 - cpu0, 3)
        st.server_cpu_pct = round(100 * (cpu1 - cpu0) / (t_end - t_start), 1)
        st.server_cpu_per_100k = round((cpu1 - cpu0) / rec.received * 100_000, 3) if rec.received else 0.0
        st.loadgen_cpu_pct = round(100 * (own1 - own0) / (t_end - t_start), 1)
        if st.lost:
            st.ok, st.why = False, (f"lost {st.lost} (publish failures {pub.failures}, client errors "
                                    f"{sum(c.errors for c in live)}, rehandshakes {sum(c.rehandshakes for c in live)})")
        elif st.p99_ms > args.p99_limit_ms:
            st.ok, st.why = False, f"p99 {st.p99_ms} ms > {args.p99_limit_ms}"
        elif pub.failures:
            st.ok, st.why = False, f"{pub.failures} publish failures"
        elif st.publish_rate_actual < 0.9 * rate:
            # Held back: the server left max_inflight publish requests unanswered. Otherwise the load
            # generator itself could not keep the pace, which says nothing of the server.
            cause = (f"server backpressure: {pub.max_inflight} requests unanswered in {held_back} ticks"
                     if held_back else "the load generator fell behind")
            st.ok, st.why = False, f"publisher reached only {st.publish_rate_actual}/s ({cause})"
        d = st.__dict__
        # CPU used by other processes of the machine during the step (another job sharing the
        # cores makes the figures noisy; this says how much)
        d["foreign_cpu_pct"] = round(100 * ((busy1 - busy0) - (cpu1 - cpu0) - (own1 - own0)) / (t_end - t_start), 1)
        # per process: the server's (a supervisor and its workers) and --extra-pids' (redis-server)
        d["procs_cpu_s"], d["extra_procs_cpu_s"] = cpu_delta(procs0, procs1), cpu_delta(extra0, extra1)
        d["extra_cpu_s"] = round(sum(d["extra_procs_cpu_s"].values()), 3)
        d["misrouted"] = sum(getattr(c, "misrouted", 0) for c in [*live, pub.client])  # --sticky-connections
        d["foreign_cpu_pct"] = round(d["foreign_cpu_pct"] - 100 * d["extra_cpu_s"] / (t_end - t_start), 1)
        d["publish_failures"] = pub.failures
        d["client_errors"] = sum(c.errors for c in live)
        d["rehandshakes"] = sum(c.rehandshakes for c in live)
        print(f"  step {k}: rate {rate}/s delivered {st.delivered_per_s}/s p50 {st.p50_ms} p99 {st.p99_ms} "
              f"max {st.max_ms} lost {st.lost} srv {st.server_cpu_pct}% gen {st.loadgen_cpu_pct}% "
              f"other {d['foreign_cpu_pct']}% "
              f"{'ok' if st.ok else 'STOP: ' + st.why}", file=sys.stderr, flush=True)
        return st

    passed, failed = 0.0, None  # the highest rate passed; the failed step of the lowest rate

    async def confirmed(k: int, rate: float) -> Step:
        """Step `rate`, measured again if only its p99 failed; recorded, and counted as passed or failed."""
        nonlocal best, passed, failed
        st = await measure(k, rate)
        for _ in range(args.confirm_p99):
            # A p99 over the limit with nothing lost can be one stall (a page fault, another process's
            # burst) rather than saturation: the step counts as failed only if it fails again.
            if st.ok or not st.why.startswith("p99"):
                break
            print(f"  step {k}: measured again to confirm ({st.why})", file=sys.stderr, flush=True)
            first = st
            await asyncio.sleep(0.3)
            st = await measure(k, rate)
            st.__dict__["first_attempt"] = {"p99_ms": first.p99_ms, "why": first.why}
        result["steps"].append(st.__dict__)
        if st.ok:
            passed = max(passed, rate)
            if best is None or st.delivered_per_s > best["delivered_per_s"]:
                best = st.__dict__
        elif failed is None or rate < failed.rate:
            failed = st
        await asyncio.sleep(0.3)
        return st

    for k, rate in enumerate(rates):
        if not (await confirmed(k, rate)).ok and not args.keep_going:
            break
    # Saturation lies between the last rate passed and the first failed: halve that gap --refine times,
    # so a ratio between two servers is not an artefact of the grid (every server gets the same search).
    for k in range(len(rates), len(rates) + args.refine):
        rate = _midpoint(passed, failed.rate) if failed is not None and not args.keep_going else None
        if rate is None:
            break
        await asyncio.sleep(2.0)  # a failed step may have left the server a backlog to work off
        await confirmed(k, rate)
    result["stopped_by"] = failed.why if failed is not None else ""
    result["best"] = best
    result["rehandshakes"] = sum(c.rehandshakes for c in live)
    result["client_errors"] = sum(c.errors for c in live)
    result["mem"] = proc_mem(args.server_pid)
    result["procs"] = proc_names(([args.server_pid] if args.server_pid else []) + args.extra_pids)
    return result


def _midpoint(low: float, high: float) -> float | None:
    """The rate halfway between a passed and a failed one, rounded to 3 significant digits
    (None when the gap is that narrow already)."""
    mid = float(f"{(low + high) / 2:.3g}")
    return mid if low < mid < high else None


async def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open websocket sessions, then parked long-polls; RSS growth per session and handshake rate."""
    gen = LoadGen(args.url, args.server_pid, lean=not args.aiohttp_http)
    await gen.open()
    loop = asyncio.get_running_loop()
    result: dict[str, Any] = {"scenario": "idle"}
    # warm the server (first handshake allocates lazily-built structures)
    warm = LongPollingClient(gen, -1, ["/bench/idle"])
    await warm.setup()
    await asyncio.sleep(0.5)
    base = proc_mem(args.server_pid)
    result["rss_base_kb"] = base["rss_kb"]
    keep: list[Client] = []
    tasks = []
    for kind, count in (("websocket", args.ws_sessions), ("long-polling", args.lp_sessions)):
        if count <= 0:
            continue
        cls = WebSocketClient if kind == "websocket" else LongPollingClient
        clients = [cls(gen, i, ["/bench/idle"]) for i in range(count)]
        before = proc_mem(args.server_pid)["rss_kb"]
        cpu0 = proc_cpu(args.server_pid)
        t0 = now()
        outcomes = await gather_bounded([c.setup() for c in clients], args.concurrency)
        hs_seconds = now() - t0
        live = [c for c, o in zip(clients, outcomes, strict=True) if o is True]
        for c in live:
            if kind == "long-polling":
                tasks.append(loop.create_task(c.run()))
        await asyncio.sleep(args.settle_seconds)  # let the second connects park
        after = proc_mem(args.server_pid)["rss_kb"]
        cpu1 = proc_cpu(args.server_pid)
        fails = [o for o in outcomes if o is not True]
        result[kind] = {
            "sessions": len(live), "failures": len(fails), "first_error": repr(fails[0]) if fails else None,
            "handshakes_per_s": round(len(live) / hs_seconds, 1), "setup_seconds": round(hs_seconds, 2),
            "rss_before_kb": before, "rss_after_kb": after,
            "rss_per_session_kb": round((after - before) / max(len(live), 1), 2),
            "server_cpu_s": round(cpu1 - cpu0, 3),
        }
        print(f"  idle {kind}: {len(live)} sessions ({len(fails)} failed), {result[kind]['handshakes_per_s']}"
              f" handshakes/s, {result[kind]['rss_per_session_kb']} KiB/session", file=sys.stderr, flush=True)
        keep.extend(live)
    result["mem"] = proc_mem(args.server_pid)
    return result


# --------------------------------------------------------------------------- agents (contact center)

def start_profile(out: str | None, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy on the server for the measured phase only (logins excluded), as raw collapsed stacks."""
    if not out:
        return None
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "-o", out,
                             "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is None:
        return
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=20)
    except subprocess.TimeoutExpired:
        spy.kill()


async def run_agents(args: argparse.Namespace) -> dict[str, Any]:
    """Agents log in over REST, go Ready on sms, listen on /v2/me/** over CometD; customers arrive
    through the media gateway API, agents Accept, then both sides exchange messages."""
    gen = LoadGen(args.url, args.server_pid, lean=not args.aiohttp_http)
    await gen.open()
    base = args.url.split("/", 3)
    origin = f"{base[0]}//{base[2]}"
    loop = asyncio.get_running_loop()
    http = gen.http
    n = args.clients
    media_h = {"Authorization": f"Bearer {args.media_token}", "Content-Type": "application/json"}
    result: dict[str, Any] = {"scenario": "agents", "agents": n}
    lat_ops: dict[str, list[float]] = {"offer": [], "customer_msg": [], "agent_msg": []}
    counters = {"notifications": 0, "rest_ops": 0, "rest_failures": 0}
    expect_text: dict[tuple[str, str], float] = {}  # (user, text) -> sent at
    arrived: set[tuple[str, str]] = set()

    class Agent:
        def __init__(self, i: int) -> None:
            self.user = f"agent{i}"
            self.password = f"pw-{i}"
            self.cookie = ""
            self.csrf = ""
            self.offer: asyncio.Future[str] = loop.create_future()
            self.ix: str | None = None

        def headers(self) -> dict[str, str]:
            return {"Cookie": self.cookie, "X-CSRF-TOKEN": self.csrf, "Content-Type": "application/json"}

        async def rest(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
            counters["rest_ops"] += 1
            async with http.request(method, origin + path, data=orjson.dumps(body) if body is not None else None,
                                    headers=self.headers()) as r:
                reply = orjson.loads(await r.read())
            if reply.get("statusCode") != 0:
                counters["rest_failures"] += 1
            return reply

        async def login(self) -> None:
            auth = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            async with http.get(origin + "/api/v2/me", headers={"Authorization": "Basic " + auth}) as r:
                await r.read()
                self.cookie = "; ".join(c.split(";", 1)[0] for c in r.headers.getall("Set-Cookie", []))
                self.csrf = r.headers.get("X-CSRF-TOKEN", "")
            await self.rest("POST", "/api/v2/me", {"operationName": "StartContactCenterSession",
                                                   "channels": ["sms"]})

    def on_data(client: Client, message: dict[str, Any], t: float) -> None:
        counters["notifications"] += 1
        agent: Agent = client.agent  # type: ignore[attr-defined]
        data = message.get("data") or {}
        ntype = data.get("notificationType")
        if ntype == "StatusChange" and isinstance(data.get("smssession"), dict):
            s = data["smssession"]
            if not agent.offer.done() and s.get("state") == "Invited":
                agent.offer.set_result(s["id"])
        elif ntype == "NewMessages":
            for m in data.get("messages") or []:
                text = m.get("text")
                key = (agent.user, text)
                sent = expect_text.pop(key, None)
                if sent is not None:
                    arrived.add(key)
                    kind = "agent_msg" if text.startswith("a") else "customer_msg"
                    lat_ops[kind].append(t - sent)

    agents = [Agent(i) for i in range(n)]
    t0 = now()
    await gather_bounded([a.login() for a in agents], args.concurrency)
    clients = []
    for a in agents:
        c = LongPollingClient(gen, 0, ["/v2/me/**"], headers={"Cookie": a.cookie})
        c.agent = a  # type: ignore[attr-defined]
        c.on_data = on_data
        clients.append(c)
    gen.url = origin + "/api/v2/notifications"
    if gen.raw is not None:
        gen.raw = RawHttpPool(gen.url)
    outcomes = await gather_bounded([c.setup() for c in clients], args.concurrency)
    gen.tasks = [loop.create_task(c.run()) for c, o in zip(clients, outcomes, strict=True) if o is True]
    await asyncio.sleep(0.5)
    await gather_bounded([a.rest("POST", "/api/v2/me/channels/sms", {"operationName": "Ready"}) for a in agents],
                         args.concurrency)
    result["login_seconds"] = round(now() - t0, 2)
    result["cometd_setup_failures"] = sum(1 for o in outcomes if o is not True)
    await asyncio.sleep(0.5)

    spy = start_profile(args.profile_measured, args.server_pid)
    cpu0, own0, t_start = proc_cpu(args.server_pid), own_cpu(), now()
    notif0, ops0 = counters["notifications"], counters["rest_ops"]

    async def customer(i: int) -> str | None:
        counters["rest_ops"] += 1
        sent = now()
        async with http.post(origin + "/api/v2/media/sms/interactions", headers=media_h,
                             data=orjson.dumps({"nickname": f"cust{i}", "text": "hello"})) as r:
            reply = orjson.loads(await r.read())
        if reply.get("statusCode") != 0:
            counters["rest_failures"] += 1
            return None
        return reply["id"], sent  # type: ignore[return-value]

    created = await gather_bounded([customer(i) for i in range(n)], args.concurrency)
    ix_sent = {x[0]: x[1] for x in created if isinstance(x, tuple)}

    async def accept(a: Agent) -> None:
        try:
            ix = await asyncio.wait_for(a.offer, timeout=20)
        except TimeoutError:
            return
        if ix in ix_sent:
            lat_ops["offer"].append(now() - ix_sent[ix])
        a.ix = ix
        await a.rest("POST", f"/api/v2/me/smssessions/{ix}", {"operationName": "Accept", "nickname": a.user})

    await gather_bounded([accept(a) for a in agents], n)
    accepted = [a for a in agents if a.ix]
    result["accepted"] = len(accepted)

    async def converse(a: Agent) -> None:
        for r in range(args.rounds):
            text = f"c{r}-{a.user}"
            expect_text[(a.user, text)] = now()
            counters["rest_ops"] += 1
            async with http.post(origin + f"/api/v2/media/sms/interactions/{a.ix}/messages", headers=media_h,
                                 data=orjson.dumps({"text": text})) as resp:
                if orjson.loads(await resp.read()).get("statusCode") != 0:
                    counters["rest_failures"] += 1
            text = f"a{r}-{a.user}"
            expect_text[(a.user, text)] = now()
            await a.rest("POST", f"/api/v2/me/smssessions/{a.ix}", {"operationName": "SendMessage", "text": text})

    sem_conv = await gather_bounded([converse(a) for a in accepted], args.concurrency)
    errors = [e for e in sem_conv if isinstance(e, BaseException)]
    deadline = now() + args.drain_seconds
    while expect_text and now() < deadline:
        await asyncio.sleep(0.05)
    t_end = now()
    cpu1, own1 = proc_cpu(args.server_pid), own_cpu()
    stop_profile(spy)
    seconds = t_end - t_start
    notifs = counters["notifications"] - notif0
    result.update({
        "seconds": round(seconds, 2),
        "rest_ops": counters["rest_ops"] - ops0, "rest_ops_per_s": round((counters["rest_ops"] - ops0) / seconds, 1),
        "rest_failures": counters["rest_failures"], "errors": len(errors),
        "first_error": repr(errors[0]) if errors else None,
        "notifications": notifs, "notifications_per_s": round(notifs / seconds, 1),
        "messages_expected": len(arrived) + len(expect_text), "lost": len(expect_text),
        "server_cpu_s": round(cpu1 - cpu0, 3),
        "server_cpu_per_100k": round((cpu1 - cpu0) / notifs * 100_000, 3) if notifs else 0,
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / seconds, 1),
        "loadgen_cpu_pct": round(100 * (own1 - own0) / seconds, 1),
        "mem": proc_mem(args.server_pid),
    })
    for kind, values in lat_ops.items():
        v = sorted(values)
        result[f"{kind}_ms"] = {"n": len(v), "p50": round(percentile(v, 0.5) * 1000, 2),
                                "p99": round(percentile(v, 0.99) * 1000, 2),
                                "max": round((v[-1] if v else 0) * 1000, 2)}
    print(f"  agents: {result['rest_ops_per_s']} REST ops/s, {result['notifications_per_s']} notifications/s, "
          f"lost {result['lost']}, customer->agent p99 {result['customer_msg_ms']['p99']} ms",
          file=sys.stderr, flush=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="http://127.0.0.1:PORT/cometd")
    p.add_argument("--scenario", choices=["fanout", "p2p", "idle", "agents"], required=True)
    p.add_argument("--transport", choices=["long-polling", "websocket"], default="long-polling")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--rates", default="10,20,50", help="publish rates (msg/s) stepped through, comma-separated")
    p.add_argument("--step-seconds", type=float, default=5.0)
    p.add_argument("--drain-seconds", type=float, default=3.0)
    p.add_argument("--profile-measured", metavar="PATH",
                   help="agents scenario: py-spy record the server during the measured phase into PATH")
    p.add_argument("--p99-limit-ms", type=float, default=250.0)
    p.add_argument("--concurrency", type=int, default=100, help="sessions set up at once")
    p.add_argument("--ws-sessions", type=int, default=1000)
    p.add_argument("--lp-sessions", type=int, default=500)
    p.add_argument("--settle-seconds", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=5, help="agents: messages each way per conversation")
    p.add_argument("--media-token", default="bench-media")
    p.add_argument("--server-pid", type=int)
    p.add_argument("--extra-pids", type=pid_list, default=[],
                   help="comma-separated pids measured beside the server (fanout/p2p: CPU per step, with their "
                        "children), e.g. redis-server: extra_cpu_s and extra_procs_cpu_s; not in server_cpu_s")
    p.add_argument("--confirm-p99", type=int, default=1, metavar="N",
                   help="measure a step whose only failure is its p99 again, up to N times; it fails only "
                        "if every attempt does (default 1; 0: the first stall stops the run)")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="fanout/p2p: after the first failed step, measure the midpoint between the highest rate "
                        "passed and the lowest failed, N times (bisection of the saturation rate)")
    p.add_argument("--keep-going", action="store_true",
                   help="fanout/p2p: run every step of --rates even after one failed (fixed-rate runs)")
    p.add_argument("--sticky-connections", action="store_true",
                   help="fanout/p2p: each long-polling session (and the publisher) on its own connections, kept "
                        "only when they reach the process holding the session (session affinity; see StickyPool)")
    p.add_argument("--aiohttp-http", action="store_true",
                   help="long-polling through aiohttp's client instead of the lean built-in one (slower)")
    p.add_argument("--deadline", type=float, default=600.0, help="hard wall-clock limit, seconds")
    args = p.parse_args()
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    scenario = {"fanout": run_throughput, "p2p": run_throughput, "idle": run_idle, "agents": run_agents}[args.scenario]

    async def bounded() -> dict[str, Any]:
        return await asyncio.wait_for(scenario(args), timeout=args.deadline)

    loop = asyncio.new_event_loop()
    result = loop.run_until_complete(bounded())
    result["loop"] = "uvloop" if uvloop is not None else "asyncio"
    result["loadgen_cpu_total_s"] = round(own_cpu(), 2)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    # No graceful teardown: thousands of held connects and websockets would each wait for the
    # server; the kernel closes the sockets and the server is stopped next anyway.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
