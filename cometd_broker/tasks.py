"""Owned background tasks: how they are stopped."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel an owned task and wait until it has ended.

    The task's own cancellation is swallowed; a cancellation of the caller (shutdown interrupted) is not,
    so stopping one task never hides that the stopper itself was cancelled.
    """
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
