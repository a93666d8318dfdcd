"""A request deadline for the connections aiohttp serves: a request must arrive whole in time.

aiohttp's server has a keep-alive timeout but no limit on how long one request may take to arrive, so
a client sending a header byte a minute holds a connection (and a file descriptor) forever. The lean
path times its own requests (lean_http.py); this wraps aiohttp's protocol for everything else: every
connection with `--http-server aiohttp`, and those the lean path hands to aiohttp (the REST API, JSONP,
chunked bodies...).

It reads the same bytes as aiohttp, through llhttp (httptools), only to see where each request starts
and ends, and passes them on unchanged. A request still incomplete `request_timeout` seconds after its
first byte is answered 408 and closed if its head is incomplete (nothing has been answered yet), or
closed if its body is (its handler may be reading it). After a websocket upgrade, or bytes llhttp
refuses (aiohttp then answers 400 itself), the guard steps aside.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httptools

log = logging.getLogger("cometd_broker")

_WHY = b"the request was not received whole in time\n"
_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
              b"Connection: close\r\n\r\n%s" % (len(_WHY), _WHY))


class DeadlineGuard(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, the request timing around it."""

    __slots__ = ("inner", "deadlines", "transport", "parser", "started", "head_done", "passive")

    def __init__(self, inner: asyncio.Protocol, deadlines: RequestDeadlines) -> None:
        self.inner: Any = inner
        self.deadlines = deadlines
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpRequestParser(self)
        self.started = 0.0  # monotonic time the request in progress began; 0: none in progress
        self.head_done = False
        self.passive = False  # upgraded, or unreadable: aiohttp alone decides

    # ------------------------------------------------------------------ llhttp callbacks

    def on_message_begin(self) -> None:
        self.started = time.monotonic()
        self.head_done = False

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_message_complete(self) -> None:
        self.started = 0.0

    # ------------------------------------------------------------------ asyncio.Protocol, delegated

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.deadlines.connections.add(self)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadlines.connections.discard(self)
        self.transport = None
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.passive:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._step_aside()
            except httptools.HttpParserError:
                self._step_aside()  # aiohttp answers what it cannot read with its own 400
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _step_aside(self) -> None:
        self.passive = True
        self.started = 0.0
        self.parser = None

    # ------------------------------------------------------------------ the deadline

    def overdue(self) -> None:
        transport = self.transport
        if transport is None:
            return
        log.info("closing a connection from %s: its request was incomplete after %.0f s",
                 transport.get_extra_info("peername"), self.deadlines.timeout)
        self._step_aside()
        if not self.head_done:
            transport.write(_TIMED_OUT)  # nothing was answered: the head is not even whole
            transport.close()
        else:
            transport.abort()


class RequestDeadlines:
    """The guarded connections of one server and the sweep that enforces their deadline."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.connections: set[DeadlineGuard] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory whose connections are guarded."""
        def guarded() -> asyncio.Protocol:
            return self.guard(factory())
        return guarded

    def guard(self, inner: asyncio.Protocol) -> DeadlineGuard:
        if self._sweeper is None:
            self._schedule()
        return DeadlineGuard(inner, self)

    def _schedule(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(min(self.timeout / 5, 15.0), self._sweep)

    def _sweep(self) -> None:
        before = time.monotonic() - self.timeout
        for guard in [g for g in self.connections if g.started and g.started < before]:
            guard.overdue()
        self._schedule()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
