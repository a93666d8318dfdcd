"""Owned background tasks: how they are stopped."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel an owned task and wait until it has ended; re-raise what it failed with, if anything.

    `asyncio.wait` does not raise the task's own cancellation, only a cancellation delivered to the
    caller while it waits, so stopping one task never hides that the stopper itself was cancelled
    (and a caller that merely survived an earlier cancellation, like aiohttp's shutdown, still
    finishes its work).
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.result()
