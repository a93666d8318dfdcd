"""Long-polling clients with two keep-alive connections against `serve --workers N --redis`.

    python bench/workers_probe.py                 # --workers 2: clients whose connections straddle workers
    python bench/workers_probe.py --workers 1     # the same clients against one process: all fine

Browsers and the CometD JavaScript client send a session's /meta/connect and its other requests
(handshake, subscribe, publish) on different keep-alive connections. `serve --workers N` shares the
port with SO_REUSEPORT, so the kernel picks a worker per *connection*, while a Bayeux session lives in
the one worker that handshook it. This probe starts a private redis-server and the broker on loopback
ports (pinned to core 0, like bench/run.py), then runs CLIENTS such clients for SECONDS: connection A
carries the connects (held 1 s), connection B the handshake, subscribe and one publish every 100 ms to
the client's own channel. A client re-handshakes (on B) when told 402, resuming with the replay
extension from the last replayId it saw. Per client it prints handshakes, 402 replies, publishes and
how many of its acknowledged publishes came back; then each worker's sessions from /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import OURS, PY, ROOT, RedisServer, Server, free_port, scrape_workers


class TwoConnectionClient:
    def __init__(self, url: str, index: int) -> None:
        self.url, self.index, self.channel = url, index, f"/probe/{index}"
        self.conn_a = self._connection()  # /meta/connect
        self.conn_b = self._connection()  # handshake, subscribe, publish
        self.cookie, self.client_id, self.last_id = "", "", -1
        self.handshakes = self.unknown = self.published = self.publish_failures = 0
        self.acked: set[int] = set()
        self.received: set[int] = set()
        self.lock = asyncio.Lock()

    @staticmethod
    def _connection() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), cookie_jar=aiohttp.DummyCookieJar())

    async def post(self, http: aiohttp.ClientSession, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        headers = {"Content-Type": "application/json", **({"Cookie": self.cookie} if self.cookie else {})}
        async with http.post(self.url, data=orjson.dumps(messages), headers=headers) as r:
            if not self.cookie and "Set-Cookie" in r.headers:
                self.cookie = r.headers["Set-Cookie"].split(";", 1)[0]
            replies = orjson.loads(await r.read())
        self.unknown += sum(1 for m in replies if str(m.get("error", "")).startswith("402"))
        return replies

    async def handshake(self, stale: str | None = None) -> None:
        async with self.lock:
            if stale is not None and stale != self.client_id:
                return  # the other connection re-handshook already
            [reply] = await self.post(self.conn_b, [{"channel": "/meta/handshake", "version": "1.0",
                                                     "supportedConnectionTypes": ["long-polling"],
                                                     "ext": {"replay": True}}])
            self.handshakes += 1
            self.client_id = reply["clientId"]
            await self.post(self.conn_b, [{"channel": "/meta/subscribe", "clientId": self.client_id,
                                           "subscription": self.channel,
                                           "ext": {"replay": {self.channel: self.last_id}}}])

    async def connect_loop(self, until: float) -> None:
        while time.monotonic() < until:
            client_id = self.client_id
            replies = await self.post(self.conn_a, [{"channel": "/meta/connect", "clientId": client_id,
                                                     "connectionType": "long-polling", "advice": {"timeout": 1000}}])
            for m in replies:
                if m.get("channel") == self.channel and "data" in m:
                    self.received.add(m["data"]["n"])
                    self.last_id = max(self.last_id, (m.get("ext") or {}).get("replayId", -1))
            if any(str(m.get("error", "")).startswith("402") for m in replies):
                await self.handshake(client_id)

    async def publish_loop(self, until: float) -> None:
        n = 0
        while time.monotonic() < until:
            client_id = self.client_id
            replies = await self.post(self.conn_b, [{"channel": self.channel, "clientId": client_id,
                                                     "data": {"n": n}}])
            if replies and replies[0].get("successful"):
                self.published += 1
                self.acked.add(n)
            else:
                self.publish_failures += 1
                await self.handshake(client_id)
            n += 1
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.conn_a.close()
        await self.conn_b.close()


async def probe(url: str, clients: int, seconds: float) -> None:
    probes = [TwoConnectionClient(url, i) for i in range(clients)]
    for c in probes:
        await c.handshake()
    until = time.monotonic() + seconds
    await asyncio.gather(*(c.connect_loop(until + 2.5) for c in probes), *(c.publish_loop(until) for c in probes))
    for c in probes:
        print(f"client {c.index:2d}: handshakes {c.handshakes:5d}  402s {c.unknown:5d}  publishes acked "
              f"{c.published:3d} failed {c.publish_failures:3d}  acked publishes received "
              f"{len(c.acked & c.received):3d} missing {len(c.acked - c.received):3d}")
    print(f"total: {sum(c.handshakes > 1 for c in probes)} of {clients} clients re-handshook; "
          f"{sum(c.handshakes for c in probes)} handshakes, {sum(c.unknown for c in probes)} 402s; "
          f"{sum(c.published for c in probes)} publishes acked, {sum(c.publish_failures for c in probes)} failed; "
          f"{sum(len(c.acked & c.received) for c in probes)} received, {sum(len(c.acked - c.received) for c in probes)}"
          " missing")
    for c in probes:
        await c.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    redis = RedisServer()
    port = free_port()
    server = None
    try:
        server = Server(OURS, [PY, "-m", "cometd_broker", "serve", "--host", "127.0.0.1", "--port", str(port),
                               "--allow-anonymous", "--state-db", ":memory:", "--log-level", "WARNING",
                               "--transports", "long-polling", "--redis", redis.url, "--workers", str(args.workers)],
                        port, ROOT)
        deadline = time.monotonic() + 30
        while "listening on" not in Path(server.log.name).read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = re.findall(r"worker \d+ started \(pid (\d+)\)", Path(server.log.name).read_text())
        print(f"broker on port {port}, --workers {args.workers} (pids {', '.join(workers) or server.pid}), "
              f"redis-server pid {redis.pid}")
        asyncio.run(probe(server.url, args.clients, args.seconds))
        for values in scrape_workers(port, max(1, len(workers))).values():
            print(f"worker started {values.get('cometd_start_time_seconds')}: sessions {values.get('cometd_sessions')}"
                  f", handshakes {values.get('cometd_handshakes_total')}, 402s "
                  f"{values.get('cometd_unknown_session_total')}")
    finally:
        if server is not None:
            server.stop()
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
