"""Where the conversation engine keeps its interactions: in memory, indexed by agent, and in a DocumentStore.

A run of the engine (conversation_core.py) marks what it changes (`touch`, `save_lar`, `stage`) and then
`persist`s it as ONE store write, queued while the run holds the engine's lock and awaited after: every
interaction the run touched (with the routing requests that wait for it or that its Invited legs answer),
changed saveLAR contacts, the referenceId counter and whatever other modules staged (workbins). A failed
write keeps it all pending, so the next run writes it. `restore` loads what a previous server wrote;
`forget` drops an interaction that is over, from memory and (with the next write) from the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from .model import Interaction, Leg, LegState, new_interaction_id
from .routing import OfferRequest, Routing
from .store import Change, Document, DocumentStore, stored_now

log = logging.getLogger("channels.conversation")


class ReferenceIds:
    """The referenceId counter, shared by every API of a server so referenceIds are unique per server; the
    engine stores its value with each operation, so referenceIds keep increasing across restarts."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def __iter__(self) -> ReferenceIds:
        return self

    def __next__(self) -> int:
        self.last += 1
        return self.last


class InteractionRepository:
    """Every interaction of the engine by id, the interactions each agent may hold an active leg in, the
    saveLAR contacts, and what the current run changed."""

    def __init__(self, routing: Routing, refs: Iterator[int], store: DocumentStore | None) -> None:
        """`refs`: only a `ReferenceIds` is persisted. `store` None keeps nothing."""
        self.routing = routing
        self.refs = refs
        self.store = store
        self.interactions: dict[str, Interaction] = {}
        self.by_user: dict[str, set[str]] = {}  # user -> interactions where it may hold an active leg
        self.last_agent: dict[str, str] = {}  # contact id -> user id (saveLAR)
        # What the current run changed, written by `persist` (kept if a write fails, so the next run retries).
        self._dirty: dict[str, Interaction] = {}
        self._dirty_contacts: set[str] = set()
        self._staged: dict[tuple[str, str], Callable[[], Document | None]] = {}
        self._saved_ref: int | None = None

    # --- reading -------------------------------------------------------------------------------------------

    def get(self, interaction_id: str) -> Interaction | None:
        return self.interactions.get(interaction_id)

    def all(self) -> list[Interaction]:
        return list(self.interactions.values())

    def new_id(self) -> str:
        interaction_id = new_interaction_id()
        while interaction_id in self.interactions:
            interaction_id = new_interaction_id()
        return interaction_id

    def of_user(self, user_id: str) -> list[Interaction]:
        """The interactions the agent has a leg in that are not over for it; ids whose legs ended
        are dropped from the index as they are found."""
        ids = self.by_user.get(user_id)
        if not ids:
            return []
        found = []
        for interaction_id in list(ids):
            ix = self.interactions.get(interaction_id)
            leg = ix.legs.get(user_id) if ix is not None else None
            if leg is None or not leg.state.active:
                ids.discard(interaction_id)
                continue
            found.append(ix)
        return found

    # --- changing --------------------------------------------------------------------------------------------

    def add(self, ix: Interaction) -> None:
        self.interactions[ix.id] = ix
        for user_id in ix.legs:
            self.index_leg(user_id, ix)
        self.touch(ix)

    def index_leg(self, user_id: str, ix: Interaction) -> None:
        """`user_id` got a leg in `ix`: `of_user` looks there from now on."""
        self.by_user.setdefault(user_id, set()).add(ix.id)

    def forget(self, ix: Interaction) -> None:
        """Out of memory now, out of the store with the next write."""
        del self.interactions[ix.id]
        self._dirty.pop(ix.id, None)
        for user_id in ix.legs:
            ids = self.by_user.get(user_id)
            if ids is not None:
                ids.discard(ix.id)
                if not ids:
                    del self.by_user[user_id]
        self.stage("interaction", ix.id, lambda: None)

    def touch(self, ix: Interaction) -> None:
        """`ix` changed in this run: write it before the run's notifications go out."""
        self._dirty[ix.id] = ix

    def save_lar(self, ix: Interaction, user_id: str) -> None:
        self.last_agent[ix.contact_id] = user_id
        self._dirty_contacts.add(ix.contact_id)

    def stage(self, kind: str, key: str, render: Callable[[], Document | None]) -> None:
        """Write `render()` (None deletes) as (kind, key) with the next run's changes, in the same transaction.
        Rendered at write time, so staging the same document twice writes its latest state once."""
        self._staged[(kind, key)] = render

    def drop_staged(self) -> None:
        """Nothing to write them to (no store): forget what was staged."""
        self._staged.clear()

    # --- the store -------------------------------------------------------------------------------------------

    def _document(self, ix: Interaction) -> Document:
        """The interaction plus the routing requests about it: those waiting in queues, and those its
        Invited legs answer (an offer in flight is in no queue, yet must not be lost)."""
        offers = {user_id: leg.offer.to_document() for user_id, leg in ix.legs.items() if leg.offer is not None}
        waiting = [request.to_document() for request in self.routing.waiting_for(ix.id)]
        # The log as encoded once per message: this document is written again on every change.
        return {**ix.to_document(encoded_log=True), "offers": offers, "waiting": waiting}

    async def persist(self) -> asyncio.Future[None]:
        """Queue one write with everything this run changed; the future resolves once it is stored. A write
        that cannot be queued raises, one that fails fails the future; either way the changes stay pending
        (merged under what later runs changed, which is newer), so a later run writes them."""
        last_ref = self.refs.last if isinstance(self.refs, ReferenceIds) else None
        dirty, contacts, staged = self._dirty, self._dirty_contacts, self._staged
        self._dirty, self._dirty_contacts, self._staged = {}, set(), {}

        def still_due() -> None:
            # Not those forgotten since: their deletion is staged (or stored) already.
            self._dirty = {**{key: ix for key, ix in dirty.items() if self.interactions.get(key) is ix},
                           **self._dirty}
            self._dirty_contacts |= contacts
            self._staged = {**staged, **self._staged}
            if self._saved_ref == last_ref:
                self._saved_ref = None  # not known to be stored: the next write carries the counter

        if self.store is None:
            stored = stored_now()
        else:
            try:
                changes: list[Change] = [("interaction", ix.id, self._document(ix)) for ix in dirty.values()]
                changes += [("contact", contact, {"lastAgent": self.last_agent[contact]}) for contact in contacts]
                changes += [(kind, key, render()) for (kind, key), render in staged.items()]
                if last_ref is not None and last_ref != self._saved_ref:
                    changes.append(("counter", "referenceId", {"last": last_ref}))
                stored = await self.store.submit(changes)
            except BaseException:
                still_due()
                raise
        self._saved_ref = last_ref

        def settled(done: asyncio.Future[None]) -> None:
            if done.cancelled() or done.exception() is not None:
                still_due()

        if stored.done():  # a store that stores at once (memory) says so now: no callback a turn later
            settled(stored)
        else:
            stored.add_done_callback(settled)
        return stored

    def restore(self, store: DocumentStore) -> tuple[int, list[tuple[Interaction, Leg]]]:
        """Load the state a previous server wrote: the referenceId counter, saveLAR contacts, interactions in
        creation order and the routing requests waiting for them (queues that are no longer configured are
        kept). Returns how many interactions were loaded and the Invited legs whose offers were in flight,
        each with its request back on `leg.offer`: nobody answers those any more (conversation_core.py)."""
        counter = store.load("counter").get("referenceId")
        if counter is not None and isinstance(self.refs, ReferenceIds):
            self.refs.last = max(self.refs.last, counter["last"])
            self._saved_ref = self.refs.last
        self.last_agent.update({contact: doc["lastAgent"] for contact, doc in store.load("contact").items()})
        # Creation order is the order agents' lists show; ids break ties within a millisecond.
        docs = sorted(store.load("interaction").values(), key=lambda doc: (doc["createdMs"], doc["id"]))
        pending: list[tuple[Interaction, Leg]] = []
        for doc in docs:
            ix = Interaction.from_document(doc)
            self.interactions[ix.id] = ix
            for user_id in ix.legs:
                self.index_leg(user_id, ix)
            requests = [OfferRequest.from_document(r) for r in doc.get("waiting", ())]
            for user_id, offered in doc.get("offers", {}).items():
                leg = ix.legs.get(user_id)
                if leg is not None and leg.state is LegState.INVITED:
                    leg.offer = OfferRequest.from_document(offered)
                    pending.append((ix, leg))
            for queue in {ix.queue, *(r.queue for r in requests if r.queue is not None)}:
                if not self.routing.has_queue(queue):
                    # Removed from the configuration since: keep routing what waits in it rather than drop it.
                    log.warning("queue %s is not configured but interaction %s uses it: queue kept", queue, ix.id)
                    self.routing.add_queue(queue)
            for request in requests:
                self.routing.enqueue(request)
        return len(docs), pending
