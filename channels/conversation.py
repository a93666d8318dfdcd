"""The chat/SMS conversation engine: every agent operation of issue 3 and the customer-facing side.

Each operation runs in three steps under one lock, so that a failed request never half-applies and two
requests never interleave their notifications:

1. find the caller's leg (unknown interaction, other media, or no leg of the caller -> 6, the same message
   either way so nobody learns of others' interactions) and check the leg's capabilities (-> 2);
2. validate the parameters (missing -> 1, wrong type or malformed -> 10, unknown user or queue -> 6);
   each `_op_*` method does only this and returns the change to apply;
3. take a referenceId, apply the change (state and notifications to an outbox), let routing offer
   whatever became offerable, then publish the outbox in order.

Notifications go to agents through `publish(user_id, topic, data)` (the broker's `publish_to_user`).
`referenceId` appears only on notifications that the caller's operation caused for the caller (and on an
`Error` telling a requester that their Invite/Consult/Transfer failed, as in seed 000).

Persistence (given a `DocumentStore`): step 3 also writes, in ONE `store.apply` between applying the change
and publishing the outbox, every interaction the run touched (with the routing requests that wait for it or
that its Invited legs answer), changed saveLAR contacts, the referenceId counter and whatever other modules
staged (workbins). The write is awaited (the store's writer thread or task does the I/O; the loop serves on)
and the outbox is published only once it is stored. So whatever a client was told is on disk, and a crash
loses at most an operation nobody heard of. Interactions that are over are forgotten by `prune`, in memory
and in the store in the same run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from .envelope import GwsError, Status, check_operation, param
from .model import (
    MESSAGE_LOG_TYPE,
    Interaction,
    Leg,
    LegState,
    MediaKind,
    Message,
    MessageType,
    Participant,
    Role,
    Visibility,
    new_interaction_id,
    new_participant_id,
    permits,
)
from .routing import OfferRequest, Routing
from .store import Change, Document, DocumentStore

log = logging.getLogger("channels.conversation")

Publish = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
Apply = Callable[[int], None]
# (interaction, the agent's leg, the state notification queued for that agent) -> (topic, data) to publish
# to the same agent right after it, or None.
StateListener = Callable[[Interaction, Leg, dict[str, Any]], tuple[str, dict[str, Any]] | None]
T = TypeVar("T")

DEFAULT_DISPOSITION_KEY = "DispositionCode"

OPERATIONS = ("Accept", "Reject", "Invite", "Consult", "Transfer", "Leave", "Complete", "SendMessage",
              "SendStartTypingNotification", "SendStopTypingNotification", "SendUrl", "SendCustomNotice",
              "SendToAgents", "SendStartTypingToAgentsNotification", "SendStopTypingToAgentsNotification",
              "SendCustomNoticeToAgents", "SetInFocus", "SetDisposition", "AttachUserData", "UpdateUserData",
              "DeleteUserData", "RemoveParticipantFromConference")

# Operations in no documented capabilities list are allowed to whoever holds the capability they are a
# variant of, rather than adding names to the seed lists: RemoveParticipantFromConference to whoever may
# shape the conference (Invite); a URL or a custom notice for everyone to whoever may write to the
# customer (SendMessage: not a consultant); a custom notice for agents to whoever may write to the other
# agents (SendToAgents: in a conference or a consultation, as the GWS page says).
_CAPABILITY_OF = {"RemoveParticipantFromConference": "Invite", "SendUrl": "SendMessage",
                  "SendCustomNotice": "SendMessage", "SendCustomNoticeToAgents": "SendToAgents"}
MAX_URL_LENGTH = 2048
# Where an operation's target may be given. `userUri` is an alias of `targetUri`: the SMS Invite page's own
# sample request names the invitee with it, while its parameter table says targetUri.
TARGET_PARAMS = ("targetUri", "userUri", "targetPath")

# A user is named by its user resource or by its contact entry: GWS's contact directory lists every user as
# a contact of type User, under the user's id (the SMS Invite sample names its invitee by `/api/v2/contacts/{id}`).
_USER_PATH = re.compile(r"(?:.*/api/v2)?/(?:users|contacts)/([^/?#]+)/?")
_QUEUE_PATH = re.compile(r"(?:.*/api/v2)?/queues/([^/?#]+)/?")


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


class UserLookup(Protocol):
    def get(self, user_id: str) -> Any:
        """The user (anything with optional first_name/last_name) or None."""


class Conversations:
    """All chat and SMS interactions of one server, and the operations on them."""

    def __init__(self, publish: Publish, routing: Routing, users: UserLookup, *,
                 base_url: str = "http://localhost:8080", reference_ids: Iterator[int] | None = None,
                 clock_ms: Callable[[], int] | None = None, store: DocumentStore | None = None) -> None:
        """`reference_ids` may be shared with other modules so referenceIds are unique per server; only a
        `ReferenceIds` is persisted. `store` None keeps nothing; otherwise the state in it is loaded now."""
        self._publish = publish
        self.routing = routing
        self.users = users
        self.base_url = base_url
        self._refs = reference_ids or ReferenceIds()
        self.store = store
        # What the current run changed, written by _persist (kept if a write fails, so the next run retries).
        self._dirty: dict[str, Interaction] = {}
        self._dirty_contacts: set[str] = set()
        self._staged: dict[tuple[str, str], Callable[[], Document | None]] = {}
        self._saved_ref: int | None = None
        self._now = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._interactions: dict[str, Interaction] = {}
        self._by_user: dict[str, set[str]] = {}  # user -> interactions where it may hold an active leg
        self.last_agent: dict[str, str] = {}  # contact id -> user id (saveLAR)
        self._outbox: list[tuple[str, str, dict[str, Any]]] = []
        self._lock = asyncio.Lock()
        self._listeners: list[StateListener] = []
        self._holders: list[Callable[[str], bool]] = []
        self._over_since: dict[str, float] = {}  # interaction id -> monotonic time it was first seen over
        self.pruned = 0  # interactions forgotten by `prune`, for logs and tests
        self._ops: dict[str, Callable[[Interaction, Leg, dict[str, Any]], Apply]] = {
            name: getattr(self, "_op_" + name) for name in OPERATIONS}
        routing.attach(self, self._dispatch_waiting)
        if store is not None:
            self._restore(store)

    async def close(self) -> None:
        await self.routing.close()

    # --- forgetting what is over --------------------------------------------------------------------------

    def _over(self, ix: Interaction, waiting: set[str]) -> bool:
        """Over for everyone: the customer's side ended, no agent holds a leg (wrap-up included), no
        workbin holds it and no routing request waits for it. Nothing can change it any more."""
        return (ix.ended and not ix.active_legs() and ix.id not in waiting
                and not any(holds(ix.id) for holds in self._holders))

    async def prune(self, retention: float, now: float | None = None) -> int:
        """Forget the interactions that have been over for `retention` seconds (by the monotonic clock,
        counted from when a sweep first saw them over: after a restart, from the first sweep): out of
        memory and out of the store, in one run. Their transcripts and GETs answer 'not found' from then
        on. Returns how many were forgotten."""
        now = time.monotonic() if now is None else now

        def forget() -> int:
            waiting = {request.interaction_id for request in self.routing.waiting()}
            gone = []
            for ix in self._interactions.values():
                if not self._over(ix, waiting):
                    self._over_since.pop(ix.id, None)  # e.g. back in a workbin: counts again when over
                elif now - self._over_since.setdefault(ix.id, now) >= retention:
                    gone.append(ix)
            for ix in gone:
                del self._interactions[ix.id]
                self._over_since.pop(ix.id, None)
                self._dirty.pop(ix.id, None)
                for user_id in ix.legs:
                    ids = self._by_user.get(user_id)
                    if ids is not None:
                        ids.discard(ix.id)
                        if not ids:
                            del self._by_user[user_id]
                self.stage("interaction", ix.id, lambda: None)
            return len(gone)

        count = await self._run(forget)
        self.pruned += count
        return count

    async def prune_forever(self, retention: float, period: float) -> None:
        """`prune` every `period` seconds until cancelled; a failed sweep (the store unavailable) is
        logged and retried at the next one, its deletions still staged."""
        while True:
            await asyncio.sleep(period)
            try:
                count = await self.prune(retention)
            except Exception as exc:  # housekeeping must outlive a store outage (or a leader change)
                log.warning("contact center: forgetting ended interactions failed (%s); retrying in %g s",
                            exc, period)
                continue
            if count:
                log.info("contact center: forgot %d interaction(s) over for more than %g s (%d kept)",
                         count, retention, len(self._interactions))

    # --- hooks for other APIs over the same interactions (interactions.py, workbins.py) --------------------

    def add_listener(self, listener: StateListener) -> None:
        """`listener` sees every state notification (StatusChange, ParticipantsUpdated, PropertiesUpdated,
        Error) queued for an agent; what it returns is queued for the same agent right behind it, so a
        mirror (the generic /v2/me/interactions topic) keeps the order and the referenceId of the original."""
        self._listeners.append(listener)

    def add_holder(self, holds: Callable[[str], bool]) -> None:
        """`holds(interaction_id)` true keeps the customer's side open with no agent on it (a workbin)."""
        self._holders.append(holds)

    def stage(self, kind: str, key: str, render: Callable[[], Document | None]) -> None:
        """Write `render()` (None deletes) as (kind, key) with the next run's changes, in the same transaction.
        Rendered at write time, so staging the same document twice writes its latest state once."""
        self._staged[(kind, key)] = render

    async def save(self) -> None:
        """Write what was staged (and the referenceId counter) now, for a change that is not an engine run."""
        if self.store is None:
            self._staged.clear()
            return
        await self._run(lambda: None)

    def all_interactions(self) -> list[Interaction]:
        return list(self._interactions.values())

    async def offer_to(self, user_id: str, interaction_id: str) -> None:
        """Offer the interaction straight to `user_id` (Invited), whatever their readiness: an agent takes it
        back out of a workbin. Declined or unanswered, it goes to its queue like any failed offer."""
        def run() -> None:
            ix = self._interactions.get(interaction_id)
            if ix is None:
                raise GwsError(Status.NOT_FOUND, f"interaction {interaction_id} not found")
            if self._member(ix, user_id) is not None:
                raise GwsError(Status.IN_USE, f"user {user_id} is already in {ix.media.resource_key} {ix.id}")
            self.offer(OfferRequest(ix.id, ix.media.name, Role.OWNER, target=user_id), user_id)

        await self._run(run)

    # --- queries -------------------------------------------------------------------------------------------

    def interaction(self, interaction_id: str) -> Interaction | None:
        return self._interactions.get(interaction_id)

    def leg_of(self, user_id: str, media: MediaKind, interaction_id: str) -> tuple[Interaction, Leg]:
        ix = self._interactions.get(interaction_id)
        leg = ix.legs.get(user_id) if ix is not None and ix.media == media else None
        if ix is None or leg is None:
            raise GwsError(Status.NOT_FOUND, f"{media.resource_key} {interaction_id} not found")
        return ix, leg

    def resource(self, user_id: str, media: MediaKind, interaction_id: str) -> dict[str, Any]:
        ix, leg = self.leg_of(user_id, media, interaction_id)
        return ix.view(leg, self.base_url)

    def active(self, user_id: str, media: MediaKind) -> list[dict[str, Any]]:
        """Views of the agent's interactions of this media that are not finished for them."""
        mine = sorted(self._interactions_of(user_id), key=lambda ix: (ix.created_ms, ix.id))  # creation order
        return [ix.view(ix.legs[user_id], self.base_url) for ix in mine if ix.media == media]

    def transcript(self, media: MediaKind, interaction_id: str) -> list[dict[str, Any]]:
        return self._customer_side(media, interaction_id, allow_ended=True).transcript()

    # --- routing's Offerer -------------------------------------------------------------------------------

    def load(self, user_id: str, channel: str) -> int:
        """How many active legs the agent holds on a channel: only its own interactions are
        looked at, so routing costs O(agents x their interactions), not O(agents x all)."""
        return sum(1 for ix in self._interactions_of(user_id) if ix.media.name == channel
                   and (leg := ix.legs.get(user_id)) is not None and leg.state.active)

    def _interactions_of(self, user_id: str) -> list[Interaction]:
        """The interactions the agent has a leg in that are not over for it; ids whose legs ended
        are dropped from the index as they are found."""
        ids = self._by_user.get(user_id)
        if not ids:
            return []
        found = []
        for interaction_id in list(ids):
            ix = self._interactions.get(interaction_id)
            leg = ix.legs.get(user_id) if ix is not None else None
            if leg is None or not leg.state.active:
                ids.discard(interaction_id)
                continue
            found.append(ix)
        return found

    def members(self, interaction_id: str) -> set[str]:
        ix = self._interactions.get(interaction_id)
        return {leg.user_id for leg in ix.active_legs()} if ix else set()

    def offer(self, request: OfferRequest, user_id: str) -> None:
        ix = self._interactions[request.interaction_id]
        self._touch(ix)  # routing offers interactions other than the one an operation is about
        timeout = self.routing.offer_timeout
        leg = Leg(user_id, LegState.INVITED, request.role, offer=request,
                  offer_expires_ms=self._now() + round(timeout * 1000), offer_timeout=timeout)
        ix.legs[user_id] = leg
        self._by_user.setdefault(user_id, set()).add(ix.id)
        self._notify(ix, leg, "StatusChange")
        self.routing.start_timer((ix.id, user_id), lambda: self._offer_timed_out(ix, leg))

    async def _dispatch_waiting(self) -> None:
        await self._run(lambda: None)

    async def _offer_timed_out(self, ix: Interaction, leg: Leg) -> None:
        def expire() -> None:
            if ix.legs.get(leg.user_id) is not leg or leg.state is not LegState.INVITED:
                return  # answered in the meantime
            self._touch(ix)
            leg.state = LegState.REVOKED
            self._notify(ix, leg, "StatusChange")
            self._offer_failed(ix, leg, "did not answer in time")

        await self._run(expire)

    async def _run(self, change: Callable[[], T]) -> T:
        """One change at a time: apply it, let routing offer what became offerable, publish in order.
        `change` validates before it mutates, so a GwsError leaves state as it was (and the outbox is
        reset by the next run)."""
        async with self._lock:
            self._outbox = []
            result = change()
            self.routing.dispatch()
            await self._persist()  # before anyone is told: what a client hears of is stored
            await self._flush()
            return result

    # --- agent operations --------------------------------------------------------------------------------

    async def operate(self, user_id: str, media: MediaKind, interaction_id: str, operation: str,
                      params: dict[str, Any]) -> int:
        """Run one operation for `user_id`; returns its referenceId or raises GwsError with nothing changed."""
        check_operation(operation, OPERATIONS)

        def run() -> int:
            ix, leg = self.leg_of(user_id, media, interaction_id)
            self._touch(ix)
            if not permits(ix.capabilities_of(leg), _CAPABILITY_OF.get(operation, operation)):
                raise GwsError(Status.INVALID_STATE,
                               f"operation {operation} is not valid in state {leg.state.value}")
            apply = self._ops[operation](ix, leg, params)
            reference_id = next(self._refs)
            apply(reference_id)
            return reference_id

        return await self._run(run)

    def _op_Accept(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        nickname = param(params, "nickname", str, required=False) or self._default_nickname(leg.user_id)
        save_lar = param(params, "saveLAR", bool, required=False, default=False)

        def apply(ref: int) -> None:
            self.routing.cancel_timer((ix.id, leg.user_id))
            request: OfferRequest | None = leg.offer
            leg.offer = None
            leg.state = LegState.CHATTING
            leg.participant = Participant(nickname, "Agent", new_participant_id())
            # Seed 001: the StatusChange comes before the agent has joined, so its participant list is empty.
            self._notify(ix, leg, "StatusChange", ref=ref, participants=[])
            joined = self._log(ix, MessageType.PARTICIPANT_JOINED, leg.participant, _visibility(leg))
            self._notify(ix, leg, "ParticipantsUpdated")
            self._messages(ix, leg.user_id, ix.messages_for_agents(upto=joined.index))
            self._tell_others(ix, leg, joined)
            if save_lar:
                self._save_lar(ix, leg.user_id)
            if request is not None and request.role is Role.OWNER and request.requester:
                # A transfer to a user is done when the target accepts: the transferrer goes.
                self._finish_requester(ix, request)

        return apply

    def _op_Reject(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        def apply(ref: int) -> None:
            self.routing.cancel_timer((ix.id, leg.user_id))
            leg.state = LegState.COMPLETED
            self._notify(ix, leg, "StatusChange", ref=ref)
            self._offer_failed(ix, leg, "rejected")

        return apply

    def _op_Invite(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._invite(ix, leg, params, Role.CONFERENCE)

    def _op_Consult(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._invite(ix, leg, params, Role.CONSULT)

    def _invite(self, ix: Interaction, leg: Leg, params: dict[str, Any], role: Role) -> Apply:
        kind, target = self._target(params, leg)
        consultant = self._member(ix, target) if kind == "user" else None
        promote = (role is Role.CONFERENCE and consultant is not None and consultant.role is Role.CONSULT
                   and consultant.state is LegState.CHATTING)
        if kind == "user" and consultant is not None and not promote:
            raise GwsError(Status.IN_USE, f"user {target} is already in {ix.media.resource_key} {ix.id}")

        def apply(ref: int) -> None:
            if promote:
                self._promote(ix, consultant, Role.CONFERENCE)
                return
            request = OfferRequest(ix.id, ix.media.name, role, reference_id=ref, requester=leg.user_id)
            self._route(ix, request, kind, target)

        return apply

    def _op_Transfer(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        if ix.ended:
            raise GwsError(Status.INVALID_STATE, f"{ix.media.resource_key} {ix.id} has ended: Complete it instead")
        queue_name = param(params, "queueName", str, required=False)
        if queue_name is not None and not any(k in params for k in TARGET_PARAMS):
            kind, target = "queue", self._known_queue(queue_name)
        else:
            kind, target = self._target(params, leg)
        text = param(params, "text", str, required=False)
        member = self._member(ix, target) if kind == "user" else None
        to_consultant = member is not None and member.role is Role.CONSULT and member.state is LegState.CHATTING
        if member is not None and not to_consultant:
            raise GwsError(Status.IN_USE, f"user {target} is already in {ix.media.resource_key} {ix.id}")

        def apply(ref: int) -> None:
            self._farewell(ix, leg, text)
            if to_consultant:
                self._promote(ix, member, Role.OWNER)
                self._leave(ix, leg, LegState.COMPLETED, ref)
            elif kind == "queue":
                # Into a queue: the caller is done at once; it must not come straight back to them.
                request = OfferRequest(ix.id, ix.media.name, Role.OWNER, queue=target, declined={leg.user_id})
                self.routing.enqueue(request)
                self._leave(ix, leg, LegState.COMPLETED, ref)
            else:
                request = OfferRequest(ix.id, ix.media.name, Role.OWNER, reference_id=ref, requester=leg.user_id)
                self._route(ix, request, kind, target)
            self._end_if_unheld(ix)

        return apply

    def _op_Leave(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        text = param(params, "text", str, required=False)

        def apply(ref: int) -> None:
            self._farewell(ix, leg, text)
            others = [o for o in ix.visible_agents_chatting() if o is not leg]
            # Outside a conference the owner keeps the interaction for wrap-up (LeftChat); a consultant,
            # a conference member, or an agent already in LeftChat is simply done.
            stays = leg.state is LegState.CHATTING and leg.role is not Role.CONSULT and not others
            self._leave(ix, leg, LegState.LEFT_CHAT if stays else LegState.COMPLETED, ref)
            self._end_if_unheld(ix)

        return apply

    def _op_Complete(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        queue_name = param(params, "queueName", str, required=False)
        if queue_name is not None:
            self._known_queue(queue_name)
            if ix.ended:
                raise GwsError(Status.INVALID_STATE, f"{ix.media.resource_key} {ix.id} has ended: "
                                                     "it cannot be placed in a queue")
        save_lar = param(params, "saveLAR", bool, required=False, default=False)
        text = param(params, "text", str, required=False)

        def apply(ref: int) -> None:
            self._farewell(ix, leg, text)
            if queue_name is not None:
                self.routing.enqueue(OfferRequest(ix.id, ix.media.name, Role.OWNER, queue=queue_name,
                                                  declined={leg.user_id}))
            if save_lar:
                self._save_lar(ix, leg.user_id)
            self._leave(ix, leg, LegState.COMPLETED, ref)
            self._end_if_unheld(ix)

        return apply

    def _op_SendMessage(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.TEXT, Visibility.ALL, param(params, "text", str))

    def _op_SendStartTypingNotification(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.TYPING_STARTED, Visibility.ALL)

    def _op_SendStopTypingNotification(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.TYPING_STOPPED, Visibility.ALL)

    def _op_SendUrl(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.PUSH_URL, Visibility.ALL, url=_pushable_url(param(params, "url", str)))

    def _op_SendCustomNotice(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.CUSTOM_NOTICE, Visibility.ALL, param(params, "noticeText", str))

    def _op_SendCustomNoticeToAgents(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.CUSTOM_NOTICE, Visibility.AGENTS, param(params, "noticeText", str))

    def _op_SendToAgents(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.TEXT, Visibility.AGENTS, param(params, "text", str))

    def _op_SendStartTypingToAgentsNotification(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.TYPING_STARTED, Visibility.AGENTS)

    def _op_SendStopTypingToAgentsNotification(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.TYPING_STOPPED, Visibility.AGENTS)

    def _op_SetInFocus(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        # Focus changes nothing in the resource; the caller still gets a notification carrying its
        # referenceId so a client that waits for its referenceId is not left hanging.
        def apply(ref: int) -> None:
            self._notify(ix, leg, "PropertiesUpdated", ref=ref)

        return apply

    def _op_SetDisposition(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        disposition = param(params, "disposition", str)
        key = param(params, "dispositionKey", str, required=False, default=DEFAULT_DISPOSITION_KEY)
        if not key:
            raise GwsError(Status.VALIDATION_ERROR, "parameter 'dispositionKey' must not be empty")
        return self._change_data(ix, leg, lambda data: data.__setitem__(key, disposition))

    def _op_AttachUserData(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        user_data = param(params, "userData", dict)
        return self._change_data(ix, leg, lambda data: data.update(user_data))

    def _op_UpdateUserData(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        user_data = param(params, "userData", dict)
        return self._change_data(ix, leg, lambda data: data.update(user_data))

    def _op_DeleteUserData(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        keys = param(params, "keys", list)
        if not all(isinstance(k, str) for k in keys):
            raise GwsError(Status.VALIDATION_ERROR, "parameter 'keys' must be an array of strings")

        def delete(data: dict[str, Any]) -> None:
            for key in keys:
                data.pop(key, None)

        return self._change_data(ix, leg, delete)

    def _op_RemoveParticipantFromConference(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        kind, target = self._target(params, leg)
        if kind != "user":
            raise GwsError(Status.VALIDATION_ERROR, "targetUri must name a user, not a queue")
        removed = self._member(ix, target)
        if removed is None or removed.state is not LegState.CHATTING:
            raise GwsError(Status.NOT_FOUND, f"user {target} is not chatting in {ix.media.resource_key} {ix.id}")

        def apply(ref: int) -> None:
            notice = self._log(ix, MessageType.NOTICE, leg.participant, Visibility.AGENTS,
                               text=f"REMOVE_PARTICIPANT_FROM_CONFERENCE{target}")
            self._publish_message(ix, notice, caller=leg.user_id, ref=ref)
            self._leave(ix, removed, LegState.COMPLETED, None)
            self._end_if_unheld(ix)

        return apply

    # --- customer side (media.py) ---------------------------------------------------------------------

    async def create_inbound(self, media: MediaKind, nickname: str, *, text: str | None = None,
                             queue: str = "default", contact_id: str | None = None) -> Interaction:
        """A customer starts a chat/SMS: it joins the log and waits in `queue` for a Ready agent."""
        self._known_queue(queue)

        def create() -> Interaction:
            now = self._now()
            interaction_id = new_interaction_id()
            while interaction_id in self._interactions:
                interaction_id = new_interaction_id()
            customer = Participant(nickname, "Customer", new_participant_id())
            ix = Interaction(interaction_id, media, customer, queue, contact_id or nickname, now)
            self._interactions[ix.id] = ix
            self._touch(ix)
            ix.append(MessageType.PARTICIPANT_JOINED, customer, Visibility.ALL, now)
            if text:
                ix.append(MessageType.TEXT, customer, Visibility.ALL, now, text=text)
            self.routing.enqueue(OfferRequest(ix.id, media.name, Role.OWNER, queue=queue,
                                              preferred=self.last_agent.get(ix.contact_id)))
            return ix

        return await self._run(create)

    async def customer_message(self, media: MediaKind, interaction_id: str, text: str) -> None:
        await self._customer_says(media, interaction_id, MessageType.TEXT, text)

    async def customer_typing(self, media: MediaKind, interaction_id: str, started: bool) -> None:
        await self._customer_says(media, interaction_id,
                                  MessageType.TYPING_STARTED if started else MessageType.TYPING_STOPPED)

    async def customer_left(self, media: MediaKind, interaction_id: str) -> None:
        """The customer ended the chat: agents chatting go to LeftChat for wrap-up, offers are withdrawn."""
        def leave() -> None:
            ix = self._customer_side(media, interaction_id)
            self._touch(ix)
            ix.customer_present = False
            left = self._log(ix, MessageType.PARTICIPANT_LEFT, ix.customer, Visibility.ALL)
            self._publish_message(ix, left)
            for leg in ix.chatting():
                if leg.role is Role.CONSULT:
                    self._leave(ix, leg, LegState.COMPLETED, None)
                else:
                    leg.state = LegState.LEFT_CHAT
                    self._notify(ix, leg, "StatusChange")
            self._end(ix)

        await self._run(leave)

    async def _customer_says(self, media: MediaKind, interaction_id: str, kind: MessageType,
                             text: str | None = None) -> None:
        def say() -> None:
            ix = self._customer_side(media, interaction_id)
            self._touch(ix)
            self._publish_message(ix, self._log(ix, kind, ix.customer, Visibility.ALL, text=text))

        await self._run(say)

    def _customer_side(self, media: MediaKind, interaction_id: str, *, allow_ended: bool = False) -> Interaction:
        ix = self._interactions.get(interaction_id)
        if ix is None or ix.media != media:
            raise GwsError(Status.NOT_FOUND, f"{media.resource_key} {interaction_id} not found")
        if not allow_ended and (ix.ended or not ix.customer_present):
            raise GwsError(Status.INVALID_STATE, f"{media.resource_key} {interaction_id} has ended")
        return ix

    # --- validation helpers ---------------------------------------------------------------------------------

    def _target(self, params: dict[str, Any], leg: Leg) -> tuple[str, str]:
        """("user", id) or ("queue", name) from targetUri (or its alias userUri) / targetPath; unknown ones
        are 6. A user is `/users/{id}` or `/contacts/{id}`, a queue `/queues/{name}`, each path alone or at the
        end of a URI."""
        uri = param(params, "targetUri", str, required=False)
        alias = param(params, "userUri", str, required=False)
        path = param(params, "targetPath", str, required=False)
        if alias is not None and uri is not None and alias != uri:
            raise GwsError(Status.VALIDATION_ERROR, "userUri is another name for targetUri: give one of them")
        if uri is None and alias is None and path is None:
            raise GwsError(Status.MISSING_PARAMETER, "missing parameter 'targetUri' (or 'userUri' or 'targetPath')")
        name = "targetUri" if uri is not None else "userUri" if alias is not None else "targetPath"
        where = uri if uri is not None else alias if alias is not None else path
        if (found := _USER_PATH.fullmatch(where)) is not None:
            user_id = found.group(1)
            if self.users.get(user_id) is None:
                raise GwsError(Status.NOT_FOUND, f"user {user_id} not found")
            if user_id == leg.user_id:
                raise GwsError(Status.VALIDATION_ERROR, f"{name} names yourself")
            return "user", user_id
        if (found := _QUEUE_PATH.fullmatch(where)) is not None:
            return "queue", self._known_queue(found.group(1))
        raise GwsError(Status.VALIDATION_ERROR,
                       f"{name} must name a user (/users/{{id}} or /contacts/{{id}}) or a queue (/queues/{{name}}), "
                       f"got {where!r}")

    def _known_queue(self, name: str) -> str:
        if not self.routing.has_queue(name):
            raise GwsError(Status.NOT_FOUND, f"queue {name} not found")
        return name

    @staticmethod
    def _member(ix: Interaction, user_id: str) -> Leg | None:
        leg = ix.legs.get(user_id)
        return leg if leg is not None and leg.state.active else None

    def _default_nickname(self, user_id: str) -> str:
        user = self.users.get(user_id)
        first, last = getattr(user, "first_name", ""), getattr(user, "last_name", "")
        return f"{first} {last[:1]}".strip() if first else user_id

    # --- changes ---------------------------------------------------------------------------------------------

    def _route(self, ix: Interaction, request: OfferRequest, kind: str, target: str) -> None:
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
            self._error(ix, request, f"user {target} cannot be reached: not Ready for {ix.media.name}")

    def _offer_failed(self, ix: Interaction, leg: Leg, why: str, *, declined: bool = True) -> None:
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
        elif self._member(ix, request.requester or "") is not None:
            self._error(ix, request, f"user {leg.user_id} {why}")
        elif request.role is Role.OWNER and not ix.ended:
            # The transferrer is gone already: the customer must not be left with nobody.
            self.routing.enqueue(OfferRequest(ix.id, ix.media.name, Role.OWNER, queue=ix.queue,
                                              declined={leg.user_id} if declined else set()))
        self._end_if_unheld(ix)

    def _error(self, ix: Interaction, request: OfferRequest, message: str) -> None:
        requester = self._member(ix, request.requester or "")
        if requester is None:
            return
        data = self._state_data(ix, requester, "Error", ref=request.reference_id)
        data["errorMessage"] = message
        self._queue_state(ix, requester, data)

    def _finish_requester(self, ix: Interaction, request: OfferRequest) -> None:
        requester = self._member(ix, request.requester or "")
        if requester is not None:
            self._leave(ix, requester, LegState.COMPLETED, request.reference_id)

    def _promote(self, ix: Interaction, leg: Leg, role: Role) -> None:
        """A consultant joins the conference (or takes the transfer): now the customer sees them."""
        leg.role = role
        joined = self._log(ix, MessageType.PARTICIPANT_JOINED, leg.participant, Visibility.ALL)
        for other in ix.chatting():
            self._notify(ix, other, "ParticipantsUpdated")
            self._messages(ix, other.user_id, [joined.as_dict()])

    def _leave(self, ix: Interaction, leg: Leg, state: LegState, ref: int | None) -> None:
        """`leg` leaves the chat session (if in it) and ends in `state`; the others are told."""
        was_chatting = leg.state is LegState.CHATTING
        leg.state = state
        self._notify(ix, leg, "StatusChange", ref=ref)
        if was_chatting and leg.participant is not None:
            left = self._log(ix, MessageType.PARTICIPANT_LEFT, leg.participant, _visibility(leg))
            self._tell_others(ix, leg, left)

    def _end_if_unheld(self, ix: Interaction) -> None:
        """End the customer's side when no agent holds the interaction and none is on the way."""
        if ix.ended:
            return
        holding = any((leg.state in (LegState.CHATTING, LegState.LEFT_CHAT) and leg.role is not Role.CONSULT)
                      or (leg.state is LegState.INVITED and leg.role is Role.OWNER) for leg in ix.legs.values())
        queued = any(r.interaction_id == ix.id and r.role is Role.OWNER for r in self.routing.waiting())
        held = any(holds(ix.id) for holds in self._holders)
        if not holding and not queued and not held:
            self._end(ix)

    def _end(self, ix: Interaction) -> None:
        self._touch(ix)
        ix.ended = True
        self.routing.withdraw(ix.id)
        for leg in list(ix.legs.values()):
            if leg.state is LegState.INVITED:
                self.routing.cancel_timer((ix.id, leg.user_id))
                leg.state, leg.offer = LegState.REVOKED, None
                self._notify(ix, leg, "StatusChange")
            elif leg.state is LegState.CHATTING and leg.role is Role.CONSULT:
                self._leave(ix, leg, LegState.COMPLETED, None)

    def _farewell(self, ix: Interaction, leg: Leg, text: str | None) -> None:
        if text and leg.state is LegState.CHATTING and leg.participant is not None:
            self._publish_message(ix, self._log(ix, MessageType.TEXT, leg.participant, _visibility(leg), text=text))

    def _say(self, ix: Interaction, leg: Leg, kind: MessageType, visibility: Visibility,
             text: str | None = None, *, url: str | None = None) -> Apply:
        def apply(ref: int) -> None:
            message = self._log(ix, kind, leg.participant, visibility, text=text, url=url)
            self._publish_message(ix, message, caller=leg.user_id, ref=ref)

        return apply

    def _change_data(self, ix: Interaction, leg: Leg, change: Callable[[dict[str, Any]], None]) -> Apply:
        def apply(ref: int) -> None:
            change(ix.user_data)
            for other in ix.legs.values():
                if other.state in (LegState.CHATTING, LegState.LEFT_CHAT):
                    self._notify(ix, other, "PropertiesUpdated", ref=ref if other is leg else None,
                                 with_user_data=True)

        return apply

    # --- notifications -----------------------------------------------------------------------------------

    def _log(self, ix: Interaction, kind: MessageType, sender: Participant | None, visibility: Visibility, *,
             text: str | None = None, url: str | None = None) -> Message:
        assert sender is not None, "only participants of the chat session write to its log"
        self._touch(ix)
        return ix.append(kind, sender, visibility, self._now(), text=text, url=url)

    def _state_data(self, ix: Interaction, leg: Leg, notification_type: str, *, ref: int | None = None,
                    participants: list[dict[str, str]] | None = None,
                    with_user_data: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"messageType": ix.media.message_type, "notificationType": notification_type,
                                ix.media.resource_key: ix.view(leg, self.base_url, participants=participants,
                                                               with_user_data=with_user_data)}
        if ref is not None:
            data["referenceId"] = ref
        return data

    def _notify(self, ix: Interaction, leg: Leg, notification_type: str, **kwargs: Any) -> None:
        self._queue_state(ix, leg, self._state_data(ix, leg, notification_type, **kwargs))

    def _queue_state(self, ix: Interaction, leg: Leg, data: dict[str, Any]) -> None:
        self._touch(ix)  # every state notification reports a change of this interaction
        self._outbox.append((leg.user_id, ix.media.topic, data))
        for listener in self._listeners:
            mirrored = listener(ix, leg, data)
            if mirrored is not None:
                self._outbox.append((leg.user_id, *mirrored))

    def _messages(self, ix: Interaction, user_id: str, messages: list[dict[str, Any]],
                  ref: int | None = None) -> None:
        data: dict[str, Any] = {"messageType": MESSAGE_LOG_TYPE, "notificationType": "NewMessages",
                                "messages": messages, ix.media.uri_key: ix.media.uri(self.base_url, ix.id)}
        if ref is not None:
            data["referenceId"] = ref
        self._outbox.append((user_id, ix.media.topic, data))

    def _publish_message(self, ix: Interaction, message: Message, *, caller: str | None = None,
                         ref: int | None = None) -> None:
        """Every agent in the chat session sees the new message (agents see All and Agents messages)."""
        for leg in ix.chatting():
            self._messages(ix, leg.user_id, [message.as_dict()], ref if leg.user_id == caller else None)

    def _tell_others(self, ix: Interaction, leg: Leg, message: Message) -> None:
        """Seed 000: every other agent in the session gets ParticipantsUpdated, then the message."""
        for other in ix.chatting():
            if other is not leg:
                self._notify(ix, other, "ParticipantsUpdated")
                self._messages(ix, other.user_id, [message.as_dict()])

    # --- persistence -----------------------------------------------------------------------------------------

    def _touch(self, ix: Interaction) -> None:
        """`ix` changed in this run: write it before the run's notifications go out."""
        self._dirty[ix.id] = ix

    def _save_lar(self, ix: Interaction, user_id: str) -> None:
        self.last_agent[ix.contact_id] = user_id
        self._dirty_contacts.add(ix.contact_id)

    def _document(self, ix: Interaction) -> Document:
        """The interaction plus the routing requests about it: those waiting in queues, and those its
        Invited legs answer (an offer in flight is in no queue, yet must not be lost)."""
        offers = {user_id: leg.offer.to_document() for user_id, leg in ix.legs.items() if leg.offer is not None}
        waiting = [request.to_document() for request in self.routing.waiting_for(ix.id)]
        return {**ix.to_document(), "offers": offers, "waiting": waiting}

    async def _persist(self) -> None:
        """One write with everything this run changed, awaited. A failed write raises (the caller gets an
        error, nobody is notified) and keeps the changes pending, so the next run writes them."""
        last_ref = self._refs.last if isinstance(self._refs, ReferenceIds) else None
        dirty, contacts, staged = self._dirty, self._dirty_contacts, self._staged
        self._dirty, self._dirty_contacts, self._staged = {}, set(), {}
        if self.store is not None:
            try:
                changes: list[Change] = [("interaction", ix.id, self._document(ix)) for ix in dirty.values()]
                changes += [("contact", contact, {"lastAgent": self.last_agent[contact]}) for contact in contacts]
                changes += [(kind, key, render()) for (kind, key), render in staged.items()]
                if last_ref is not None and last_ref != self._saved_ref:
                    changes.append(("counter", "referenceId", {"last": last_ref}))
                await self.store.apply(changes)
            except BaseException:
                # Still due (with whatever was staged while the write was in flight, which is newer).
                self._dirty = {**dirty, **self._dirty}
                self._dirty_contacts |= contacts
                self._staged = {**staged, **self._staged}
                raise
        self._saved_ref = last_ref

    def _restore(self, store: DocumentStore) -> None:
        """Load the state a previous server wrote. Agents' readiness is not part of it: after a restart every
        agent is NotReady until their desktop logs in and goes Ready again, as after a desktop restart (in a
        cluster, AgentApi restores it from the same store, so agents are Ready again at once). So an
        offer that was pending at the crash is treated like one that timed out, except that it does not count as
        declined by its agent: a routed request goes back to its queue (offered when agents are Ready again; in
        a cluster, whose readiness is kept, at once), an owner offer nobody else holds (a workbin pull, a
        transfer whose transferrer is gone) goes to the interaction's queue, a failed Invite/Consult leaves
        the requester as they were. Chatting and LeftChat legs come back as they were."""
        counter = store.load("counter").get("referenceId")
        if counter is not None and isinstance(self._refs, ReferenceIds):
            self._refs.last = max(self._refs.last, counter["last"])
            self._saved_ref = self._refs.last
        self.last_agent.update({contact: doc["lastAgent"] for contact, doc in store.load("contact").items()})
        # Creation order is the order agents' lists show; ids break ties within a millisecond.
        docs = sorted(store.load("interaction").values(), key=lambda doc: (doc["createdMs"], doc["id"]))
        pending: list[tuple[Interaction, Leg]] = []
        for doc in docs:
            ix = Interaction.from_document(doc)
            self._interactions[ix.id] = ix
            for user_id in ix.legs:
                self._by_user.setdefault(user_id, set()).add(ix.id)
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
        for ix, leg in pending:
            leg.state = LegState.REVOKED
            self._offer_failed(ix, leg, "was offered it when the server restarted", declined=False)
            self._touch(ix)
        self._outbox = []  # nobody is connected yet to be told; the views show the outcome
        # The re-routed offers stay dirty: the first run writes them (the app runs one at start-up). Until
        # then the store holds what a restart would re-route the same way again.
        if docs:
            log.info("restored %d interaction(s), %d queued, %d pending offer(s) re-routed",
                     len(docs), len(self.routing.waiting()), len(pending))

    async def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        for user_id, topic, data in outbox:
            await self._publish(user_id, topic, data)


def _pushable_url(url: str) -> str:
    """SendUrl's `url`: the customer's client opens it, so only an absolute http(s) URL (never javascript:,
    data: or a relative path), of a bounded length."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        valid = False
    if not valid or len(url) > MAX_URL_LENGTH or any(c.isspace() for c in url):
        raise GwsError(Status.VALIDATION_ERROR, f"parameter 'url' must be an absolute http or https URL of at most "
                                                f"{MAX_URL_LENGTH} characters without spaces, got {url[:80]!r}")
    return url


def _visibility(leg: Leg) -> Visibility:
    """A consultant's comings and goings are for agents only: the customer is unaware of them."""
    return Visibility.AGENTS if leg.role is Role.CONSULT else Visibility.ALL
