"""Queues, agent readiness per channel, and choosing which agent an interaction is offered to.

Routing decides *who*; the conversation engine (an `Offerer`) owns the interactions and makes the offer.
Choosing is synchronous so that the engine can route inside one locked operation without another
operation slipping in between "agent X has room" and "agent X was offered". Offer timers are owned here
and cancelled by `close()`.

Policy (documented because the GWS docs leave it to the routing strategy):
- An agent is eligible for a queued offer when Ready on the interaction's channel, below capacity on that
  channel, not already in the interaction, and has not declined (rejected or let time out) this request.
- Among eligible agents the longest idle wins: the one whose last offer (or whose becoming Ready) is
  oldest. A preferred agent (last-agent routing, saveLAR) wins if eligible.
- A decline is forgotten when the agent becomes Ready again, so a lone agent who rejected is not offered
  the same chat in a loop, yet gets it back after toggling Ready.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cometd_broker.logs import unbound_context

from .model import Role

log = logging.getLogger("channels.routing")

Publish = Callable[[str, str, dict[str, Any]], Awaitable[Any]]

CHANNELS_TOPIC = "/v2/me/channels"
ROUTED_CHANNELS = ("chat", "sms")
_IDLE_SINCE = operator.itemgetter(0)


@dataclass(eq=False)
class OfferRequest:
    """Someone must be offered this interaction: routed through `queue`, or to `target` directly."""

    interaction_id: str
    channel: str
    role: Role
    queue: str | None = None
    target: str | None = None
    reference_id: int | None = None  # of the operation that asked (Invite, Consult, Transfer)
    requester: str | None = None  # the agent told about a failure
    preferred: str | None = None
    declined: set[str] = field(default_factory=set)
    seq: int = 0  # position in the queues: first come, first offered

    def to_document(self) -> dict[str, Any]:
        return {"interactionId": self.interaction_id, "channel": self.channel, "role": self.role.value,
                "queue": self.queue, "target": self.target, "referenceId": self.reference_id,
                "requester": self.requester, "preferred": self.preferred, "declined": sorted(self.declined),
                "seq": self.seq}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> OfferRequest:
        return cls(doc["interactionId"], doc["channel"], Role(doc["role"]), queue=doc["queue"],
                   target=doc["target"], reference_id=doc["referenceId"], requester=doc["requester"],
                   preferred=doc["preferred"], declined=set(doc["declined"]), seq=doc["seq"])


@dataclass
class ChannelState:
    ready: bool = False
    reason: str | None = None
    idle_since: int = 0  # logical clock tick of the last offer or Ready
    state_id: str = ""

    def to_document(self) -> dict[str, Any]:
        return {"ready": self.ready, "reason": self.reason, "stateId": self.state_id}

    @classmethod
    def from_document(cls, doc: dict[str, Any], idle_since: int) -> ChannelState:
        return cls(ready=doc["ready"], reason=doc["reason"], idle_since=idle_since, state_id=doc["stateId"])

    def user_state(self) -> dict[str, Any]:
        if self.ready:
            return {"state": "Ready", "displayName": "Ready", "id": self.state_id}
        state: dict[str, Any] = {"state": "NotReady", "displayName": "Not Ready", "id": self.state_id}
        if self.reason:
            state["reason"] = self.reason
        return state


class Offerer(Protocol):
    """What routing needs from the engine that owns the interactions."""

    def load(self, user_id: str, channel: str) -> int:
        """Active legs the agent has on the channel."""

    def members(self, interaction_id: str) -> set[str]:
        """Agents with an active leg in the interaction (never offered it again)."""

    def offer(self, request: OfferRequest, user_id: str) -> None:
        """Create the Invited leg; called synchronously while routing."""


class UnknownQueue(KeyError):
    pass


class Routing:
    def __init__(self, publish: Publish, *, queues: Iterable[str] = ("default",), capacity: int = 1,
                 channel_capacity: Mapping[str, int] | None = None,
                 capacities: Mapping[str, Mapping[str, int]] | None = None, offer_timeout: float = 30.0) -> None:
        """`capacity` is the default per agent per channel, `channel_capacity` overrides it for every agent
        on a channel (channel -> n), `capacities` for one agent (user -> channel -> n).
        `offer_timeout` (seconds) is how long an offer waits for Accept/Reject before the next agent."""
        if capacity < 0 or offer_timeout <= 0 or any(n < 0 for n in (channel_capacity or {}).values()):
            raise ValueError("capacity must be >= 0 and offer_timeout > 0")
        self._publish = publish
        self.default_capacity = capacity
        self._channel_capacity = dict(channel_capacity or {})
        self._capacities = {u: dict(c) for u, c in (capacities or {}).items()}
        self.offer_timeout = offer_timeout
        self._queues: dict[str, list[OfferRequest]] = {name: [] for name in queues}
        self._agents: dict[str, dict[str, ChannelState]] = {}
        # Per channel, the Ready agents from the longest idle to the least: choosing walks it from the front
        # and stops at the first agent with room, instead of sorting every agent for every offer. Every tick
        # is newer than all before it, so an agent whose idle_since is set from one moves to the end.
        self._idle_order: dict[str, dict[str, None]] = {}
        self._tick = itertools.count(1)
        self._last_seq = 0  # a plain int: requests restored after a restart move it past their seq
        self._offerer: Offerer | None = None
        self._available: list[Callable[[], Awaitable[None]]] = []
        self._timers: dict[Hashable, asyncio.Task[None]] = {}
        # Awaited with the user after a readiness change, before it is published (a cluster's store writes
        # it); raising undoes the change.
        self.on_state_change: Callable[[str], Awaitable[None]] | None = None

    # --- configuration ---------------------------------------------------------------------------------

    def attach(self, offerer: Offerer, on_available: Callable[[], Awaitable[None]]) -> None:
        """The engine that makes offers; `on_available` runs after an agent became Ready."""
        self._offerer = offerer
        self._available.append(on_available)

    def add_queue(self, name: str) -> None:
        self._queues.setdefault(name, [])

    def has_queue(self, name: str) -> bool:
        return name in self._queues

    def queue_names(self) -> list[str]:
        return list(self._queues)

    def set_capacity(self, user_id: str, channel: str, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._capacities.setdefault(user_id, {})[channel] = capacity

    def capacity(self, user_id: str, channel: str) -> int:
        """Interactions the agent may hold at once on the channel (Invited or Chatting legs)."""
        default = self._channel_capacity.get(channel, self.default_capacity)
        return self._capacities.get(user_id, {}).get(channel, default)

    # --- readiness ---------------------------------------------------------------------------------------

    def state(self, user_id: str, channel: str) -> ChannelState:
        return self._agents.get(user_id, {}).get(channel) or ChannelState()

    def is_ready(self, user_id: str, channel: str) -> bool:
        return self.state(user_id, channel).ready

    def states(self, user_id: str) -> dict[str, ChannelState]:
        """The agent's state per channel it has one on."""
        return dict(self._agents.get(user_id, {}))

    def restore_state(self, user_id: str, channel: str, state: dict[str, Any]) -> None:
        """A state kept by a previous leader (ChannelState.to_document), set without notifying anyone;
        agents restored Ready count as idle since now, in the order they are restored."""
        restored = ChannelState.from_document(state, next(self._tick))
        self._agents.setdefault(user_id, {})[channel] = restored
        self._reorder(user_id, channel, restored)

    def channels_view(self, user_id: str) -> list[dict[str, Any]]:
        """`[{"channel": "chat", "userState": {...}, "capacity": 1}]` for every channel the agent has a state
        on; `capacity` (not in GWS) is how many interactions routing gives the agent at once there."""
        return [{"channel": name, "userState": st.user_state(), "capacity": self.capacity(user_id, name)}
                for name, st in self._agents.get(user_id, {}).items()]

    async def set_ready(self, user_id: str, channel: str) -> None:
        await self._set(user_id, channel, ready=True, reason=None)

    async def set_not_ready(self, user_id: str, channel: str, reason: str | None = None) -> None:
        await self._set(user_id, channel, ready=False, reason=reason)

    async def _set(self, user_id: str, channel: str, *, ready: bool, reason: str | None) -> None:
        if channel not in ROUTED_CHANNELS:
            raise ValueError(f"unknown channel {channel!r} (known: {', '.join(ROUTED_CHANNELS)})")
        state = self._agents.setdefault(user_id, {}).setdefault(channel, ChannelState())
        before = (state.ready, state.reason, state.state_id, state.idle_since)
        became_ready = ready and not state.ready
        state.ready, state.reason, state.state_id = ready, reason, str(uuid.uuid4()).upper()
        if became_ready:
            state.idle_since = next(self._tick)
        if became_ready or not ready:  # staying Ready keeps its place
            self._reorder(user_id, channel, state)
        # What this change tells, fixed now: another change of the same agent may run while the write is awaited.
        notification = {"channels": [{"channel": channel, "userState": state.user_state(),
                                      "capacity": self.capacity(user_id, channel)}]}
        if self.on_state_change is not None:
            after = (state.ready, state.reason, state.state_id, state.idle_since)
            try:
                await self.on_state_change(user_id)  # kept (a cluster's store) before anyone hears of it
            except BaseException:
                if (state.ready, state.reason, state.state_id, state.idle_since) == after:  # not changed since
                    state.ready, state.reason, state.state_id, state.idle_since = before
                    self._sort_idle_order(channel)  # an older idle_since is back: not at the end
                raise
        if became_ready:
            self._forget_declines(user_id)
        await self._publish(user_id, CHANNELS_TOPIC, notification)
        if became_ready:
            for listener in self._available:
                await listener()

    def _forget_declines(self, user_id: str) -> None:
        for waiting in self._queues.values():
            for request in waiting:
                request.declined.discard(user_id)

    # --- queues and choosing ---------------------------------------------------------------------------

    def enqueue(self, request: OfferRequest) -> None:
        """Wait in `request.queue`; a re-queued request keeps its place (its original seq)."""
        if request.queue not in self._queues:
            raise UnknownQueue(request.queue)
        if not request.seq:
            self._last_seq += 1
            request.seq = self._last_seq
        else:
            self._last_seq = max(self._last_seq, request.seq)
        waiting = self._queues[request.queue]
        waiting.append(request)
        waiting.sort(key=lambda r: r.seq)

    def waiting(self, queue: str | None = None) -> list[OfferRequest]:
        if queue is not None:
            return list(self._queues.get(queue, ()))
        return sorted((r for q in self._queues.values() for r in q), key=lambda r: r.seq)

    def waiting_for(self, interaction_id: str) -> list[OfferRequest]:
        """The requests waiting for one interaction, in queue order."""
        return [r for r in self.waiting() if r.interaction_id == interaction_id]

    def withdraw(self, interaction_id: str) -> list[OfferRequest]:
        """Remove every waiting request for the interaction (it ended)."""
        removed = []
        for name, waiting in self._queues.items():
            removed += [r for r in waiting if r.interaction_id == interaction_id]
            self._queues[name] = [r for r in waiting if r.interaction_id != interaction_id]
        return removed

    def dispatch(self) -> int:
        """Offer every waiting request that has an eligible agent, oldest request first; how many."""
        offerer = self._require_offerer()
        made = 0
        for request in self.waiting():
            agent = self.choose(request)
            if agent is None:
                continue
            self._queues[request.queue].remove(request)
            self.mark_offered(agent, request.channel)
            offerer.offer(request, agent)
            made += 1
        return made

    def choose(self, request: OfferRequest) -> str | None:
        """The preferred agent if eligible, else the eligible agent idle the longest. Loads are counted last,
        from the longest idle on, stopping at the first agent with room: counting one walks that agent's
        interactions, and the agents just offered something, the likely full ones, are the least idle."""
        offerer = self._require_offerer()
        channel = request.channel
        members, declined = offerer.members(request.interaction_id), request.declined

        def has_room(user: str) -> bool:
            return offerer.load(user, channel) < self.capacity(user, channel)

        preferred = request.preferred
        state = self._agents.get(preferred, {}).get(channel) if preferred is not None else None
        if (state is not None and state.ready and preferred not in members and preferred not in declined
                and has_room(preferred)):
            return preferred
        return next((user for user in self._idle_order.get(channel, ())
                     if user not in members and user not in declined and has_room(user)), None)

    def mark_offered(self, user_id: str, channel: str) -> None:
        state = self._agents.get(user_id, {}).get(channel)
        if state is not None:
            state.idle_since = next(self._tick)
            self._reorder(user_id, channel, state)

    def _reorder(self, user_id: str, channel: str, state: ChannelState) -> None:
        """`state` changed its readiness or took a new tick: out of the order, or at its end."""
        order = self._idle_order.setdefault(channel, {})
        order.pop(user_id, None)
        if state.ready:
            order[user_id] = None

    def _sort_idle_order(self, channel: str) -> None:
        ready = [(st.idle_since, user) for user, channels in self._agents.items()
                 if (st := channels.get(channel)) is not None and st.ready]
        self._idle_order[channel] = dict.fromkeys(user for _, user in sorted(ready, key=_IDLE_SINCE))

    def _require_offerer(self) -> Offerer:
        if self._offerer is None:
            raise RuntimeError("Routing.attach() an Offerer before routing")
        return self._offerer

    # --- offer timers ------------------------------------------------------------------------------------

    def start_timer(self, key: Hashable, on_expiry: Callable[[], Awaitable[None]]) -> None:
        """Run `on_expiry` after offer_timeout unless cancelled first; replaces a timer with the same key."""
        self.cancel_timer(key)
        self._timers[key] = asyncio.get_running_loop().create_task(
            self._expire(key, on_expiry), name=f"offer-timeout-{key}",
            context=unbound_context())  # it acts for whichever agent is offered next, not the requester

    def cancel_timer(self, key: Hashable) -> None:
        task = self._timers.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def timer_count(self) -> int:
        return len(self._timers)

    async def _expire(self, key: Hashable, on_expiry: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(self.offer_timeout)
        self._timers.pop(key, None)
        try:
            await on_expiry()
        except Exception:  # a timer has no caller to report to; keep the loop alive and say why
            log.exception("offer timeout handler for %s failed", key)

    async def close(self) -> None:
        """Cancel every offer timer and wait for them to finish."""
        tasks = list(self._timers.values())
        self._timers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
