"""The agent gateway's persistence: what a request changed, written in one awaited write, then mirrored.

Given a `DocumentStore`, what a request changed -- conferences (chairperson, participants), the
conference-id counter and sign-in sessions -- is written in one awaited write at the end of the request,
before its reply and before the mirror lets its events out; a poll writes the taking of its event before
handing it out. A session is stored as the agent, a SHA-256 digest of its Guid (never the Guid, never the
password), its sign-in options and its queue of events not polled yet. So after a restart (or, in a cluster,
a leader failover) a desktop polls on with the same Guid and gets every event queued before; the idle
sign-out counts from the restart. The store's writes are ordered, so an event a poll hands out (queued by
another request) is stored before its taking is. A write that fails keeps everything it carried due for the
next one, its events not mirrored yet; the request answers "retry later" (as for any failure, what it
changed in memory stays).

The mirror, when given, receives every event queued for a signed-in agent that has a user, after the write
that carried it, in the order of the writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .gateway_conferences import ConferenceBook
from .gateway_sessions import SESSION_KIND, AgentSessions
from .store import Change, DocumentStore

Json = dict[str, Any]
Mirror = Callable[[str, Json], Awaitable[None]]  # (user ID, event)


class GatewayWrites:
    """Writes the sessions and conferences that changed, then mirrors the events queued with them."""

    def __init__(self, sessions: AgentSessions, conferences: ConferenceBook, store: DocumentStore | None,
                 mirror: Mirror | None, user_of: Callable[[str], str | None]) -> None:
        self.sessions = sessions
        self.conferences = conferences
        self.store = store
        self.mirror = mirror
        self.user_of = user_of
        self._outbox: list[tuple[str, Json]] = []
        self._lock = asyncio.Lock()  # mirrors one write's events at a time, in the order of the writes

    def restore(self) -> None:
        """Load the stored conferences and sessions (start-up only: the store reads on this thread)."""
        if self.store is None:
            return
        counter = self.store.load("counter").get("confId")
        self.conferences.restore(self.store.load("conference").values(),
                                 counter["next"] if counter is not None else None)
        self.sessions.restore(self.store.load(SESSION_KIND))

    def queued(self, agent_id: str, event: Json) -> None:
        """`event` was queued for `agent_id`: the mirror gets it after the next write."""
        user_id = self.user_of(agent_id) if self.mirror is not None else None
        if user_id is not None:
            self._outbox.append((user_id, event))

    async def commit(self) -> None:
        """Write what changed since the last write (sessions signed in or out, events queued or taken,
        conferences and the id counter) in one awaited write, then mirror the events queued with it, in
        order. If the write fails, all of it stays due for the next write, its events not mirrored."""
        sessions, self.sessions.changed = self.sessions.changed, set()
        conferences, self.conferences.changed = self.conferences.changed, set()
        outbox, self._outbox = self._outbox, []
        if self.store is not None and (sessions or conferences):
            try:
                await self.store.apply(self._changes(sessions, conferences))
            except BaseException:
                self.sessions.changed |= sessions
                self.conferences.changed |= conferences
                self._outbox[:0] = outbox
                raise
        if outbox and self.mirror is not None:
            # Writes complete in order and the lock is taken in that order: events leave in order too.
            async with self._lock:
                for user_id, event in outbox:
                    await self.mirror(user_id, event)

    def _changes(self, sessions: set[str], conferences: set[int]) -> list[Change]:
        changes: list[Change] = []
        for agent_id in sorted(sessions):  # a signed-out session is deleted
            session = self.sessions.by_agent.get(agent_id)
            changes.append((SESSION_KIND, agent_id, None if session is None else session.to_document()))
        for conf_id in sorted(conferences):  # an ended conference is deleted
            conference = self.conferences.conferences.get(conf_id)
            changes.append(("conference", str(conf_id), None if conference is None else conference.to_document()))
        if conferences:
            changes.append(("counter", "confId", {"next": self.conferences.next_conf_id}))
        return changes
