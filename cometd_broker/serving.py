"""Run the aiohttp application on a port until SIGINT or SIGTERM, then stop it gracefully.

Our own small `run_app`, for one reason: connections start on the lean long-polling path
(http/lean_http.py), which hands any other request to aiohttp. `LeanAppRunner` does that for
every aiohttp site (TCP, socket, the test server): a site's protocol factory is `runner.server`,
while the runner stops aiohttp's own connections through its private server, so swapping the
public property is enough.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .app import BROKER, ENDPOINT
from .http.bad_requests import ServerLog
from .http.deadline import RequestDeadlines
from .http.lean_http import LeanHttp

log = logging.getLogger("cometd_broker")

SHUTDOWN_TIMEOUT = 5.0  # seconds aiohttp waits for its in-flight requests when stopping
# Collect the youngest generation after this many new container objects instead of 700: every
# message makes a few dicts and lists that die young and rarely form cycles, so the default
# ran a collection every few dozen messages (a fifth of the CPU of websocket delivery).
GC_YOUNG_THRESHOLD = 50_000


class ListenError(OSError):
    """The port could not be bound (in use, not permitted, no such address): said in one line."""


def tune_gc() -> None:
    """Freeze what start-up allocated (modules, the app) out of every later collection, and
    collect young objects less often. Cyclic garbage is still collected, only in larger rounds."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def lean_mounts(app: web.Application) -> list[str]:
    """The Bayeux mounts the lean path may take: those no other route of the app lives under."""
    mounts = []
    for mount in app[ENDPOINT].mounts:
        base = mount.rstrip("/")
        if not base:
            continue  # mounted at "/": every path would look like a long-poll; leave it to the router
        mine = (base, base + "/{tail}")
        others = [r.canonical for r in app.router.resources() if r.canonical not in mine]
        if not any(o == base or o.startswith(base + "/") for o in others):
            mounts.append(base)
    return mounts


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose aiohttp connections have a request deadline (`--request-timeout`):
    aiohttp itself has none (http/deadline.py)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("logger", ServerLog())  # a request aiohttp cannot parse: one WARNING, no traceback
        super().__init__(app, **kwargs)
        self.deadlines = RequestDeadlines(app[BROKER].config.request_timeout)

    @property
    def server(self) -> Any:
        return None if self._server is None else self.deadlines.wrap(self._server)

    async def cleanup(self) -> None:
        await super().cleanup()
        self.deadlines.close()


class LeanAppRunner(GuardedAppRunner):
    """An AppRunner whose sites serve long-polls on the lean path (when a mount allows it); the
    connections it hands to aiohttp keep a request deadline."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.lean: LeanHttp | None = None

    async def setup(self) -> None:
        await super().setup()
        mounts = lean_mounts(self.app)
        if mounts and self._server is not None:
            endpoint = self.app[ENDPOINT]
            self.lean = LeanHttp(endpoint.exchange, endpoint.browser, mounts, self.deadlines.wrap(self._server),
                                 router=endpoint.router)

    @property
    def server(self) -> Any:
        return self.lean if self.lean is not None else super().server

    async def cleanup(self) -> None:
        await super().cleanup()  # the broker answers held connects here ...
        if self.lean is not None:
            self.lean.close()  # ... so their answers are written before these connections close
            self.lean = None
            await asyncio.sleep(0)


async def serve_app(app: web.Application, host: str, port: int, *, lean: bool, reuse_port: bool = False,
                    ready: Callable[[], None] = lambda: None, name: str = "",
                    ssl_context: ssl.SSLContext | None = None) -> None:
    """Serve until SIGINT/SIGTERM; `ready` is called once the port listens. The stop is logged (INFO,
    prefixed by `name`, a worker's): which signal, how many clients were connected, and how long stopping
    took, so an operator sees a restart that hangs on its held connects, or one that was quick.

    With `ssl_context` the port speaks TLS (tls.py): the event loop decrypts, so both HTTP paths and
    the websocket get plain bytes from an SSL transport, hand-over to aiohttp included."""
    runner_class = LeanAppRunner if lean else GuardedAppRunner
    runner = runner_class(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    tune_gc()
    stop = asyncio.Event()
    signals: list[str] = []
    loop = asyncio.get_running_loop()

    def stop_on(signum: signal.Signals) -> None:
        signals.append(signum.name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_on, signum)
    try:
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port).start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)  # not the bind call's repr of the address
            raise ListenError(f"cannot listen on {host}:{port}: {reason}") from None
        ready()
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        started, who = time.monotonic(), f"{name}: " if name else ""
        if signals:
            log.info("%sstopping on %s: %d client(s) connected, answering their held connects", who, signals[0],
                     len(app[BROKER].sessions))
        await runner.cleanup()
        if signals:
            log.info("%sstopped in %.2f s", who, time.monotonic() - started)
