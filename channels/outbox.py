"""The notifications one run of the conversation engine causes, collected in order and published after the
change is stored (conversation_core.py), so nobody hears of a change that a crash could lose.

Notifications go to agents through `publish(user_id, topic, data)` (the broker's `publish_to_user`).
`referenceId` appears only on notifications that the caller's operation caused for the caller (and on an
`Error` telling a requester that their Invite/Consult/Transfer failed, as in seed 000).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .model import MESSAGE_LOG_TYPE, Interaction, Leg, Message

Publish = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
Notice = tuple[str, str, dict[str, Any]]  # (user_id, topic, data): one notification to publish
# (interaction, the agent's leg, the state notification queued for that agent) -> (topic, data) to publish
# to the same agent right after it, or None.
StateListener = Callable[[Interaction, Leg, dict[str, Any]], tuple[str, dict[str, Any]] | None]


class Outbox:
    """`changed(ix)` is told of every interaction a state notification reports on: it changed in this run."""

    def __init__(self, base_url: str, changed: Callable[[Interaction], None]) -> None:
        self.base_url = base_url
        self._changed = changed
        self._pending: list[Notice] = []
        self._listeners: list[StateListener] = []

    def add_listener(self, listener: StateListener) -> None:
        """`listener` sees every state notification (StatusChange, ParticipantsUpdated, PropertiesUpdated,
        Error) queued for an agent; what it returns is queued for the same agent right behind it, so a
        mirror (the generic /v2/me/interactions topic) keeps the order and the referenceId of the original."""
        self._listeners.append(listener)

    def clear(self) -> None:
        self._pending = []

    def take(self) -> list[Notice]:
        """The run's notifications, in order; the outbox is empty after."""
        pending, self._pending = self._pending, []
        return pending

    # --- state notifications -----------------------------------------------------------------------------

    def state_data(self, ix: Interaction, leg: Leg, notification_type: str, *, ref: int | None = None,
                   participants: list[dict[str, str]] | None = None,
                   with_user_data: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"messageType": ix.media.message_type, "notificationType": notification_type,
                                ix.media.resource_key: ix.view(leg, self.base_url, participants=participants,
                                                               with_user_data=with_user_data)}
        if ref is not None:
            data["referenceId"] = ref
        return data

    def notify(self, ix: Interaction, leg: Leg, notification_type: str, **kwargs: Any) -> None:
        self.queue_state(ix, leg, self.state_data(ix, leg, notification_type, **kwargs))

    def queue_state(self, ix: Interaction, leg: Leg, data: dict[str, Any]) -> None:
        self._changed(ix)  # every state notification reports a change of this interaction
        self._pending.append((leg.user_id, ix.media.topic, data))
        for listener in self._listeners:
            mirrored = listener(ix, leg, data)
            if mirrored is not None:
                self._pending.append((leg.user_id, *mirrored))

    # --- the message log -----------------------------------------------------------------------------------

    def messages(self, ix: Interaction, user_id: str, messages: list[dict[str, Any]], ref: int | None = None) -> None:
        data: dict[str, Any] = {"messageType": MESSAGE_LOG_TYPE, "notificationType": "NewMessages",
                                "messages": messages, ix.media.uri_key: ix.media.uri(self.base_url, ix.id)}
        if ref is not None:
            data["referenceId"] = ref
        self._pending.append((user_id, ix.media.topic, data))

    def new_message(self, ix: Interaction, message: Message, *, caller: str | None = None,
                    ref: int | None = None) -> None:
        """Every agent in the chat session sees the new message (agents see All and Agents messages)."""
        for leg in ix.chatting():
            self.messages(ix, leg.user_id, [message.as_dict()], ref if leg.user_id == caller else None)

    def tell_others(self, ix: Interaction, leg: Leg, message: Message) -> None:
        """Seed 000: every other agent in the session gets ParticipantsUpdated, then the message."""
        for other in ix.chatting():
            if other is not leg:
                self.notify(ix, other, "ParticipantsUpdated")
                self.messages(ix, other.user_id, [message.as_dict()])
