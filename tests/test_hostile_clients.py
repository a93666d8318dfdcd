"""One hostile client against everyone: each test attacks a real broker process and asserts a bound.

Bounds: the broker's resident memory grows by less than 100 MiB, `/health` on another connection
answers within 0.5 s throughout, and the offending connection is cut or slowed down, never served
without limit. Every loop is bounded in bytes and in time; only loopback is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from conftest import RunningBroker, start_broker
from ws_helpers import client_frame

MIB = 1024 * 1024
RSS_BOUND = 100 * MIB
HEALTH_BOUND = 0.5  # seconds
ANON = ("--allow-anonymous",)


@pytest.fixture(params=["lean", "aiohttp"])
def broker(request: pytest.FixtureRequest) -> Iterator[RunningBroker]:
    running = start_broker(*ANON, "--http-server", request.param, "--request-timeout", "1")
    running.http_server = request.param  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.stop()


def rss(running: RunningBroker) -> int:
    with open(f"/proc/{running.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def health_time(running: RunningBroker) -> float:
    """Seconds a GET /health on a new connection takes to be answered 200."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return time.monotonic() - started


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def flood(running: RunningBroker, request: bytes, *, max_bytes: int, seconds: float) -> tuple[int, float]:
    """Send `request` again and again on one connection without reading, until the broker stops
    reading (a send blocks for a second), `max_bytes` were sent, or `seconds` passed. Returns the
    bytes sent and the slowest /health seen meanwhile."""
    sent, slowest = 0, 0.0
    deadline = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", running.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that never reads
        sock.settimeout(1.0)
        while sent < max_bytes and time.monotonic() < deadline:
            try:
                sock.sendall(request)
            except (TimeoutError, OSError):
                break  # the broker stopped reading us: the bound we want
            sent += len(request)
            if sent // (4 * MIB) != (sent - len(request)) // (4 * MIB):
                slowest = max(slowest, health_time(running))
        slowest = max(slowest, health_time(running))
    return sent, slowest


def test_a_pipelining_client_that_never_reads_is_not_served_without_limit(broker):
    before = rss(broker)
    # Each request earns an error reply several times its size (one error per message).
    unknown = b'{"channel":"/meta/connect","clientId":"nobody","connectionType":"long-polling"}'
    body = b"[" + b",".join([unknown] * 500) + b"]"
    sent, slowest = flood(broker, post("/cometd", body), max_bytes=64 * MIB, seconds=20)
    grown = rss(broker) - before
    assert grown < RSS_BOUND, f"RSS grew {grown / MIB:.0f} MiB after {sent / MIB:.0f} MiB sent"
    assert slowest < HEALTH_BOUND, f"/health took {slowest:.2f} s"


def test_a_thousand_pipelined_requests_are_all_answered_in_order(broker):
    requests = b"".join(post("/cometd", b'[{"channel":"/meta/connect","clientId":"nobody-%d",'
                                        b'"connectionType":"long-polling","id":"%d"}]' % (n, n)) for n in range(1000))
    answers = b""
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as sock:
        sock.sendall(requests)
        with contextlib.suppress(TimeoutError):
            sock.settimeout(5)
            while answers.count(b"HTTP/1.1 ") < 1000 or not answers.endswith(b"]"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                answers += chunk
    assert answers.count(b"HTTP/1.1 200") == 1000, answers[-300:]
    ids = [int(part.split(b'"', 1)[0]) for part in answers.split(b'"id":"')[1:]]
    assert ids == list(range(1000))



def _upgrade(sock: socket.socket) -> None:
    sock.sendall(b"GET /cometd HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "closed during the upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head


@pytest.mark.parametrize("frame", ["error", "ping"])
def test_a_websocket_client_that_never_reads_is_not_answered_without_limit(broker, frame):
    before = rss(broker)
    # An invalid Bayeux message earns an error reply; a ping earns a pong.
    unit = client_frame(0x1, b'[{"channel":"/meta/connect"}]') if frame == "error" else client_frame(0x9, b"x" * 100)
    burst = unit * 2000
    sent, slowest = 0, 0.0
    deadline = time.monotonic() + 20
    with socket.create_connection(("127.0.0.1", broker.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        _upgrade(sock)
        sock.settimeout(1.0)
        while sent < 64 * MIB and time.monotonic() < deadline:
            try:
                sock.sendall(burst)
            except (TimeoutError, OSError):
                break
            sent += len(burst)
            if sent // (4 * MIB) != (sent - len(burst)) // (4 * MIB):
                slowest = max(slowest, health_time(broker))
        slowest = max(slowest, health_time(broker))
        grown = rss(broker) - before
    assert grown < RSS_BOUND, f"RSS grew {grown / MIB:.0f} MiB after {sent / MIB:.0f} MiB sent"
    assert slowest < HEALTH_BOUND, f"/health took {slowest:.2f} s"


def trickle(running: RunningBroker, complete: bytes, trickled: bytes) -> tuple[bytes, float]:
    """Send `complete` at once, then `trickled` a byte every 0.2 s, until the broker answers or closes.
    Returns what it sent back and the seconds it took."""
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(complete)
        answer = b""
        sock.settimeout(0.2)
        for byte in trickled:
            try:
                sock.sendall(bytes([byte]))
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            answer += chunk
            if not chunk or answer:
                break
        return answer, time.monotonic() - started


@pytest.mark.parametrize("part", ["head", "body", "chunked body"])
def test_a_request_sent_one_byte_at_a_time_is_cut_within_the_request_timeout(broker, part):
    """--request-timeout 1: a request still incomplete a second after its first byte is cut (within one
    more sweep of a fifth of that): 408 when its head is incomplete, or on the lean path, which reads the
    whole request before answering; a body that aiohttp reads is cut by closing the connection. A chunked
    body is aiohttp's to read on both paths (the lean path hands it over)."""
    body = b'[{"channel":"/meta/connect","clientId":"x","connectionType":"long-polling"}]'
    if part == "chunked body":
        request = (b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    else:
        request = post("/cometd", body)
    at = request.index(b"\r\n\r\n") + 4
    complete, trickled = (b"", request) if part == "head" else (request[:at], request[at:])
    answer, took = trickle(broker, complete, trickled)
    if part == "head" or (part == "body" and broker.http_server == "lean"):
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"Connection: close" in answer
    else:
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert took < 2.5, f"cut after {took:.1f} s"


def test_many_slow_clients_do_not_keep_the_broker_from_others(broker):
    """200 connections that send a byte of a head and stop: all are closed by the request timeout,
    and /health answers meanwhile."""
    async def scenario() -> None:
        streams = [await asyncio.open_connection("127.0.0.1", broker.port) for _ in range(200)]
        for _, writer in streams:
            writer.write(b"P")
        assert await asyncio.to_thread(health_time, broker) < HEALTH_BOUND
        async with asyncio.timeout(5):
            closed = await asyncio.gather(*(reader.read() for reader, _ in streams))
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in closed)
        for _, writer in streams:
            writer.close()

    asyncio.run(scenario())
