"""The agent's operations on a chat or SMS interaction (the GWS operationNames), each in three steps:

1. find the caller's leg (unknown interaction, other media, or no leg of the caller -> NotFound, the same
   message either way so nobody learns of others' interactions) and check the leg's capabilities
   (-> InvalidState);
2. validate the parameters (missing -> MissingParameter, wrong type or malformed -> InvalidParameter, unknown
   user or queue -> NotFound); each `_op_*` method does only this and returns the change to apply;
3. inside the same run (conversation_core.py), take a referenceId and apply the change.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .conversation_core import ConversationCore, member, visibility_of
from .errors import InUse, InvalidParameter, InvalidState, MissingParameter, NotFound
from .model import (
    Interaction,
    Leg,
    LegState,
    MediaKind,
    MessageType,
    Participant,
    Role,
    Visibility,
    new_participant_id,
    permits,
)
from .params import param, pushable_url, unknown_operation
from .routing import OfferRequest

Apply = Callable[[int], None]

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
# Where an operation's target may be given. `userUri` is an alias of `targetUri`: the SMS Invite page's own
# sample request names the invitee with it, while its parameter table says targetUri.
TARGET_PARAMS = ("targetUri", "userUri", "targetPath")

# A user is named by its user resource or by its contact entry: GWS's contact directory lists every user as
# a contact of type User, under the user's id (the SMS Invite sample names its invitee by `/api/v2/contacts/{id}`).
_USER_PATH = re.compile(r"(?:.*/api/v2)?/(?:users|contacts)/([^/?#]+)/?")
_QUEUE_PATH = re.compile(r"(?:.*/api/v2)?/queues/([^/?#]+)/?")


class UserLookup(Protocol):
    def get(self, user_id: str) -> Any:
        """The user (anything with optional first_name/last_name) or None."""


class AgentOperations:
    """`on_operation` is told the name of every valid operation it runs (the edge labels its metrics)."""

    def __init__(self, core: ConversationCore, users: UserLookup, refs: Iterator[int]) -> None:
        self.core = core
        self.users = users
        self._refs = refs
        self.on_operation: Callable[[str], None] = lambda _: None
        self._ops: dict[str, Callable[[Interaction, Leg, dict[str, Any]], Apply]] = {
            name: getattr(self, "_op_" + name) for name in OPERATIONS}

    def leg_of(self, user_id: str, media: MediaKind, interaction_id: str) -> tuple[Interaction, Leg]:
        ix = self.core.repository.get(interaction_id)
        leg = ix.legs.get(user_id) if ix is not None and ix.media == media else None
        if ix is None or leg is None:
            raise NotFound(f"{media.resource_key} {interaction_id} not found")
        return ix, leg

    async def operate(self, user_id: str, media: MediaKind, interaction_id: str, operation: str,
                      params: dict[str, Any]) -> int:
        """Run one operation for `user_id`; returns its referenceId or raises ContactCenterError with nothing
        changed."""
        if operation not in self._ops:
            raise unknown_operation(operation, OPERATIONS)
        self.on_operation(operation)

        def run() -> int:
            ix, leg = self.leg_of(user_id, media, interaction_id)
            self.core.repository.touch(ix)
            if not permits(ix.capabilities_of(leg), _CAPABILITY_OF.get(operation, operation)):
                raise InvalidState(f"operation {operation} is not valid in state {leg.state.value}")
            apply = self._ops[operation](ix, leg, params)
            reference_id = next(self._refs)
            apply(reference_id)
            return reference_id

        return await self.core.run(run)

    async def offer_to(self, user_id: str, interaction_id: str) -> None:
        """Offer the interaction straight to `user_id` (Invited), whatever their readiness: an agent takes it
        back out of a workbin. Declined or unanswered, it goes to its queue like any failed offer."""
        def run() -> None:
            ix = self.core.repository.get(interaction_id)
            if ix is None:
                raise NotFound(f"interaction {interaction_id} not found")
            if member(ix, user_id) is not None:
                raise InUse(f"user {user_id} is already in {ix.media.resource_key} {ix.id}")
            self.core.offer(OfferRequest(ix.id, ix.media.name, Role.OWNER, target=user_id), user_id)

        await self.core.run(run)

    # --- offers ------------------------------------------------------------------------------------------

    def _op_Accept(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        nickname = param(params, "nickname", str, required=False) or self._default_nickname(leg.user_id)
        save_lar = param(params, "saveLAR", bool, required=False, default=False)
        core, outbox = self.core, self.core.outbox

        def apply(ref: int) -> None:
            core.routing.cancel_timer((ix.id, leg.user_id))
            request: OfferRequest | None = leg.offer
            leg.offer = None
            leg.state = LegState.CHATTING
            leg.participant = Participant(nickname, "Agent", new_participant_id())
            # Seed 001: the StatusChange comes before the agent has joined, so its participant list is empty.
            outbox.notify(ix, leg, "StatusChange", ref=ref, participants=[])
            joined = core.log(ix, MessageType.PARTICIPANT_JOINED, leg.participant, visibility_of(leg))
            outbox.notify(ix, leg, "ParticipantsUpdated")
            outbox.messages(ix, leg.user_id, ix.messages_for_agents(upto=joined.index))
            outbox.tell_others(ix, leg, joined)
            if save_lar:
                core.repository.save_lar(ix, leg.user_id)
            if request is not None and request.role is Role.OWNER and request.requester:
                # A transfer to a user is done when the target accepts: the transferrer goes.
                core.finish_requester(ix, request)

        return apply

    def _op_Reject(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        def apply(ref: int) -> None:
            self.core.routing.cancel_timer((ix.id, leg.user_id))
            leg.state = LegState.COMPLETED
            self.core.outbox.notify(ix, leg, "StatusChange", ref=ref)
            self.core.offer_failed(ix, leg, "rejected")

        return apply

    # --- shaping the conference ---------------------------------------------------------------------------

    def _op_Invite(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._invite(ix, leg, params, Role.CONFERENCE)

    def _op_Consult(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._invite(ix, leg, params, Role.CONSULT)

    def _invite(self, ix: Interaction, leg: Leg, params: dict[str, Any], role: Role) -> Apply:
        kind, target = self._target(params, leg)
        consultant = member(ix, target) if kind == "user" else None
        promote = (role is Role.CONFERENCE and consultant is not None and consultant.role is Role.CONSULT
                   and consultant.state is LegState.CHATTING)
        if kind == "user" and consultant is not None and not promote:
            raise InUse(f"user {target} is already in {ix.media.resource_key} {ix.id}")

        def apply(ref: int) -> None:
            if promote:
                self.core.promote(ix, consultant, Role.CONFERENCE)
                return
            request = OfferRequest(ix.id, ix.media.name, role, reference_id=ref, requester=leg.user_id)
            self.core.route(ix, request, kind, target)

        return apply

    def _op_Transfer(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        if ix.ended:
            raise InvalidState(f"{ix.media.resource_key} {ix.id} has ended: Complete it instead")
        queue_name = param(params, "queueName", str, required=False)
        if queue_name is not None and not any(k in params for k in TARGET_PARAMS):
            kind, target = "queue", self.core.known_queue(queue_name)
        else:
            kind, target = self._target(params, leg)
        text = self._farewell_text(params)
        other = member(ix, target) if kind == "user" else None
        to_consultant = other is not None and other.role is Role.CONSULT and other.state is LegState.CHATTING
        if other is not None and not to_consultant:
            raise InUse(f"user {target} is already in {ix.media.resource_key} {ix.id}")
        core = self.core

        def apply(ref: int) -> None:
            self._farewell(ix, leg, text)
            if to_consultant:
                core.promote(ix, other, Role.OWNER)
                core.leave(ix, leg, LegState.COMPLETED, ref)
            elif kind == "queue":
                # Into a queue: the caller is done at once; it must not come straight back to them.
                request = OfferRequest(ix.id, ix.media.name, Role.OWNER, queue=target, declined={leg.user_id})
                core.routing.enqueue(request)
                core.leave(ix, leg, LegState.COMPLETED, ref)
            else:
                request = OfferRequest(ix.id, ix.media.name, Role.OWNER, reference_id=ref, requester=leg.user_id)
                core.route(ix, request, kind, target)
            core.end_if_unheld(ix)

        return apply

    def _op_RemoveParticipantFromConference(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        kind, target = self._target(params, leg)
        if kind != "user":
            raise InvalidParameter("targetUri must name a user, not a queue")
        removed = member(ix, target)
        if removed is None or removed.state is not LegState.CHATTING:
            raise NotFound(f"user {target} is not chatting in {ix.media.resource_key} {ix.id}")

        def apply(ref: int) -> None:
            notice = self.core.log(ix, MessageType.NOTICE, leg.participant, Visibility.AGENTS,
                                   text=f"REMOVE_PARTICIPANT_FROM_CONFERENCE{target}")
            self.core.outbox.new_message(ix, notice, caller=leg.user_id, ref=ref)
            self.core.leave(ix, removed, LegState.COMPLETED, None)
            self.core.end_if_unheld(ix)

        return apply

    # --- leaving -------------------------------------------------------------------------------------------

    def _op_Leave(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        text = self._farewell_text(params)

        def apply(ref: int) -> None:
            self._farewell(ix, leg, text)
            others = [o for o in ix.visible_agents_chatting() if o is not leg]
            # Outside a conference the owner keeps the interaction for wrap-up (LeftChat); a consultant,
            # a conference member, or an agent already in LeftChat is simply done.
            stays = leg.state is LegState.CHATTING and leg.role is not Role.CONSULT and not others
            self.core.leave(ix, leg, LegState.LEFT_CHAT if stays else LegState.COMPLETED, ref)
            self.core.end_if_unheld(ix)

        return apply

    def _op_Complete(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        queue_name = param(params, "queueName", str, required=False)
        if queue_name is not None:
            self.core.known_queue(queue_name)
            if ix.ended:
                raise InvalidState(f"{ix.media.resource_key} {ix.id} has ended: it cannot be placed in a queue")
        save_lar = param(params, "saveLAR", bool, required=False, default=False)
        text = self._farewell_text(params)
        core = self.core

        def apply(ref: int) -> None:
            self._farewell(ix, leg, text)
            if queue_name is not None:
                core.routing.enqueue(OfferRequest(ix.id, ix.media.name, Role.OWNER, queue=queue_name,
                                                  declined={leg.user_id}))
            if save_lar:
                core.repository.save_lar(ix, leg.user_id)
            core.leave(ix, leg, LegState.COMPLETED, ref)
            core.end_if_unheld(ix)

        return apply

    def _farewell_text(self, params: dict[str, Any]) -> str | None:
        """The optional goodbye of Transfer, Leave and Complete, checked before anything changes."""
        return self.core.checked_text(param(params, "text", str, required=False))

    def _farewell(self, ix: Interaction, leg: Leg, text: str | None) -> None:
        if text and leg.state is LegState.CHATTING and leg.participant is not None:
            message = self.core.log(ix, MessageType.TEXT, leg.participant, visibility_of(leg), text=text)
            self.core.outbox.new_message(ix, message)

    # --- messages ------------------------------------------------------------------------------------------

    def _op_SendMessage(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.TEXT, Visibility.ALL, param(params, "text", str))

    def _op_SendStartTypingNotification(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.TYPING_STARTED, Visibility.ALL)

    def _op_SendStopTypingNotification(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.TYPING_STOPPED, Visibility.ALL)

    def _op_SendUrl(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        return self._say(ix, leg, MessageType.PUSH_URL, Visibility.ALL, url=pushable_url(param(params, "url", str)))

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

    def _say(self, ix: Interaction, leg: Leg, kind: MessageType, visibility: Visibility,
             text: str | None = None, *, url: str | None = None) -> Apply:
        self.core.checked_text(text)
        self.core.check_room(ix)

        def apply(ref: int) -> None:
            message = self.core.log(ix, kind, leg.participant, visibility, text=text, url=url)
            self.core.outbox.new_message(ix, message, caller=leg.user_id, ref=ref)

        return apply

    # --- focus and user data -------------------------------------------------------------------------------

    def _op_SetInFocus(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        # Focus changes nothing in the resource; the caller still gets a notification carrying its
        # referenceId so a client that waits for its referenceId is not left hanging.
        def apply(ref: int) -> None:
            self.core.outbox.notify(ix, leg, "PropertiesUpdated", ref=ref)

        return apply

    def _op_SetDisposition(self, ix: Interaction, leg: Leg, params: dict[str, Any]) -> Apply:
        disposition = param(params, "disposition", str)
        key = param(params, "dispositionKey", str, required=False, default=DEFAULT_DISPOSITION_KEY)
        if not key:
            raise InvalidParameter("parameter 'dispositionKey' must not be empty")
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
            raise InvalidParameter("parameter 'keys' must be an array of strings")

        def delete(data: dict[str, Any]) -> None:
            for key in keys:
                data.pop(key, None)

        return self._change_data(ix, leg, delete)

    def _change_data(self, ix: Interaction, leg: Leg, change: Callable[[dict[str, Any]], None]) -> Apply:
        changed = dict(ix.user_data)  # checked before it replaces the interaction's (the views copy it anyway)
        change(changed)
        self.core.check_user_data(changed)

        def apply(ref: int) -> None:
            ix.user_data = changed
            for other in ix.legs.values():
                if other.state in (LegState.CHATTING, LegState.LEFT_CHAT):
                    self.core.outbox.notify(ix, other, "PropertiesUpdated", ref=ref if other is leg else None,
                                            with_user_data=True)

        return apply

    # --- reading parameters ---------------------------------------------------------------------------------

    def _target(self, params: dict[str, Any], leg: Leg) -> tuple[str, str]:
        """("user", id) or ("queue", name) from targetUri (or its alias userUri) / targetPath; unknown ones
        are NotFound. A user is `/users/{id}` or `/contacts/{id}`, a queue `/queues/{name}`, each path alone or
        at the end of a URI."""
        uri = param(params, "targetUri", str, required=False)
        alias = param(params, "userUri", str, required=False)
        path = param(params, "targetPath", str, required=False)
        if alias is not None and uri is not None and alias != uri:
            raise InvalidParameter("userUri is another name for targetUri: give one of them")
        if uri is None and alias is None and path is None:
            raise MissingParameter("missing parameter 'targetUri' (or 'userUri' or 'targetPath')")
        name = "targetUri" if uri is not None else "userUri" if alias is not None else "targetPath"
        where = uri if uri is not None else alias if alias is not None else path
        if (found := _USER_PATH.fullmatch(where)) is not None:
            user_id = found.group(1)
            if self.users.get(user_id) is None:
                raise NotFound(f"user {user_id} not found")
            if user_id == leg.user_id:
                raise InvalidParameter(f"{name} names yourself")
            return "user", user_id
        if (found := _QUEUE_PATH.fullmatch(where)) is not None:
            return "queue", self.core.known_queue(found.group(1))
        raise InvalidParameter(f"{name} must name a user (/users/{{id}} or /contacts/{{id}}) or a queue "
                               f"(/queues/{{name}}), got {where!r}")

    def _default_nickname(self, user_id: str) -> str:
        user = self.users.get(user_id)
        first, last = getattr(user, "first_name", ""), getattr(user, "last_name", "")
        return f"{first} {last[:1]}".strip() if first else user_id

