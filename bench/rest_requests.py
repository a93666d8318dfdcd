"""What one REST request costs the server: CPU per request of the contact-center API, against bare aiohttp.

    python bench/rest_requests.py                            # both configurations and the floor, 8 s each
    python bench/rest_requests.py --servers cometd-broker --seconds 15

Each server starts as run.py starts it (pinned to core 0, a users file of 10 agents). This process (core
1) logs agent0 in, then keeps `--connections` keep-alive connections busy, one request at a time each,
for `--seconds`: the server's core is saturated, so its CPU per request is what a request costs it.
Two kinds, measured apart:

- `GET /api/v2/me`: the middlewares (origin, envelope and metrics, session cookie) and a small JSON
  answer, no engine work;
- `POST /api/v2/me/channels/sms`, Ready and NotReady in turn: an engine change and its StatusChange on
  the agent's `/v2/me/channels` channel (recorded in the event log, no subscriber).

`floor` is aiohttp alone answering the same JSON document from one route, on the same event loop
(uvloop when installed): what any aiohttp request costs here, for reading the others against.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from loadgen import proc_cpu
from run import HERE, LOADGEN_CORE, OURS, OURS_SQLITE, PY, ROOT, Server, free_port, make_users, start

FLOOR = "floor"
_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
_COOKIE = re.compile(rb"\r\nset-cookie: *(JSESSIONID=[^;\r]+)", re.IGNORECASE)
_CSRF = re.compile(rb"\r\nx-csrf-token: *([^\r]+)", re.IGNORECASE)
# The shape and size of what GET /api/v2/me answers agent0 of make_users (its uri names the server's port):
# the floor answers this.
ME = {"statusCode": 0, "user": {"id": "agent0", "userName": "agent0", "firstName": "Agent0", "lastName": "Bench",
                                "roles": ["agent"], "uri": "http://127.0.0.1:8080/api/v2/users/agent0",
                                "path": "/users/agent0", "employeeId": "101"}}


async def _answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    found = _LENGTH.search(head)
    await reader.readexactly(int(found.group(1)) if found else 0)
    return head


async def _login(port: int) -> tuple[bytes, bytes]:
    """agent0's session cookie and CSRF token, and its contact-center session on sms."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = base64.b64encode(b"agent0:pw-0")
    writer.write(b"GET /api/v2/me HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic %s\r\n\r\n" % auth)
    head = await _answer(reader)
    cookie, csrf = _COOKIE.search(head), _CSRF.search(head)
    if cookie is None or csrf is None:
        raise SystemExit(f"login failed: {head!r}")
    body = b'{"operationName":"StartContactCenterSession","channels":["sms"]}'
    writer.write(_request(b"POST", b"/api/v2/me", cookie.group(1), csrf.group(1), body))
    head = await _answer(reader)
    if not head.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"StartContactCenterSession refused: {head!r}")
    writer.close()
    return cookie.group(1), csrf.group(1)


def _request(method: bytes, path: bytes, cookie: bytes, csrf: bytes, body: bytes = b"") -> bytes:
    fields = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body) if body else b""
    return (b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: %s\r\nX-CSRF-TOKEN: %s\r\nAccept: application/json\r\n"
            b"%s\r\n%s" % (method, path, cookie, csrf, fields, body))


async def _drive(port: int, requests: list[bytes], done: list[int], stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    turn = 0
    while not stop.is_set():
        writer.write(requests[turn % len(requests)])
        head = await _answer(reader)
        if not head.startswith(b"HTTP/1.1 200 "):
            raise SystemExit(f"request refused: {head!r}")
        turn += 1
        done[0] += 1
    writer.close()


async def measure(port: int, pid: int, kind: str, connections: int, seconds: float, *, login: bool = True
                  ) -> dict[str, float]:
    if kind == "get":
        cookie, csrf = await _login(port) if login else (b"JSESSIONID=none", b"none")
        requests = [_request(b"GET", b"/api/v2/me", cookie, csrf)]
    else:
        cookie, csrf = await _login(port)
        requests = [_request(b"POST", b"/api/v2/me/channels/sms", cookie, csrf,
                             b'{"operationName":"%s"}' % op) for op in (b"NotReady", b"Ready")]
    done, stop = [0], asyncio.Event()
    tasks = [asyncio.create_task(_drive(port, requests, done, stop)) for _ in range(connections)]
    await asyncio.sleep(1.0)  # connections open, the loop warm
    cpu, at, count = proc_cpu(pid), time.monotonic(), done[0]
    await asyncio.sleep(seconds)
    cpu, took, count = proc_cpu(pid) - cpu, time.monotonic() - at, done[0] - count
    stop.set()
    await asyncio.gather(*tasks)
    return {"requests_per_s": count / took, "server_cpu_pct": 100 * cpu / took, "us_per_request": 1e6 * cpu / count}


def serve_floor(port: int) -> None:
    """aiohttp alone: one route answering ME, as `cometd-broker serve` runs aiohttp (no access log)."""
    from aiohttp import web

    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    body = json.dumps(ME, separators=(",", ":")).encode()

    async def me(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v2/me", me)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--servers", default=f"{OURS},{OURS_SQLITE},{FLOOR}")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--serve-floor", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0
    if int(LOADGEN_CORE) in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {int(LOADGEN_CORE)})  # the server is on the other core (run.py's `pinned`)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-users-") as tmp:
        users = Path(tmp) / "users.json"
        make_users(users, 10)
        for name in args.servers.split(","):
            for kind in ("get",) if name == FLOOR else ("get", "post"):
                if name == FLOOR:
                    port = free_port()
                    server = Server(FLOOR, [PY, str(HERE / "rest_requests.py"), "--serve-floor", str(port)], port, ROOT)
                else:
                    server = start(name, websocket=False, users_file=users)
                try:
                    result = asyncio.run(measure(server.port, server.pid, kind, args.connections, args.seconds,
                                                 login=name != FLOOR))
                finally:
                    server.stop()
                what = "GET /api/v2/me" if kind == "get" else "POST /api/v2/me/channels/sms"
                rows.append((name, what, result))
                print(f"{name:22} {what:30} {result['requests_per_s']:8.0f} req/s  "
                      f"server {result['server_cpu_pct']:5.1f}%  {result['us_per_request']:6.1f} us/request",
                      flush=True)
    print("\n| server | request | requests/s | server CPU % | server CPU us per request |\n|---|---|---|---|---|")
    for name, what, r in rows:
        print(f"| {name} | {what} | {r['requests_per_s']:.0f} | {r['server_cpu_pct']:.1f} "
              f"| {r['us_per_request']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
