"""Shared pieces of the conversation tests: a publisher that records, a directory, an engine factory."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from channels.conversation import Conversations
from channels.model import MediaKind
from channels.routing import Routing

AGENTS = ("alice", "bob", "carol", "dave")


@dataclass(frozen=True)
class FakeUser:
    user_id: str
    first_name: str = ""
    last_name: str = ""


DIRECTORY = {name: FakeUser(name, name.capitalize(), "Agent") for name in AGENTS}


class Recorder:
    """Stands in for Broker.publish_to_user: remembers (user, channel, data) in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def __call__(self, user_id: str, channel: str, data: dict[str, Any]) -> int:
        self.events.append((user_id, channel, data))
        return 1

    def of(self, user_id: str, channel: str | None = None) -> list[dict[str, Any]]:
        return [d for u, c, d in self.events if u == user_id and (channel is None or c == channel)]

    def take(self, user_id: str, channel: str | None = None) -> list[dict[str, Any]]:
        """The user's events so far, then forget every recorded event."""
        found = self.of(user_id, channel)
        self.events.clear()
        return found

    def clear(self) -> None:
        self.events.clear()


def make_engine(*, capacity: int = 1, offer_timeout: float = 30.0,
                queues: tuple[str, ...] = ("default", "sales")) -> tuple[Conversations, Routing, Recorder]:
    recorder = Recorder()
    routing = Routing(recorder, queues=queues, capacity=capacity, offer_timeout=offer_timeout)
    clock = itertools.count(1_389_039_246_000, 7)
    conversations = Conversations(recorder, routing, DIRECTORY, base_url="http://localhost:8080",
                                  clock_ms=lambda: next(clock))
    return conversations, routing, recorder


def kinds(events: list[dict[str, Any]]) -> list[str]:
    """`notificationType` of each event, with the resource state for state changes: 'StatusChange:Chatting'."""
    out = []
    for data in events:
        name = data.get("notificationType", "?")
        for key in ("chat", "smssession"):
            if name == "StatusChange" and key in data:
                name += ":" + data[key]["state"]
        out.append(name)
    return out


def resource(data: dict[str, Any], media: MediaKind) -> dict[str, Any]:
    return data[media.resource_key]
