"""The customer's side of a chat or SMS interaction, as the media gateway (gws/media.py) brings it in: a
customer starts an interaction (it waits in a queue for a Ready agent), writes, types, and leaves; and reads the
transcript (only what the customer may see). Each change is one run of the engine (conversation_core.py).
"""

from __future__ import annotations

from typing import Any

from .conversation_core import ConversationCore
from .errors import InvalidState, NotFound
from .model import Interaction, LegState, MediaKind, MessageType, Participant, Role, Visibility, new_participant_id
from .routing import OfferRequest


class CustomerSide:
    def __init__(self, core: ConversationCore) -> None:
        self.core = core

    async def create_inbound(self, media: MediaKind, nickname: str, *, text: str | None = None,
                             queue: str = "default", contact_id: str | None = None) -> Interaction:
        """A customer starts a chat/SMS: it joins the log and waits in `queue` for a Ready agent."""
        core = self.core
        core.known_queue(queue)
        core.checked_text(text)

        def create() -> Interaction:
            now = core.now()
            customer = Participant(nickname, "Customer", new_participant_id())
            ix = Interaction(core.repository.new_id(), media, customer, queue, contact_id or nickname, now)
            core.repository.add(ix)
            ix.append(MessageType.PARTICIPANT_JOINED, customer, Visibility.ALL, now)
            if text:
                ix.append(MessageType.TEXT, customer, Visibility.ALL, now, text=text)
            core.routing.enqueue(OfferRequest(ix.id, media.name, Role.OWNER, queue=queue,
                                              preferred=core.repository.last_agent.get(ix.contact_id)))
            return ix

        return await core.run(create)

    async def customer_message(self, media: MediaKind, interaction_id: str, text: str) -> None:
        await self._says(media, interaction_id, MessageType.TEXT, text)

    async def customer_typing(self, media: MediaKind, interaction_id: str, started: bool) -> None:
        await self._says(media, interaction_id, MessageType.TYPING_STARTED if started else MessageType.TYPING_STOPPED)

    async def customer_left(self, media: MediaKind, interaction_id: str) -> None:
        """The customer ended the chat: agents chatting go to LeftChat for wrap-up, offers are withdrawn."""
        core = self.core

        def leave() -> None:
            ix = self._interaction(media, interaction_id)
            core.repository.touch(ix)
            ix.customer_present = False
            core.outbox.new_message(ix, core.log(ix, MessageType.PARTICIPANT_LEFT, ix.customer, Visibility.ALL))
            for leg in ix.chatting():
                if leg.role is Role.CONSULT:
                    core.leave(ix, leg, LegState.COMPLETED, None)
                else:
                    leg.state = LegState.LEFT_CHAT
                    core.outbox.notify(ix, leg, "StatusChange")
            core.end(ix)

        await core.run(leave)

    def transcript(self, media: MediaKind, interaction_id: str) -> list[dict[str, Any]]:
        return self._interaction(media, interaction_id, allow_ended=True).transcript()

    async def _says(self, media: MediaKind, interaction_id: str, kind: MessageType, text: str | None = None) -> None:
        core = self.core
        core.checked_text(text)

        def say() -> None:
            ix = self._interaction(media, interaction_id)
            core.check_room(ix)
            core.repository.touch(ix)
            core.outbox.new_message(ix, core.log(ix, kind, ix.customer, Visibility.ALL, text=text))

        await core.run(say)

    def _interaction(self, media: MediaKind, interaction_id: str, *, allow_ended: bool = False) -> Interaction:
        ix = self.core.repository.get(interaction_id)
        if ix is None or ix.media != media:
            raise NotFound(f"{media.resource_key} {interaction_id} not found")
        if not allow_ended and (ix.ended or not ix.customer_present):
            raise InvalidState(f"{media.resource_key} {interaction_id} has ended")
        return ix
