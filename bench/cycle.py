"""The broker's own cost of one long-polling point-to-point cycle, in process, with no sockets.

    python bench/cycle.py                    # CPU microseconds per cycle
    python bench/cycle.py --profile 25       # and cProfile's top 25 functions by own time
    python bench/cycle.py --redis redis://127.0.0.1:6379/0 --batch 10   # with the Redis engine
    python bench/cycle.py --event-log sqlite --profile 25   # the durable default, and its writer thread's profile

A cycle is what the p2p-lp scenario of bench/run.py repeats thousands of times a second: one
message published to a client's own channel releases that client's held /meta/connect, whose
answer carries the message, and the client's next /meta/connect is parked again. Here the
requests are fed to the lean HTTP protocol (`LeanHttpConnection`) through a transport that only
keeps what is written, so the figure is the Python side alone: no syscalls, no event-loop
polling, no load generator. It is for comparing changes to the hot path, not peers.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cometd_broker.app import BROKER, create_app
from cometd_broker.config import BrokerConfig
from cometd_broker.serving import LeanAppRunner

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


class Captured(asyncio.Transport):
    """A transport that keeps the last response written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.writes = 0
        self.waiter: asyncio.Future[None] | None = None  # set by the next write

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written = bytes(data)
        self.writes += 1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def request(messages: list[dict[str, Any]], cookie: str = "") -> bytes:
    body = orjson.dumps(messages)
    extra = f"Cookie: {cookie}\r\n" if cookie else ""
    return (f"POST /cometd HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\nAccept: */*\r\n"
            f"Content-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body


def reply_body(raw: bytes) -> list[dict[str, Any]]:
    return orjson.loads(raw.split(b"\r\n\r\n", 1)[1])


class Client:
    def __init__(self, lean: Any, index: int) -> None:
        self.conn = lean()
        self.transport = Captured()
        self.conn.connection_made(self.transport)
        self.channel = f"/bench/p2p/{index}"
        self.client_id = ""
        self.cookie = ""
        self.ids = 0

    def send(self, messages: list[dict[str, Any]]) -> None:
        self.conn.data_received(request(messages, self.cookie))

    async def answered(self, messages: list[dict[str, Any]]) -> bytes:
        """Send, and wait for the answer of a request the broker handles in a task (handshake...)."""
        before = self.transport.writes
        self.send(messages)
        for _ in range(1000):
            if self.transport.writes > before:
                return self.transport.written
            await asyncio.sleep(0)
        raise RuntimeError(f"no answer to {messages}")

    async def handshake_and_subscribe(self) -> None:
        raw = await self.answered([{"channel": "/meta/handshake", "version": "1.0",
                                    "supportedConnectionTypes": ["long-polling"], "id": "1"}])
        self.client_id = reply_body(raw)[0]["clientId"]
        for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            if line.lower().startswith(b"set-cookie:"):
                self.cookie = line.split(b":", 1)[1].split(b";", 1)[0].strip().decode()
        await self.answered([{"channel": "/meta/subscribe", "clientId": self.client_id,
                               "subscription": self.channel, "id": "2"}])

    def connect(self) -> None:
        self.ids += 1
        self.send([{"channel": "/meta/connect", "clientId": self.client_id, "connectionType": "long-polling",
                    "id": str(self.ids)}])


class WriterProfile:
    """The SQLite event log's writer thread (the loop's profiler sees only the loop's thread): cProfile
    of its commits by the thread's CPU time, and the wall time of the same commits. What the wall time
    has on top of the CPU time is waiting: for the GIL (the thread takes it back after every SQLite
    call, and the loop holds it), or for the disk."""

    def __init__(self) -> None:
        from cometd_broker.eventlog import sqlite_writer

        self.cpu = cProfile.Profile(time.thread_time)
        self.on = threading.Event()
        self.commits = 0
        self.wall_s = 0.0
        self.cpu_s = 0.0
        original = sqlite_writer.SqliteWriter._commit
        outer = self

        def commit(self: Any, batch: Any) -> None:
            if not outer.on.is_set():
                return original(self, batch)
            wall, cpu = time.perf_counter(), time.thread_time()
            outer.cpu.enable()
            try:
                return original(self, batch)
            finally:
                outer.cpu.disable()
                outer.commits += 1
                outer.wall_s += time.perf_counter() - wall
                outer.cpu_s += time.thread_time() - cpu

        sqlite_writer.SqliteWriter._commit = commit  # type: ignore[method-assign]

    def print(self, top: int, events: int) -> None:
        per = 1e6 / max(events, 1)
        print(f"--- the writer thread: {self.commits} commits of {events} events, thread CPU {self.cpu_s * per:.1f} "
              f"us/event, wall {self.wall_s * per:.1f} us/event (the rest waited for the GIL or the disk) ---")
        pstats.Stats(self.cpu).sort_stats("tottime").print_stats(top)


async def run(cycles: int, clients: int, batch: int, repeat: int, profile: int, redis: str,
              event_log: str) -> None:
    log_config = {"redis": redis} if redis else {"event_log": event_log}
    writer_profile = WriterProfile() if profile and event_log != "memory:" and not redis else None
    app = create_app(BrokerConfig(allow_anonymous=True, transports="long-polling", log_level="WARNING",
                                  **log_config))
    runner = LeanAppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    lean = runner.server
    subscribers = [Client(lean, i) for i in range(clients)]
    publisher = Client(lean, -1)
    await publisher.handshake_and_subscribe()
    for c in subscribers:
        await c.handshake_and_subscribe()
        c.ids += 1  # the first connect is answered at once
        await c.answered([{"channel": "/meta/connect", "clientId": c.client_id, "connectionType": "long-polling",
                           "id": str(c.ids)}])
        c.connect()  # parked
    await asyncio.sleep(0)
    groups = [subscribers[i:i + batch] for i in range(0, len(subscribers), batch)]
    requests = [request([{"channel": c.channel, "clientId": publisher.client_id, "data": {"s": 0, "t": 0.0}}
                         for c in group], publisher.cookie) for group in groups]

    async def cycle_all(rounds: int) -> None:
        for _ in range(rounds):
            for group, publish in zip(groups, requests, strict=True):
                before = [c.transport.writes for c in group]
                last = group[-1].transport
                last.waiter = asyncio.get_running_loop().create_future()
                publisher.conn.data_received(publish)
                # The publish is handled, then the released connects answered (with Redis: once the
                # fan-out message came back, a round trip later).
                await asyncio.wait_for(last.waiter, 5.0)
                last.waiter = None
                await asyncio.sleep(0)
                for c, was in zip(group, before, strict=True):
                    if c.transport.writes == was or b'"data"' not in c.transport.written:
                        raise RuntimeError(f"no delivery to {c.channel}: {c.transport.written[-300:]!r}")
                    c.connect()

    await cycle_all(2)  # warm up
    rounds = max(1, cycles // clients)
    done = rounds * clients
    best = float("inf")
    event_log_object = app[BROKER].event_log
    writer = getattr(getattr(event_log_object, "_writer", None), "_thread", None)
    checkpointer = getattr(event_log_object, "_checkpointer", None)
    threads = {"loop": threading.get_native_id(), **({"writer": writer.native_id} if writer else {}),
               **({"checkpointer": checkpointer.native_id} if checkpointer else {})}
    split: dict[str, float] = {}
    for _ in range(repeat):  # the least CPU of a few runs: the figure least disturbed by the machine
        start, before = time.process_time(), {name: thread_cpu(tid) for name, tid in threads.items()}
        await cycle_all(rounds)
        took = time.process_time() - start
        if took < best:
            best = took
            split = {name: thread_cpu(tid) - before[name] for name, tid in threads.items()}
    loop_kind = "uvloop" if uvloop and isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio"
    print(f"{best / done * 1e6:.2f} us CPU per cycle (publish + release + answer + next connect parked; "
          f"best of {repeat} x {done}), {clients} clients, {batch} per publish, "
          f"{'redis, ' if redis else event_log.split(':')[0] + ' event log, '}{loop_kind}")
    if writer is not None:
        print("  of which " + ", ".join(f"{name} thread {cpu / done * 1e6:.2f} us" for name, cpu in split.items()))
    commits = getattr(app[BROKER].event_log, "commits", None)
    if commits:
        print(f"{commits} commits so far, {(2 + rounds * repeat) * clients / commits:.1f} events per commit")
    if profile:
        profiler = cProfile.Profile()
        if writer_profile is not None:
            writer_profile.on.set()
        profiler.enable()
        await cycle_all(rounds)
        profiler.disable()
        if writer_profile is not None:
            writer_profile.on.clear()
        print("--- the event loop's thread ---")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)
        if writer_profile is not None:
            writer_profile.print(profile, rounds * clients)
    await runner.cleanup()


def thread_cpu(native_id: int) -> float:
    """CPU seconds one thread of this process has run (Linux: schedstat's first field, in ns)."""
    with open(f"/proc/self/task/{native_id}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=50_000)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100, help="messages per publish request (the load generator "
                                                          "batches what is due every 10 ms)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--redis", default="", metavar="URL",
                   help="run with the Redis engine against this Redis (flush it first: streams are reused)")
    p.add_argument("--event-log", default="memory:", metavar="URL",
                   help="the event log: memory: (default), sqlite (a file in a temporary directory) or a URL")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N by own time")
    args = p.parse_args()
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with tempfile.TemporaryDirectory(prefix="cycle-") as tmp:
        event_log = f"sqlite:///{tmp}/events.db" if args.event_log == "sqlite" else args.event_log
        asyncio.run(run(args.cycles, args.clients, args.batch, args.repeat, args.profile, args.redis, event_log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
