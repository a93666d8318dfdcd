"""The state store of `--state-db :memory:`: the documents in a dict, for as long as the process runs.

`StateStore(":memory:")` would write them to an SQLite database in memory through its writer thread: a
thread hand-off (and back, to the loop) per operation for data that dies with the process and that nobody
reads (a store is read at start-up only). This store does the same work a write must do to be checked
(encoding, so a document that is not JSON fails the same way) and keeps the encoded rows, with nothing
to wait for. Writes still happen in the order they are applied and all or nothing, as the protocol asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import orjson

from .store import Change, Document, StoreUnavailable, encode, stored_now


class MemoryStateStore:
    """A `DocumentStore` (channels.store) that keeps nothing across restarts and never blocks."""

    path = ":memory:"

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], bytes] = {}
        self._closed = False
        self.commits = 0  # as StateStore's: every apply is its own commit here
        self.writes = 0

    def load(self, kind: str) -> dict[str, Document]:
        return {key: orjson.loads(body) for (k, key), body in self._rows.items() if k == kind}

    async def apply(self, changes: Iterable[Change]) -> None:
        await self.submit(changes)

    async def submit(self, changes: Iterable[Change]) -> asyncio.Future[None]:
        """Stored at once: the future is resolved already."""
        rows = encode(changes)  # raises before anything is kept, as StateStore's does
        if not rows:
            return stored_now()
        self._check_open()
        for kind, key, body in rows:
            if body is None:
                self._rows.pop((kind, key), None)
            else:
                self._rows[(kind, key)] = body
        self.commits += 1
        self.writes += 1
        return stored_now()

    async def close(self) -> None:
        self._closed = True

    def close_now(self) -> None:
        self._closed = True

    def stats(self) -> dict[str, int]:
        """As StateStore's: nothing ever waits here."""
        return {"writes": self.writes, "commits": self.commits, "pending_writes": 0, "pending_bytes": 0,
                "waiting": 0}

    def reap(self) -> None:
        """Nothing is ever owed: writes are settled when submitted."""

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("contact-center state store is closed")
