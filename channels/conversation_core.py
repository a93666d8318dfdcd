"""The core of the conversation engine: the run every change goes through, and the changes that agent
operations (conversation_operations.py), the customer side (customer_side.py) and routing share.

A run takes one lock, so that a failed request never half-applies: it applies the change (state, and
notifications to the outbox), lets routing offer whatever became offerable and queues everything the run
touched as one store write (the store's writer thread or task does the I/O). Then it lets go of the lock and
waits for publication.py to publish its notifications once that write is stored, in the order of the runs.
So whatever a client was told is stored, a crash loses at most an operation nobody heard of, and the runs
that queue while a write commits share the next commit (and one publish to the broker) instead of each
waiting for its own.

The shared changes: offers (this is routing's `Offerer`) and what becomes of them (accepted elsewhere,
rejected, timed out, or pending when the server stopped), agents leaving the chat session, and the end of
the customer's side once nobody holds the interaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from .conversation_repository import InteractionRepository
from .errors import InvalidParameter, InvalidState, NotFound
from .model import (
    Interaction,
    InteractionLimits,
    Leg,
    LegState,
    Message,
    MessageType,
    Participant,
    Role,
    Visibility,
)
from .outbox import Outbox, Publish
from .publication import Publications, PublishMany, one_by_one
from .routing import OfferRequest, Routing

log = logging.getLogger("channels.conversation")

T = TypeVar("T")


def member(ix: Interaction, user_id: str) -> Leg | None:
    """The user's leg while it is active (Invited, Chatting or LeftChat), else None."""
    leg = ix.legs.get(user_id)
    return leg if leg is not None and leg.state.active else None


def visibility_of(leg: Leg) -> Visibility:
    """A consultant's comings and goings are for agents only: the customer is unaware of them."""
    return Visibility.AGENTS if leg.role is Role.CONSULT else Visibility.ALL


