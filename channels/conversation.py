"""The chat/SMS conversation engine, as the rest of the server sees it: `Conversations`, one object over
the engine's parts, each in its own module:

- conversation_repository.py: the interactions in memory and in the DocumentStore (loaded at start-up),
  and the referenceId counter;
- outbox.py: the notifications a change causes; publication.py publishes them once the change is stored;
- conversation_core.py: the run every change goes through, one at a time (apply, route, store, publish),
  and the changes the other parts share (offers and their outcomes, legs leaving, the end);
- conversation_operations.py: the agent's operations (the GWS operationNames);
- customer_side.py: what the media gateway does for the customer;
- conversation_pruning.py: forgetting interactions that have been over for a while.

Failures are domain errors (errors.py) raised before anything changed; the HTTP edge answers them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from .conversation_core import ConversationCore
from .conversation_operations import OPERATIONS, AgentOperations, UserLookup
from .conversation_pruning import Pruner
from .conversation_repository import InteractionRepository, ReferenceIds
from .customer_side import CustomerSide
from .model import InteractionLimits, MediaKind
from .outbox import Outbox, Publish, StateListener
from .params import MAX_URL_LENGTH
from .publication import PublishMany
from .routing import Routing
from .store import DocumentStore

# What other modules (gws/openapi.py, app.py, tests) import from here.
__all__ = ["MAX_URL_LENGTH", "OPERATIONS", "Conversations", "ReferenceIds", "StateListener", "UserLookup"]

log = logging.getLogger("channels.conversation")


class Conversations:
    """All chat and SMS interactions of one server, and the operations on them. Its public methods are
    its parts' own (bound in `__init__`), so callers need only this object."""

    def __init__(self, publish: Publish, routing: Routing, users: UserLookup, *,
                 base_url: str = "http://localhost:8080", reference_ids: Iterator[int] | None = None,
                 clock_ms: Callable[[], int] | None = None, store: DocumentStore | None = None,
                 limits: InteractionLimits | None = None, publish_many: PublishMany | None = None) -> None:
        """`reference_ids` may be shared with other modules so referenceIds are unique per server; only a
        `ReferenceIds` is persisted. `store` None keeps nothing; otherwise the state in it is loaded now.
        `publish_many`: the broker's batch publish, for the notifications of runs stored together."""
        self.routing = routing
        self.users = users
        self.base_url = base_url
        self.store = store
        self._refs = reference_ids or ReferenceIds()
        self.repository = InteractionRepository(routing, self._refs, store)
        self.outbox = Outbox(base_url, self.repository.touch)
        self.core = ConversationCore(publish, routing, self.repository, self.outbox, clock_ms=clock_ms, limits=limits,
                                     publish_many=publish_many)
        self._now = self.core.now  # the engine clock (epoch ms): tests compare offer deadlines with it
        self.operations = AgentOperations(self.core, users, self._refs)
        self.customers = CustomerSide(self.core)
        self.pruning = Pruner(self.core)
        self.last_agent = self.repository.last_agent  # contact id -> user id (saveLAR)

        # Agents (gws/chats.py, gws/interactions.py, workbins.py) and the media gateway (gws/media.py).
        self.operate = self.operations.operate
        self.offer_to = self.operations.offer_to
        self.leg_of = self.operations.leg_of
        self.create_inbound = self.customers.create_inbound
        self.customer_message = self.customers.customer_message
        self.customer_typing = self.customers.customer_typing
        self.customer_left = self.customers.customer_left
        self.transcript = self.customers.transcript
        # Other APIs over the same interactions (gws/interactions.py, workbins.py).
        self.interaction = self.repository.get
        self.all_interactions = self.repository.all
        self.add_listener = self.outbox.add_listener
        self.add_holder = self.core.add_holder
        self.stage = self.repository.stage
        # Housekeeping (app.py).
        self.prune = self.pruning.prune
        self.prune_forever = self.pruning.prune_forever
        if store is not None:
            self._restore(store)

    @property
    def pruned(self) -> int:
        """Interactions forgotten by `prune`, for logs and tests."""
        return self.pruning.pruned

    async def close(self) -> None:
        await self.routing.close()

    async def save(self) -> None:
        """Write what was staged (and the referenceId counter) now, for a change that is not an engine run."""
        if self.store is None:
            self.repository.drop_staged()
            return
        await self.core.run(lambda: None)

    def resource(self, user_id: str, media: MediaKind, interaction_id: str) -> dict[str, Any]:
        ix, leg = self.leg_of(user_id, media, interaction_id)
        return ix.view(leg, self.base_url)

    def active(self, user_id: str, media: MediaKind) -> list[dict[str, Any]]:
        """Views of the agent's interactions of this media that are not finished for them."""
        mine = sorted(self.repository.of_user(user_id), key=lambda ix: (ix.created_ms, ix.id))  # creation order
        return [ix.view(ix.legs[user_id], self.base_url) for ix in mine if ix.media == media]

    def _restore(self, store: DocumentStore) -> None:
        """Load the state a previous server wrote; offers that were in flight are re-routed."""
        loaded, pending = self.repository.restore(store)
        self.core.reroute_after_restart(pending)
        if loaded:
            log.info("restored %d interaction(s), %d queued, %d pending offer(s) re-routed",
                     loaded, len(self.routing.waiting()), len(pending))
