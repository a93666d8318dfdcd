"""Forgetting the interactions that are over: the customer's side ended, no agent holds a leg (wrap-up
included), no workbin holds it and no routing request waits for it, so nothing can change it any more.

After `retention` seconds over (by the monotonic clock, counted from when a sweep first saw it over: after
a restart, from the first sweep) an interaction leaves memory and the store in one run of the engine; its
transcript and GETs answer 'not found' from then on.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .conversation_core import ConversationCore
from .model import Interaction

log = logging.getLogger("channels.conversation")


class Pruner:
    def __init__(self, core: ConversationCore) -> None:
        self.core = core
        self._over_since: dict[str, float] = {}  # interaction id -> monotonic time it was first seen over
        self.pruned = 0  # interactions forgotten, for logs and tests

    def _over(self, ix: Interaction, waiting: set[str]) -> bool:
        return ix.ended and not ix.active_legs() and ix.id not in waiting and not self.core.is_held(ix.id)

    async def prune(self, retention: float, now: float | None = None) -> int:
        """Forget the interactions that have been over for `retention` seconds; returns how many."""
        now = time.monotonic() if now is None else now
        repository = self.core.repository

        def forget() -> int:
            waiting = {request.interaction_id for request in self.core.routing.waiting()}
            gone = []
            for ix in repository.interactions.values():
                if not self._over(ix, waiting):
                    self._over_since.pop(ix.id, None)  # e.g. back in a workbin: counts again when over
                elif now - self._over_since.setdefault(ix.id, now) >= retention:
                    gone.append(ix)
            for ix in gone:
                self._over_since.pop(ix.id, None)
                repository.forget(ix)
            return len(gone)

        count = await self.core.run(forget)
        self.pruned += count
        return count

    async def prune_forever(self, retention: float, period: float) -> None:
        """`prune` every `period` seconds until cancelled; a failed sweep (the store unavailable) is
        logged and retried at the next one, its deletions still staged."""
        while True:
            await asyncio.sleep(period)
            try:
                count = await self.prune(retention)
            except Exception as exc:  # housekeeping must outlive a store outage (or a leader change)
                log.warning("contact center: forgetting ended interactions failed (%s); retrying in %g s",
                            exc, period)
                continue
            if count:
                log.info("contact center: forgot %d interaction(s) over for more than %g s (%d kept)",
                         count, retention, len(self.core.repository.interactions))
