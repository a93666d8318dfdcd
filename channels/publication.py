"""The engine's notifications on their way out: each run's published once its write is stored, in the
order of the runs, several runs' at a time.

A run of the engine (conversation_core.py) holds its lock only to apply its change and queue its write;
it hands its notifications here with the future of that write and waits for them to go out. So the next
run applies while this one's write commits, and runs queued together share one commit of the store and,
here, one call to the broker (for a durable event log: one commit of it too).

The rules it keeps:
- nothing a run caused is published before its write is stored: a run whose write failed publishes
  nothing, and its caller gets the write's error;
- notifications go out in the order of the runs, each run's in its own order and not interleaved with
  another's (one drain publishes runs in queue order, and a later run's write never resolves first);
- a caller that stops waiting (a cancelled request) does not stop its notifications.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .outbox import Notice, Publish
from .store import StoreUnavailable

# Publish several notifications in order; per notification, None or why it was not published.
PublishMany = Callable[[Sequence[Notice]], Awaitable[Sequence[BaseException | None]]]


def one_by_one(publish: Publish) -> PublishMany:
    """A PublishMany over a Publish: each awaited in turn; a failure does not stop the ones after it,
    as the broker's own batch does not."""

    async def publish_many(notices: Sequence[Notice]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = []
        for user_id, topic, data in notices:
            try:
                await publish(user_id, topic, data)
            except Exception as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    return publish_many


@dataclass(slots=True, eq=False)
class _Due:
    stored: asyncio.Future[None]  # the run's write
    notices: list[Notice]
    published: asyncio.Future[None]  # what the run's caller awaits


class Publications:
    """The queue of runs waiting for their writes, drained by one task at a time."""

    def __init__(self, publish_many: PublishMany) -> None:
        self._publish_many = publish_many
        self._due: deque[_Due] = deque()
        self._drain_task: asyncio.Task[None] | None = None

    async def publish_after(self, stored: asyncio.Future[None], notices: list[Notice]) -> None:
        """Queue a run's notifications behind every run queued before; returns once they are published,
        raises the write's error (nothing published) or the broker's (if any of them was not)."""
        loop = asyncio.get_running_loop()
        due = _Due(stored, notices, loop.create_future())
        self._due.append(due)
        if self._drain_task is None:
            self._drain_task = loop.create_task(self._drain(), name="contact-center-publications")
        # A caller cancelled here cancels only its wait: the drain publishes whatever `published` says.
        await due.published

    async def _drain(self) -> None:
        try:
            while self._due:
                head = self._due[0].stored
                if not head.done():
                    await asyncio.wait((head,))  # never cancels the write's future
                ready: list[_Due] = []
                while self._due and self._due[0].stored.done():
                    ready.append(self._due.popleft())
                await self._publish(ready)
        finally:
            self._drain_task = None
            while self._due:  # only if publishing itself broke: nobody may wait forever
                _settle(self._due.popleft(), RuntimeError("contact-center notifications were not published"))

    async def _publish(self, ready: list[_Due]) -> None:
        """Runs whose writes are settled: publish the stored ones' notifications in one call."""
        stored: list[_Due] = []
        for due in ready:
            failure = _write_failure(due.stored)
            if failure is None:
                stored.append(due)
            else:
                _settle(due, failure)
        notices = [notice for due in stored for notice in due.notices]
        try:
            outcomes = await self._publish_many(notices) if notices else []
        except Exception as exc:  # the broker refused the batch (nothing of it published)
            for due in stored:
                _settle(due, exc)
            return
        except BaseException:  # the drain itself was cancelled (the loop is ending): nobody may wait forever
            for due in stored:
                _settle(due, RuntimeError("contact-center notifications were not published: the server stopped"))
            raise
        at = 0
        for due in stored:
            failures = [outcome for outcome in outcomes[at:at + len(due.notices)] if outcome is not None]
            at += len(due.notices)
            _settle(due, failures[0] if failures else None)


def _write_failure(stored: asyncio.Future[None]) -> BaseException | None:
    if stored.cancelled():  # not by us; nothing says the write is stored
        return StoreUnavailable("contact-center state write was cancelled before it was known to be stored")
    return stored.exception()


def _settle(due: _Due, failure: BaseException | None) -> None:
    if due.published.done():
        return
    if failure is None:
        due.published.set_result(None)
    else:
        due.published.set_exception(failure)
