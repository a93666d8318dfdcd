"""Progress lines on stderr for long runs: throttled, so a fast dump is not slowed by its own output."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`update()` after each event; prints `<verb> done[/total] events (rate/s)` at most every `period`."""

    def __init__(self, verb: str, total: int | None = None, *, stream: TextIO | None = None,
                 period: float = 0.5) -> None:
        self.verb = verb
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.period = period
        self.started = time.monotonic()
        self._last_print = self.started

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last_print >= self.period:
            self._last_print = now
            self._print(now, final=False)

    def finish(self, note: str = "") -> None:
        self._print(time.monotonic(), final=True, note=note)

    def _print(self, now: float, *, final: bool, note: str = "") -> None:
        elapsed = max(now - self.started, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        text = f"{self.verb} {self.done}{of} events ({self.done / elapsed:.0f}/s, {elapsed:.1f} s)"
        if note:
            text += f"; {note}"
        # Carriage return while running keeps one live line on a terminal; a newline at the end.
        end = "\n" if final or not self.stream.isatty() else "\r"
        print(text, file=self.stream, end=end, flush=True)
