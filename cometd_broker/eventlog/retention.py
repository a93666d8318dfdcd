"""RetentionTask: the owned background task that calls `EventLog.trim` periodically."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..tasks import cancel_and_wait
from .base import EventLog, EventLogClosed, EventLogUnavailable

log = logging.getLogger("cometd_broker.eventlog")


class RetentionTask:
    """Trims `event_log` at start and then every `period` seconds, until `stop()`.

    It trims at start so a broker restarted after a long pause drops stale
    events at once instead of one period later. A failing trim is logged and
    retried next period: retention is housekeeping and must not take the
    broker down, but the error must be visible (a store that is unreachable
    gets a one-line warning; anything else is a bug and gets its traceback).
    """

    def __init__(self, event_log: EventLog, *, period: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        if not period > 0:
            raise ValueError(f"period must be > 0 seconds, not {period!r}")
        self._log = event_log
        self._period = period
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # completed trims, for tests and metrics
        self.dropped = 0  # events dropped over the task's life

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("RetentionTask already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="eventlog-retention")

    async def stop(self) -> None:
        """Cancel the task and wait for it; safe to call twice or before start()."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            try:
                self.dropped += await self._log.trim(self._clock())
                self.runs += 1
            except EventLogClosed:
                return  # the log's owner closed it first; nothing left to trim
            except EventLogUnavailable as exc:  # an outage the log reports itself: one line, no traceback
                log.warning("event log retention trim skipped (%s); retrying in %.0f s", exc, self._period)
            except Exception:
                log.exception("event log retention trim failed; retrying in %.0f s", self._period)
            await asyncio.sleep(self._period)
