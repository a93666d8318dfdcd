"""The contact-center state store on /metrics: how much it writes, how well writes share commits, and what
waits for it now, so an operator sees a slow disk (or Redis) before the agents do."""

from __future__ import annotations

from collections.abc import Callable

from cometd_broker.metrics import Exposition

from .store import DocumentStore


def state_store_collector(store: DocumentStore) -> Callable[[Exposition], None]:
    """The families of `store`, read on every scrape."""

    def collect(out: Exposition) -> None:
        stats = store.stats()
        out.one("gws_state_writes_total", "counter",
                "Contact-center state writes (one per operation that changed state, and other APIs' own)",
                stats["writes"])
        out.one("gws_state_commits_total", "counter",
                "State-store transactions (SQLite) or scripts (Redis); writes queued together share one",
                stats["commits"])
        out.one("gws_state_pending_writes", "gauge", "State writes queued and not stored yet",
                stats["pending_writes"])
        out.one("gws_state_pending_bytes", "gauge", "Bytes of the documents of those writes",
                stats["pending_bytes"])
        out.one("gws_state_waiting_writes", "gauge",
                "Writes held back because the store holds its most (1,024 writes or 64 MiB) not stored yet",
                stats["waiting"])

    return collect
