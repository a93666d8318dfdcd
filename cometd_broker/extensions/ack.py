"""CometD's message-acknowledgement extension, server side.

A client that handshakes with `ext.ack: true` gets `ext.ack: true` back. From then on events reach it
only in /meta/connect replies, each reply numbered with `ext.ack: <batch>`; the client's next
/meta/connect carries the last batch it received. Batches the client has not acknowledged are sent
again, in order, ahead of newer events - across dropped long-polls, closed websockets and switches
between transports, because the state lives in the session, not in a connection.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class AckState:
    """Sent-but-unacknowledged batches of one session."""

    __slots__ = ("batch", "unacked")

    def __init__(self) -> None:
        self.batch = 0  # the number of the last batch sent
        # Bounded without a limit of its own: acknowledge() moves everything unacknowledged back into
        # the session's bounded queue, so only the batches sent since the last connect live here.
        self.unacked: deque[tuple[int, list[bytes]]] = deque()

    def acknowledge(self, batch: Any) -> list[bytes]:
        """Forget batches up to `batch`; return the events of later batches, in order, to send again.

        A value that is not a batch number the server sent (old clients, garbage) acknowledges nothing,
        so nothing is lost: everything unacknowledged is sent again.
        """
        if isinstance(batch, int) and not isinstance(batch, bool):
            while self.unacked and self.unacked[0][0] <= batch:
                self.unacked.popleft()
        resend = [event for _, events in self.unacked for event in events]
        self.unacked.clear()
        return resend

    def send(self, events: list[bytes]) -> int:
        """Number the next batch; its events are kept until acknowledged. Returns the batch number."""
        self.batch += 1
        if events:
            self.unacked.append((self.batch, events))
        return self.batch


def requested(message: dict[str, Any]) -> bool:
    """Whether a handshake asks for acknowledgements (`ext.ack: true`)."""
    ext = message.get("ext")
    return isinstance(ext, dict) and ext.get("ack") is True


def connect_batch(message: dict[str, Any]) -> Any:
    """The batch a /meta/connect acknowledges (None when absent)."""
    ext = message.get("ext")
    return ext.get("ack") if isinstance(ext, dict) else None
