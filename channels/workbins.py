"""Per-agent workbins: places where an agent parks an interaction to continue it later.

Every agent has the same default workbins (`<user>-inprogress` "In Progress", `<user>-drafts` "Drafts"),
created on first use; an agent sees only their own (another's id is not found, as if it did not exist).

Placing an interaction (`AddInteraction` here, `PlaceInWorkbin` on /me/interactions) is the engine's
Complete for the agent's leg while the workbin holds the interaction: the agent leaves the chat session and
the interaction leaves their active list, but the customer's side stays open (the workbin is a holder for
the engine) and messages keep arriving in the log. Only an agent alone in the interaction may place it,
so a workbin item never has agents working on it.

Taking it back is `Pull` (`{"operationName":"Pull","id":...}`): the interaction is offered to the agent
(Invited), as a Genesys pull delivers an invitation, and the agent Accepts it as usual, getting the log up
to the point of joining. Declined or unanswered, it goes to its queue like any failed offer. Accept on an
item still in a workbin is refused (an invalid state) so that one explicit step takes it out.

Notifications on `/v2/me/workbins` (owner only): `ItemAdded`/`ItemRemoved` while subscribed (an agent is
subscribed to their own workbins from the start: GWS makes clients subscribe because workbins are shared
by groups and places, an Agent workbin only ever interests its owner) and
`WorkbinSubscriptionStateChangeMessage` for Subscribe/Unsubscribe.

Persistence: workbins (items, subscription) live in the engine's store and are written through the engine
(`Conversations.stage`), so placing or pulling an interaction is one transaction with the interaction's own
change: on disk an interaction is never both out of the agent's hands and out of the workbin. Which workbin
holds an interaction is stored only here (the items), never a second time on the interaction.

The HTTP routes over these workbins are in gws/workbins_api.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .conversation import Conversations
from .errors import ContactCenterError, InvalidState, NotFound
from .model import Interaction
from .store import Document, DocumentStore

Publish = Callable[[str, str, dict[str, Any]], Awaitable[Any]]

TOPIC = "/v2/me/workbins"
SUBSCRIPTION_MESSAGE = "WorkbinSubscriptionStateChangeMessage"
# workbinName -> displayName of the workbins every agent has.
DEFAULT_WORKBINS = {"InProgress": "In Progress", "Drafts": "Drafts"}
OPERATIONS = ("AddInteraction", "Pull", "Subscribe", "Unsubscribe")
IN_WORKBIN = "InWorkbin"


@dataclass
class Workbin:
    id: str
    name: str
    display_name: str
    owner: str
    items: list[str] = field(default_factory=list)  # interaction ids, in the order they were placed
    subscribed: bool = True

    def view(self, base_url: str) -> dict[str, Any]:
        return {"id": self.id, "workbinName": self.name, "displayName": self.display_name, "type": "Agent",
                "uri": f"{base_url.rstrip('/')}/api/v2/me/workbins/{self.id}"}

    def to_document(self) -> Document:
        return {"id": self.id, "name": self.name, "displayName": self.display_name, "owner": self.owner,
                "items": list(self.items), "subscribed": self.subscribed}

    @classmethod
    def from_document(cls, doc: Document) -> Workbin:
        return cls(doc["id"], doc["name"], doc["displayName"], doc["owner"], list(doc["items"]), doc["subscribed"])


def interaction_uri(base_url: str, interaction_id: str) -> str:
    return f"{base_url.rstrip('/')}/api/v2/interactions/{interaction_id}"


class Workbins:
    """The workbins of every agent and the interactions they hold."""

    def __init__(self, conversations: Conversations, publish: Publish, *, reference_ids: Iterator[int]) -> None:
        """`reference_ids` must be the iterator given to `Conversations`, so referenceIds stay unique."""
        self.conversations = conversations
        self._publish = publish
        self._refs = reference_ids
        self._bins: dict[str, dict[str, Workbin]] = {}  # user -> workbin id -> workbin
        self._holder: dict[str, Workbin] = {}  # interaction id -> the workbin holding it
        conversations.add_holder(lambda interaction_id: interaction_id in self._holder)
        if conversations.store is not None:
            self._restore(conversations.store)

    def _restore(self, store: DocumentStore) -> None:
        """The stored workbins over the defaults; construct after the engine has loaded its interactions."""
        for doc in store.load("workbin").values():
            workbin = Workbin.from_document(doc)
            self._own(workbin.owner)[workbin.id] = workbin
            workbin.items = [i for i in workbin.items if self.conversations.interaction(i) is not None]
            for interaction_id in workbin.items:
                self._holder[interaction_id] = workbin

    def _stage(self, workbin: Workbin) -> None:
        """Write the workbin with the engine's next run (the operation that goes with this change)."""
        self.conversations.stage("workbin", workbin.id, workbin.to_document)

    @property
    def base_url(self) -> str:
        return self.conversations.base_url

    # --- queries ----------------------------------------------------------------------------------------

    def of(self, user_id: str) -> list[Workbin]:
        return list(self._own(user_id).values())

    def find(self, user_id: str, ident: str) -> Workbin:
        """One of the agent's workbins by id or by workbinName; anyone else's is not found."""
        bins = self._own(user_id)
        found = bins.get(ident) or next((b for b in bins.values() if b.name == ident), None)
        if found is None:
            raise NotFound(f"workbin {ident} not found")
        return found

    def holder(self, interaction_id: str) -> Workbin | None:
        return self._holder.get(interaction_id)

    def item_view(self, ix: Interaction) -> dict[str, Any]:
        """An interaction in a workbin: nobody works on it, so no capabilities (domain.md 2.2)."""
        workbin = self._holder[ix.id]
        view: dict[str, Any] = {"id": ix.id, "mediaType": ix.media.name, "state": IN_WORKBIN, "capabilities": [],
                                "participants": [], "uri": interaction_uri(self.base_url, ix.id),
                                "workbinId": workbin.id}
        if ix.user_data:
            view["userData"] = dict(ix.user_data)
        return view

    def content(self, workbin: Workbin) -> dict[str, Any]:
        items = [self.item_view(ix) for i in workbin.items if (ix := self.conversations.interaction(i)) is not None]
        return {**workbin.view(self.base_url), "interactions": items}

    # --- operations -------------------------------------------------------------------------------------

    async def place(self, user_id: str, workbin: Workbin, interaction_id: str) -> int:
        """Move the agent's interaction into their workbin; the referenceId of the change."""
        ix = self._placeable(user_id, interaction_id)
        # Hold first: the engine's Complete must see the workbin holding it, or it would end the customer's side.
        self._hold(ix.id, workbin)
        try:
            reference_id = await self.conversations.operate(user_id, ix.media, ix.id, "Complete", {})
        except ContactCenterError:
            self._release(ix.id)
            raise
        await self._item_event(workbin, "ItemAdded", self.item_view(ix), reference_id)
        return reference_id

    async def pull(self, user_id: str, workbin: Workbin, interaction_id: str) -> int:
        """Take an interaction out of the workbin: it is offered to the agent, who Accepts it."""
        if interaction_id not in workbin.items:
            raise NotFound(f"interaction {interaction_id} is not in workbin {workbin.id}")
        ix = self.conversations.interaction(interaction_id)
        assert ix is not None, "workbins hold only interactions of the engine"
        item = self.item_view(ix)
        reference_id = next(self._refs)
        self._release(ix.id)
        try:
            await self.conversations.offer_to(user_id, ix.id)
        except ContactCenterError:
            self._hold(ix.id, workbin)
            raise
        await self._item_event(workbin, "ItemRemoved", item, reference_id)
        return reference_id

    async def subscribe(self, workbin: Workbin, subscribed: bool) -> int:
        workbin.subscribed = subscribed
        reference_id = next(self._refs)
        self._stage(workbin)
        await self.conversations.save()
        await self._publish(workbin.owner, TOPIC, {
            "messageType": SUBSCRIPTION_MESSAGE, "stateResource": "Subscribed" if subscribed else "Unsubscribed",
            "id": workbin.id, "referenceId": reference_id})
        return reference_id

    async def send_content(self, user_id: str, workbin: Workbin, topic: str) -> int:
        """GetWorkbinContent: the content arrives as a notification on `topic`."""
        reference_id = next(self._refs)
        await self.conversations.save()  # the referenceId counter: ids never repeat after a restart
        await self._publish(user_id, topic, {"messageType": "WorkbinContentMessage",
                                             "notificationType": "WorkbinContent",
                                             "workbin": self.content(workbin), "referenceId": reference_id})
        return reference_id

    def _placeable(self, user_id: str, interaction_id: str) -> Interaction:
        ix = self.conversations.interaction(interaction_id)
        leg = ix.legs.get(user_id) if ix is not None else None
        if ix is None or leg is None:
            raise NotFound(f"interaction {interaction_id} not found")
        if ix.id in self._holder:
            raise InvalidState(f"interaction {ix.id} is already in workbin {self._holder[ix.id].id}")
        # The engine's Complete ends the leg, so whoever may Complete (owner chatting or in wrap-up) may place.
        if "Complete" not in ix.capabilities_of(leg):
            raise InvalidState(f"interaction {ix.id} cannot be placed in a workbin in state {leg.state.value}")
        if any(other is not leg for other in ix.active_legs()):
            raise InvalidState(f"interaction {ix.id} has other agents in it: only an agent alone in it may place it")
        return ix

    def _hold(self, interaction_id: str, workbin: Workbin) -> None:
        self._holder[interaction_id] = workbin
        workbin.items.append(interaction_id)
        self._stage(workbin)

    def _release(self, interaction_id: str) -> None:
        workbin = self._holder.pop(interaction_id)
        workbin.items.remove(interaction_id)
        self._stage(workbin)

    async def _item_event(self, workbin: Workbin, action: str, item: dict[str, Any], reference_id: int) -> None:
        if workbin.subscribed:
            await self._publish(workbin.owner, TOPIC, {"action": action, "workbin": workbin.view(self.base_url),
                                                       "interaction": item, "referenceId": reference_id})

    def _own(self, user_id: str) -> dict[str, Workbin]:
        bins = self._bins.get(user_id)
        if bins is None:
            bins = {}
            for name, display in DEFAULT_WORKBINS.items():
                workbin = Workbin(f"{user_id}-{name.lower()}", name, display, user_id)
                bins[workbin.id] = workbin
            self._bins[user_id] = bins
        return bins
