"""Slow consumers (issue 4): a client that never reads while a publisher floods gets the configured
treatment (disconnected with a clear error, or drop-oldest), and the broker's memory stays bounded.

Assertions are on structure (queue lengths and bytes, the event log's per-stream count, tracemalloc
growth, the subprocess's VmRSS), never on timing. Floods are bounded counts.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import tracemalloc

import aiohttp
import orjson
from bayeux_helpers import broker_of, connect_message, events_in, handshake_message, reply_to, send, subscribe_message

from cometd_broker.exchange import Exchange

ANON = {"allow_anonymous": True}
FLOOD = 20_000
MAX_QUEUE = 200
MAX_QUEUE_BYTES = 16 * 1024
RETENTION = 1_000
PAYLOAD = "x" * 40


async def session_on(client, channel: str) -> str:
    """Handshake, subscribe, and the first (immediately answered) connect; returns the clientId."""
    [reply] = await send(client, handshake_message())
    client_id = reply["clientId"]
    assert reply_to(await send(client, subscribe_message(client_id, channel)), "/meta/subscribe")["successful"]
    assert reply_to(await send(client, connect_message(client_id, timeout=0)), "/meta/connect")["successful"]
    return client_id


def check_bounds(broker, stream_count: int) -> None:
    for session in broker.sessions.values():
        queue = session.queue
        assert len(queue) <= queue.max_messages, (session, len(queue))
        assert queue.size_bytes <= queue.max_bytes, (session, queue.size_bytes)
    assert stream_count <= broker.config.retention_count


async def retained(broker, stream: str) -> int:
    bounds = await broker.event_log.bounds(stream)
    return 0 if bounds.empty else bounds.latest - bounds.oldest + 1


def take(broker, client_id: str) -> list[int]:
    """What the transport would send the session now (its queue, drained), as seqs."""
    return [orjson.loads(item)["data"]["n"] for item in Exchange(broker).take_events(broker.session(client_id), None)]


async def test_a_client_that_never_connects_again_is_disconnected_as_a_slow_consumer(make_client):
    client = await make_client(max_queue=MAX_QUEUE, max_queue_bytes=MAX_QUEUE_BYTES, retention_count=RETENTION,
                               **ANON)
    broker = broker_of(client)
    removed: list[tuple[str, str]] = []
    broker.on_session_removed(lambda session, reason: removed.append((session.client_id, reason)))
    slow = await session_on(client, "/flood")
    healthy = await session_on(client, "/flood")  # drained in-process below, as its transport would
    healthy_got: list[int] = []

    # Warm up past the retention limit, so the log is at its steady size when measuring.
    for n in range(2 * RETENTION):
        await broker.publish("/flood", {"n": n, "pad": PAYLOAD})
        check_bounds(broker, await retained(broker, "/flood"))
        if n % 50 == 49:
            healthy_got += take(broker, healthy)
    assert broker.session(slow) is None, "the slow session outlived a full queue"
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(2 * RETENTION, FLOOD):
            await broker.publish("/flood", {"n": n, "pad": PAYLOAD})
            if n % 50 == 49:
                check_bounds(broker, await retained(broker, "/flood"))
                healthy_got += take(broker, healthy)
        healthy_got += take(broker, healthy)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    mine = [tracemalloc.Filter(False, __file__)]  # the test's own lists of received seqs
    before, after = before.filter_traces(mine), after.filter_traces(mine)
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    top = after.compare_to(before, "lineno")[:3]
    # Steady state: the log's RETENTION events (~100-byte payloads) were all replaced while tracing, so
    # about RETENTION * (payload + Event) ~ 0.25 MB is legitimately new; 18k kept events would be ~4 MB.
    assert growth < 1_000_000, f"memory grew by {growth} bytes across the flood; top: {top}"
    assert await retained(broker, "/flood") == RETENTION
    assert healthy_got == list(range(FLOOD)), "the healthy subscriber lost events while the slow one was cut"

    [(client_id, reason)] = removed
    assert client_id == slow
    assert reason.startswith("402::session_unknown (disconnected as a slow consumer: its queue reached ")
    assert f"limits are {MAX_QUEUE} events / {MAX_QUEUE_BYTES} bytes" in reason
    # The slow client finally comes back: its connect gets that error and re-handshake advice.
    reply = reply_to(await send(client, connect_message(slow, timeout=0)), "/meta/connect")
    assert reply["successful"] is False
    assert reply["error"] == reason
    assert reply["advice"]["reconnect"] == "handshake"


async def test_drop_oldest_keeps_only_the_newest_events_within_the_limits(make_client):
    client = await make_client(max_queue=MAX_QUEUE, max_queue_bytes=MAX_QUEUE_BYTES, retention_count=RETENTION,
                               queue_full="drop-oldest", **ANON)
    broker = broker_of(client)
    slow = await session_on(client, "/flood")
    for n in range(FLOOD):
        await broker.publish("/flood", {"n": n, "pad": PAYLOAD})
        if n % 100 == 99:
            check_bounds(broker, await retained(broker, "/flood"))
    session = broker.session(slow)
    assert session is not None, "drop-oldest must keep the session"
    kept = len(session.queue)
    assert 0 < kept <= MAX_QUEUE and session.queue.size_bytes <= MAX_QUEUE_BYTES
    assert session.queue.dropped == FLOOD - kept
    got = [e["data"]["n"] for e in events_in(await send(client, connect_message(slow, timeout=0)))]
    assert got == list(range(FLOOD - kept, FLOOD)), "not the newest events, in order"
    assert events_in(await send(client, connect_message(slow, timeout=0))) == []


# --------------------------------------------------------------------------- subprocess: a socket that never reads


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


def raw_connects(port: int, client_id: str, count: int) -> bytes:
    """`count` pipelined long-poll connect requests of one session, as raw HTTP/1.1."""
    requests = []
    for i in range(count):
        body = orjson.dumps([{"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling",
                              "id": f"raw{i}", "advice": {"timeout": 1000}}])
        requests.append(b"POST /cometd HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body))
    return b"".join(requests)


async def test_a_connection_that_never_reads_does_not_grow_the_broker_or_stall_others(broker_process):
    events, size, batch = 20_000, 2_000, 50  # 40 MB published in total
    broker = await asyncio.to_thread(
        broker_process, "--allow-anonymous", "--event-log", "memory:", "--retention-count", "500",
        "--max-queue", "1000", "--max-queue-bytes", str(512 * 1024), "--log-level", "WARNING")
    pid, url = broker.process.pid, broker.url
    deadline = time.monotonic() + 60

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async def bayeux(messages):
            async with http.post(url, json=messages) as response:
                assert response.status == 200, await response.text()
                return await response.json()

        async def open_session(channel: str | None) -> str:
            [reply] = await bayeux([handshake_message()])
            client_id = reply["clientId"]
            if channel:
                assert (await bayeux([subscribe_message(client_id, channel)]))[0]["successful"]
            await bayeux([connect_message(client_id, timeout=0)])
            return client_id

        slow = await open_session("/flood")
        healthy = await open_session("/flood")
        publisher = await open_session(None)

        # The slow client: a socket with a tiny receive buffer that sends long-polls and never reads.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", broker.port))
        sock.sendall(raw_connects(broker.port, slow, 20))
        try:
            baseline = vm_rss_kb(pid)
            peak = baseline
            received: list[int] = []
            published = 0
            pad = "y" * size
            while published < events:
                assert time.monotonic() < deadline, "flood did not finish in time"
                messages = [{"channel": "/flood", "clientId": publisher, "data": {"n": published + i, "pad": pad},
                             "id": str(published + i)} for i in range(batch)]
                replies = await bayeux(messages)
                assert all(r["successful"] for r in replies), replies[:2]
                published += batch
                # The healthy subscriber keeps up (the broker still serves it while the slow socket is stuck).
                while len(received) < published:
                    assert time.monotonic() < deadline, f"healthy subscriber stalled at {len(received)}"
                    replies = await bayeux([connect_message(healthy, timeout=1000)])
                    assert reply_to(replies, "/meta/connect")["successful"] is True, replies[:1]
                    received += [e["data"]["n"] for e in events_in(replies)]
                peak = max(peak, vm_rss_kb(pid))
            assert received == list(range(events))
            # The slow session got the configured treatment: disconnected as a slow consumer.
            reply = reply_to(await bayeux([connect_message(slow, timeout=0)]), "/meta/connect")
            assert reply["successful"] is False
            assert reply["error"].startswith("402::session_unknown (disconnected as a slow consumer"), reply
            # And the broker still serves new clients.
            await open_session("/flood")
        finally:
            sock.close()
    growth_mb = (peak - baseline) / 1024
    # 40 MB went through; kept (slow queue or log), the growth would be far above this bound.
    assert growth_mb < 30, f"broker RSS grew by {growth_mb:.1f} MB (baseline {baseline / 1024:.1f} MB)"