class ConversationCore:
    def __init__(self, publish: Publish, routing: Routing, repository: InteractionRepository, outbox: Outbox, *,
                 clock_ms: Callable[[], int] | None = None, limits: InteractionLimits | None = None,
                 publish_many: PublishMany | None = None) -> None:
        """`publish_many` (the broker's batch publish) publishes the notifications of runs stored together
        in one call; without it each is `publish`ed in turn."""
        self.publications = Publications(publish_many or one_by_one(publish))
        self.limits = limits or InteractionLimits()
        self.routing = routing
        self.repository = repository
        self.outbox = outbox
        self.now = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = asyncio.Lock()
        self._holders: list[Callable[[str], bool]] = []
        routing.attach(self, self._dispatch_waiting)

    async def run(self, change: Callable[[], T]) -> T:
        """One change at a time: apply it, let routing offer what became offerable, store, publish in order.
        `change` validates before it mutates, so a ContactCenterError leaves state as it was (and the outbox
        is reset by the next run)."""
        async with self._lock:
            self.outbox.clear()
            result = change()
            self.routing.dispatch()
            stored = await self.repository.persist()
            notices = self.outbox.take()
        # Published once stored: what a client hears of is stored. The next run applies meanwhile.
        await self.publications.publish_after(stored, notices)
        return result

    # --- holders ------------------------------------------------------------------------------------------

    def add_holder(self, holds: Callable[[str], bool]) -> None:
        """`holds(interaction_id)` true keeps the customer's side open with no agent on it (a workbin)."""
        self._holders.append(holds)

    def is_held(self, interaction_id: str) -> bool:
        return any(holds(interaction_id) for holds in self._holders)

    # --- small pieces -------------------------------------------------------------------------------------

    def log(self, ix: Interaction, kind: MessageType, sender: Participant | None, visibility: Visibility, *,
            text: str | None = None, url: str | None = None) -> Message:
        assert sender is not None, "only participants of the chat session write to its log"
        self.repository.touch(ix)
        return ix.append(kind, sender, visibility, self.now(), text=text, url=url)

    def checked_text(self, text: str | None) -> str | None:
        """A text a client sends, refused (nothing changed) when longer than the limit."""
        if text is not None and len(text) > self.limits.max_text:
            raise InvalidParameter(f"parameter 'text' is {len(text)} characters long; at most "
                                   f"{self.limits.max_text} are accepted")
        return text

    def check_room(self, ix: Interaction) -> None:
        """Before a client adds a message (not a join or a farewell, which are bounded by the legs): refused,
        nothing changed, once the log holds the most an interaction may."""
        if len(ix.log) >= self.limits.max_messages:
            raise InvalidState(f"{ix.media.resource_key} {ix.id} holds {len(ix.log)} messages, the most one may "
                               "hold: complete it and start another")

    def check_user_data(self, data: dict[str, Any]) -> None:
        """What an interaction's userData would become: refused (nothing changed) past the limit, or if it
        cannot be encoded (nested deeper than orjson writes, though a body that deep still parses)."""
        try:
            size = len(orjson.dumps(data))
        except TypeError as exc:
            raise InvalidParameter(f"userData cannot be stored as JSON ({exc})") from None
        if size > self.limits.max_user_data:
            raise InvalidParameter(f"userData would take {size} bytes as JSON; an interaction keeps at most "
                                   f"{self.limits.max_user_data}")

    def known_queue(self, name: str) -> str:
        if not self.routing.has_queue(name):
            raise NotFound(f"queue {name} not found")
        return name

    # --- routing's Offerer -------------------------------------------------------------------------------

    def load(self, user_id: str, channel: str) -> int:
        """How many active legs the agent holds on a channel: only its own interactions are
        looked at, so routing costs O(agents x their interactions), not O(agents x all)."""
        return sum(1 for ix in self.repository.of_user(user_id) if ix.media.name == channel
                   and (leg := ix.legs.get(user_id)) is not None and leg.state.active)

    def members(self, interaction_id: str) -> set[str]:
        ix = self.repository.get(interaction_id)
        return {leg.user_id for leg in ix.active_legs()} if ix else set()

    def offer(self, request: OfferRequest, user_id: str) -> None:
        ix = self.repository.interactions[request.interaction_id]
        self.repository.touch(ix)  # routing offers interactions other than the one an operation is about
        timeout = self.routing.offer_timeout
        leg = Leg(user_id, LegState.INVITED, request.role, offer=request,
                  offer_expires_ms=self.now() + round(timeout * 1000), offer_timeout=timeout)
        ix.legs[user_id] = leg
        self.repository.index_leg(user_id, ix)
        self.outbox.notify(ix, leg, "StatusChange")
        self.routing.start_timer((ix.id, user_id), lambda: self._offer_timed_out(ix, leg))

    async def _dispatch_waiting(self) -> None:
        await self.run(lambda: None)

    async def _offer_timed_out(self, ix: Interaction, leg: Leg) -> None:
        def expire() -> None:
            if ix.legs.get(leg.user_id) is not leg or leg.state is not LegState.INVITED:
                return  # answered in the meantime
            self.repository.touch(ix)
            leg.state = LegState.REVOKED
            self.outbox.notify(ix, leg, "StatusChange")
            self.offer_failed(ix, leg, "did not answer in time")

        await self.run(expire)

    # --- offers and what becomes of them -------------------------------------------------------------------

    def route(self, ix: Interaction, request: OfferRequest, kind: str, target: str) -> None:
        """Offer to a user now (they must be Ready on the channel) or wait in a queue."""
        if kind == "queue":
            request.queue = target
            self.routing.enqueue(request)
            return
        request.target = target
        if self.routing.is_ready(target, ix.media.name):
            self.routing.mark_offered(target, ix.media.name)
            self.offer(request, target)
        else:
            self.error(ix, request, f"user {target} cannot be reached: not Ready for {ix.media.name}")

    def offer_failed(self, ix: Interaction, leg: Leg, why: str, *, declined: bool = True) -> None:
        """An offer was rejected or timed out: the next agent from the queue, or tell the requester.
        `declined` False: the agent did not answer because the server stopped (a restart, a failover), so
        the routed request may come back to them."""
        request: OfferRequest | None = leg.offer
        leg.offer = None
        if request is None:
            return
        if request.target is None:
            if declined:
                request.declined.add(leg.user_id)
            self.routing.enqueue(request)
        elif member(ix, request.requester or "") is not None:
            self.error(ix, request, f"user {leg.user_id} {why}")
        elif request.role is Role.OWNER and not ix.ended:
            # The transferrer is gone already: the customer must not be left with nobody.
            self.routing.enqueue(OfferRequest(ix.id, ix.media.name, Role.OWNER, queue=ix.queue,
                                              declined={leg.user_id} if declined else set()))
        self.end_if_unheld(ix)

    def reroute_after_restart(self, pending: list[tuple[Interaction, Leg]]) -> None:
        """The offers that were in flight when the previous server stopped (`InteractionRepository.restore`).
        Agents' readiness is not part of the stored state: after a restart every agent is NotReady until their
        desktop logs in and goes Ready again, as after a desktop restart (in a cluster, AgentApi restores it
        from the same store, so agents are Ready again at once). So a pending offer is treated like one that
        timed out, except that it does not count as declined by its agent: a routed request goes back to its
        queue (offered when agents are Ready again; in a cluster, whose readiness is kept, at once), an owner
        offer nobody else holds (a workbin pull, a transfer whose transferrer is gone) goes to the
        interaction's queue, a failed Invite/Consult leaves the requester as they were. Chatting and LeftChat
        legs come back as they were."""
        for ix, leg in pending:
            leg.state = LegState.REVOKED
            self.offer_failed(ix, leg, "was offered it when the server restarted", declined=False)
            self.repository.touch(ix)
        self.outbox.clear()  # nobody is connected yet to be told; the views show the outcome
        # The re-routed offers stay dirty: the first run writes them (the app runs one at start-up). Until
        # then the store holds what a restart would re-route the same way again.

    def error(self, ix: Interaction, request: OfferRequest, message: str) -> None:
        requester = member(ix, request.requester or "")
        if requester is None:
            return
        data = self.outbox.state_data(ix, requester, "Error", ref=request.reference_id)
        data["errorMessage"] = message
        self.outbox.queue_state(ix, requester, data)

    def finish_requester(self, ix: Interaction, request: OfferRequest) -> None:
        requester = member(ix, request.requester or "")
        if requester is not None:
            self.leave(ix, requester, LegState.COMPLETED, request.reference_id)

    # --- legs joining and leaving, and the end -------------------------------------------------------------

    def promote(self, ix: Interaction, leg: Leg, role: Role) -> None:
        """A consultant joins the conference (or takes the transfer): now the customer sees them."""
        leg.role = role
        joined = self.log(ix, MessageType.PARTICIPANT_JOINED, leg.participant, Visibility.ALL)
        for other in ix.chatting():
            self.outbox.notify(ix, other, "ParticipantsUpdated")
            self.outbox.messages(ix, other.user_id, [joined.as_dict()])

    def leave(self, ix: Interaction, leg: Leg, state: LegState, ref: int | None) -> None:
        """`leg` leaves the chat session (if in it) and ends in `state`; the others are told."""
        was_chatting = leg.state is LegState.CHATTING
        leg.state = state
        self.outbox.notify(ix, leg, "StatusChange", ref=ref)
        if was_chatting and leg.participant is not None:
            left = self.log(ix, MessageType.PARTICIPANT_LEFT, leg.participant, visibility_of(leg))
            self.outbox.tell_others(ix, leg, left)

    def end_if_unheld(self, ix: Interaction) -> None:
        """End the customer's side when no agent holds the interaction and none is on the way."""
        if ix.ended:
            return
        holding = any((leg.state in (LegState.CHATTING, LegState.LEFT_CHAT) and leg.role is not Role.CONSULT)
                      or (leg.state is LegState.INVITED and leg.role is Role.OWNER) for leg in ix.legs.values())
        queued = any(r.interaction_id == ix.id and r.role is Role.OWNER for r in self.routing.waiting())
        if not holding and not queued and not self.is_held(ix.id):
            self.end(ix)

    def end(self, ix: Interaction) -> None:
        self.repository.touch(ix)
        ix.ended = True
        self.routing.withdraw(ix.id)
        for leg in list(ix.legs.values()):
            if leg.state is LegState.INVITED:
                self.routing.cancel_timer((ix.id, leg.user_id))
                leg.state, leg.offer = LegState.REVOKED, None
                self.outbox.notify(ix, leg, "StatusChange")
            elif leg.state is LegState.CHATTING and leg.role is Role.CONSULT:
                self.leave(ix, leg, LegState.COMPLETED, None)
