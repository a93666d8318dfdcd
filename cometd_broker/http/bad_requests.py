"""One WARNING line per malformed request, on both HTTP paths, and never a traceback.

A request that cannot be parsed is the client's fault, not the server's: aiohttp logs it at ERROR
with a traceback, so anyone who can reach the port can fill the logs with tracebacks. Both paths
report it here instead: one line with the address and the parser's reason, at most `BURST` lines
per `PERIOD` seconds per process; the lines held back are counted and the next line says how many.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from ..logs import LineBudget

log = logging.getLogger("cometd_broker.http")

BURST = 10  # lines per period
PERIOD = 10.0  # seconds


class BadRequestLog:
    """Rate-limited reports of malformed requests: BURST lines, refilled over PERIOD."""

    def __init__(self, logger: logging.Logger = log, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.budget = LineBudget(BURST, PERIOD, clock)
        self.total = 0

    def report(self, remote: str | None, reason: str) -> None:
        self.total += 1
        if self.budget.take():
            self.logger.warning("malformed request from %s refused with 400: %s%s", remote or "unknown", reason,
                                self.budget.held_back())


BAD_REQUESTS = BadRequestLog()  # one per process: both paths and every site share the budget


def first_line(text: str) -> str:
    """aiohttp's parser messages span lines (the field and a caret under it); the first says it all."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line.rstrip(":").strip() or "unparsable request"


class ServerLog(logging.LoggerAdapter):
    """The logger given to aiohttp's connection handlers: a request aiohttp could not parse becomes
    one rate-limited WARNING line; every other record passes through to aiohttp's own logger."""

    def __init__(self, reports: BadRequestLog = BAD_REQUESTS) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.reports = reports

    def log(self, level: int, msg: object, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1] if exc_info is True else None
        if isinstance(exc, HttpProcessingError) and level >= logging.WARNING:  # aiohttp debug-logs TLS probes
            remote = args[0] if args and isinstance(args[0], str) else None
            self.reports.report(remote, first_line(exc.message or str(exc)))
            return
        super().log(level, msg, *args, exc_info=exc_info, **kwargs)

    def process(self, msg: object, kwargs: MutableMapping[str, Any]) -> tuple[object, MutableMapping[str, Any]]:
        return msg, kwargs
