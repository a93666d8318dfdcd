"""/metrics for `serve --workers N`: the one worker a scrape reaches answers for all of them.

The workers share one port and the kernel hands each new connection to any of them, so a plain
scrape would see a different process's counters each time. Instead each worker writes its own page,
every sample labelled worker="<index>", into a directory the supervisor made (every SHARE_INTERVAL
seconds, atomically by rename), and the worker that is scraped renders its own page fresh and merges
in its siblings' latest ones. A sibling's page is at most SHARE_INTERVAL old; one older than
STALE_AFTER belongs to a worker that died or hangs and is left out (its restarted successor, which
has the same index, writes a new one: its counters start again from zero, which Prometheus treats
as a counter reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("cometd_broker.metrics")

SHARE_INTERVAL = 2.0  # seconds between a worker's writes of its page
STALE_AFTER = 10.0  # seconds after which a sibling's page is left out
_SUFFIX = ".prom"


class SharedMetrics:
    """One worker's side: `run` keeps its page in `directory`; `combined` answers a scrape."""

    def __init__(self, directory: str | os.PathLike[str], index: int, render: Callable[[], bytes], *,
                 interval: float = SHARE_INTERVAL, stale_after: float = STALE_AFTER) -> None:
        self.directory = Path(directory)
        self.index = index
        self.labels = (("worker", str(index)),)  # on every sample of this worker's page
        self._render = render  # this worker's page, with `labels`
        self._interval = interval
        self._stale_after = stale_after
        self._own = self.directory / f"{index}{_SUFFIX}"

    async def run(self) -> None:
        """Write this worker's page every `interval` seconds until cancelled; then remove it."""
        try:
            while True:
                try:
                    self.write()
                except OSError as exc:  # e.g. the directory is gone: the scraped worker leaves us out
                    log.warning("could not share this worker's metrics in %s: %s", self.directory, exc)
                await asyncio.sleep(self._interval)
        finally:
            with contextlib.suppress(OSError):
                self._own.unlink()

    def write(self) -> None:
        temporary = self._own.with_suffix(".tmp")
        temporary.write_bytes(self._render())
        temporary.replace(self._own)  # readers see the old page or the new one, never half of one

    def combined(self, own: bytes) -> bytes:
        """This worker's fresh page merged with its siblings' recent ones."""
        pages = [own]
        now = time.time()
        try:
            paths = sorted(self.directory.glob(f"*{_SUFFIX}"))
        except OSError:
            paths = []
        for path in paths:
            if path == self._own:
                continue
            try:
                if now - path.stat().st_mtime > self._stale_after:
                    continue
                pages.append(path.read_bytes())
            except OSError:  # removed meanwhile: that worker stopped
                continue
        return merge_pages(pages)


def merge_pages(pages: Iterable[bytes]) -> bytes:
    """Prometheus text pages merged into one: each family's HELP and TYPE once, then the samples of
    every page (the text format wants a family's samples together)."""
    headers: dict[str, list[str]] = {}  # family -> its HELP and TYPE lines, in order of first appearance
    samples: dict[str, list[str]] = {}
    for page in pages:
        family = None
        for line in page.decode("utf-8", errors="replace").splitlines():
            if line.startswith("# HELP "):
                family = line.split(" ", 3)[2]
                headers.setdefault(family, [line])
                samples.setdefault(family, [])
            elif line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                kept = headers.setdefault(name, [])
                if not any(text.startswith("# TYPE ") for text in kept):
                    kept.append(line)
                samples.setdefault(name, [])
                family = name
            elif line and not line.startswith("#") and family is not None:
                samples[family].append(line)
    lines: list[str] = []
    for family, header in headers.items():
        lines += header
        lines += samples[family]
    return ("\n".join(lines) + "\n").encode()
