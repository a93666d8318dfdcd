"""channels.routing: readiness, the /v2/me/channels notification, choosing the agent, offer timers."""

from __future__ import annotations

import asyncio
import random

import pytest
from convo_helpers import Recorder

from channels.model import Role
from channels.routing import CHANNELS_TOPIC, OfferRequest, Routing, UnknownQueue


class FakeOfferer:
    def __init__(self) -> None:
        self.loads: dict[tuple[str, str], int] = {}
        self.in_interaction: dict[str, set[str]] = {}
        self.offers: list[tuple[str, str]] = []
        self.available_calls = 0

    def load(self, user_id: str, channel: str) -> int:
        return self.loads.get((user_id, channel), 0)

    def members(self, interaction_id: str) -> set[str]:
        return self.in_interaction.get(interaction_id, set())

    def offer(self, request: OfferRequest, user_id: str) -> None:
        self.offers.append((request.interaction_id, user_id))
        self.loads[(user_id, request.channel)] = self.load(user_id, request.channel) + 1

    async def available(self) -> None:
        self.available_calls += 1


def make(**kwargs) -> tuple[Routing, FakeOfferer, Recorder]:
    recorder, offerer = Recorder(), FakeOfferer()
    routing = Routing(recorder, **kwargs)
    routing.attach(offerer, offerer.available)
    return routing, offerer, recorder


def request(interaction_id: str, queue: str = "default", channel: str = "chat") -> OfferRequest:
    return OfferRequest(interaction_id, channel, Role.OWNER, queue=queue)


async def test_channel_state_notifications() -> None:
    routing, offerer, recorder = make()
    await routing.set_ready("alice", "chat")
    await routing.set_not_ready("alice", "chat", reason="Lunch")
    first, second = recorder.of("alice", CHANNELS_TOPIC)
    assert first["channels"][0]["channel"] == "chat"
    assert {k: v for k, v in first["channels"][0]["userState"].items() if k != "id"} == {
        "state": "Ready", "displayName": "Ready"}
    assert first["channels"][0]["userState"]["id"]
    assert second["channels"][0]["userState"]["state"] == "NotReady"
    assert second["channels"][0]["userState"]["reason"] == "Lunch"
    assert offerer.available_calls == 1  # only becoming Ready makes room
    assert [c["channel"] for c in routing.channels_view("alice")] == ["chat"]
    with pytest.raises(ValueError, match="unknown channel"):
        await routing.set_ready("alice", "fax")


async def test_waits_until_someone_is_ready_then_longest_idle_first() -> None:
    routing, offerer, _ = make()
    routing.enqueue(request("A"))
    assert routing.dispatch() == 0 and routing.waiting() != []
    await routing.set_ready("alice", "chat")
    await routing.set_ready("bob", "chat")
    assert routing.dispatch() == 1
    assert offerer.offers == [("A", "alice")]  # alice has been Ready longer
    routing.enqueue(request("B"))
    routing.dispatch()
    assert offerer.offers[-1] == ("B", "bob")  # alice is at capacity (1)


async def test_longest_idle_rotates_with_capacity() -> None:
    routing, offerer, _ = make(capacity=2)
    await routing.set_ready("alice", "chat")
    await routing.set_ready("bob", "chat")
    for name in "ABC":
        routing.enqueue(request(name))
    routing.dispatch()
    assert offerer.offers == [("A", "alice"), ("B", "bob"), ("C", "alice")]


async def test_channel_and_capacity_and_membership_rules() -> None:
    routing, offerer, _ = make(capacities={"bob": {"sms": 0}})
    await routing.set_ready("alice", "chat")
    await routing.set_ready("bob", "sms")
    routing.enqueue(request("S", channel="sms"))
    assert routing.dispatch() == 0  # alice is not Ready for sms, bob has no sms capacity
    routing.set_capacity("bob", "sms", 1)
    offerer.in_interaction["S"] = {"bob"}
    assert routing.dispatch() == 0  # bob is in it already
    offerer.in_interaction["S"] = set()
    assert routing.dispatch() == 1 and offerer.offers == [("S", "bob")]


async def test_declined_agents_are_skipped_until_ready_again() -> None:
    routing, _, _ = make()
    await routing.set_ready("alice", "chat")
    waiting = request("A")
    waiting.declined.add("alice")
    routing.enqueue(waiting)
    assert routing.dispatch() == 0
    await routing.set_not_ready("alice", "chat")
    await routing.set_ready("alice", "chat")
    assert routing.dispatch() == 1


async def test_preferred_agent_wins_when_eligible() -> None:
    routing, offerer, _ = make()
    await routing.set_ready("alice", "chat")
    await routing.set_ready("bob", "chat")
    preferred = request("A")
    preferred.preferred = "bob"
    routing.enqueue(preferred)
    routing.dispatch()
    assert offerer.offers == [("A", "bob")]


async def test_choosing_counts_loads_in_idle_order_until_one_has_room() -> None:
    """Routing runs after every operation: with 500 Ready agents, a choice must not count every agent's
    load (the engine walks that agent's interactions for each), only the longest idle ones until one has
    room; the agents just offered something are the least idle, so filling them costs a count each."""
    routing, offerer, _ = make()
    names = [f"agent{i}" for i in range(500)]
    for name in names:
        await routing.set_ready(name, "chat")
    offerer.loads[("agent0", "chat")] = 1  # idle the longest, but at capacity
    counted: list[str] = []
    count_load = offerer.load

    def load(user_id: str, channel: str) -> int:
        counted.append(user_id)
        return count_load(user_id, channel)

    offerer.load = load  # type: ignore[method-assign]
    assert routing.choose(request("A")) == "agent1"  # the longest idle with room
    assert counted == ["agent0", "agent1"]
    for i in range(1, 11):
        routing.enqueue(request(f"B{i}"))
        routing.dispatch()
    assert [user for _, user in offerer.offers] == names[1:11]
    # per offer: agent0 (still the longest idle, still full), the one offered, and FakeOfferer.offer's own count
    assert len(counted) == 2 + 3 * 10


def longest_idle_by_brute_force(routing: Routing, offerer: FakeOfferer, req: OfferRequest) -> str | None:
    """The policy as the module docstring states it, over every agent: what choose() must agree with."""
    members = offerer.members(req.interaction_id)
    eligible = [user for user, channels in routing._agents.items()
                if (st := channels.get(req.channel)) is not None and st.ready and user not in members
                and user not in req.declined and offerer.load(user, req.channel) < routing.capacity(user, req.channel)]
    if req.preferred in eligible:
        return req.preferred
    return min(eligible, key=lambda user: routing.state(user, req.channel).idle_since, default=None)


async def test_choosing_agrees_with_the_policy_over_random_readiness_offers_and_loads() -> None:
    rng = random.Random(7)
    routing, offerer, _ = make(capacity=2)
    names = [f"agent{i}" for i in range(12)]
    for step in range(600):
        user, channel = rng.choice(names), rng.choice(("chat", "sms"))
        action = rng.random()
        if action < 0.3:
            await routing.set_ready(user, channel)
        elif action < 0.45:
            await routing.set_not_ready(user, channel)
        elif action < 0.6:
            routing.mark_offered(user, channel)
        elif action < 0.8:
            offerer.loads[(user, channel)] = rng.randint(0, 2)
        else:
            routing.restore_state(user, channel, {"ready": rng.random() < 0.7, "reason": None, "stateId": "S"})
        req = request(f"I{step}", channel=channel)
        req.declined = set(rng.sample(names, 2))
        offerer.in_interaction[req.interaction_id] = set(rng.sample(names, 1))
        req.preferred = rng.choice((None, rng.choice(names)))
        assert routing.choose(req) == longest_idle_by_brute_force(routing, offerer, req), step


async def test_a_refused_readiness_change_puts_the_agent_back_in_its_place_in_the_idle_order() -> None:
    routing, _, _ = make()
    for name in ("alice", "bob"):
        await routing.set_ready(name, "chat")
    await routing.set_ready("alice", "chat")  # already Ready: still idle the longest
    assert routing.choose(request("A")) == "alice"

    async def refuse(user_id: str) -> None:
        raise RuntimeError("store unavailable")

    routing.on_state_change = refuse
    with pytest.raises(RuntimeError):
        await routing.set_not_ready("alice", "chat")
    assert routing.choose(request("B")) == "alice"  # back in front of bob, not behind him


async def test_fifo_across_queues_and_withdraw() -> None:
    routing, _, _ = make(queues=("default", "sales"))
    for name, queue in (("A", "sales"), ("B", "default"), ("C", "sales")):
        routing.enqueue(request(name, queue))
    assert [r.interaction_id for r in routing.waiting()] == ["A", "B", "C"]
    assert [r.interaction_id for r in routing.waiting("sales")] == ["A", "C"]
    assert [r.interaction_id for r in routing.withdraw("B")] == ["B"]
    with pytest.raises(UnknownQueue):
        routing.enqueue(request("D", "nowhere"))
    assert not routing.has_queue("nowhere") and routing.has_queue("sales")


async def test_requeued_request_keeps_its_place() -> None:
    routing, _, _ = make()
    first, second = request("A"), request("B")
    routing.enqueue(first)
    routing.enqueue(second)
    routing.withdraw("A")
    routing.enqueue(first)
    assert [r.interaction_id for r in routing.waiting()] == ["A", "B"]


async def test_offer_timer_fires_and_is_cancellable() -> None:
    routing, _, _ = make(offer_timeout=0.02)
    fired = asyncio.Event()

    async def expire() -> None:
        fired.set()

    routing.start_timer("one", expire)
    await asyncio.wait_for(fired.wait(), 2)
    assert routing.timer_count() == 0

    async def never() -> None:
        raise AssertionError("cancelled timers must not fire")

    routing.start_timer("two", never)
    routing.cancel_timer("two")
    await asyncio.sleep(0.05)


async def test_close_cancels_every_timer() -> None:
    routing, _, _ = make(offer_timeout=10)

    async def never() -> None:
        raise AssertionError("closed")

    routing.start_timer("a", never)
    routing.start_timer("b", never)
    assert routing.timer_count() == 2
    await routing.close()
    assert routing.timer_count() == 0


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        Routing(Recorder(), capacity=-1)
    with pytest.raises(ValueError):
        Routing(Recorder(), offer_timeout=0)


async def test_a_readiness_change_the_store_refuses_is_undone_and_not_published() -> None:
    routing, offerer, recorder = make()
    await routing.set_ready("alice", "sms")
    kept = routing.state("alice", "sms")
    before = (kept.ready, kept.reason, kept.state_id, kept.idle_since)
    recorder.clear()
    calls = offerer.available_calls

    async def refuse(user_id: str) -> None:
        raise OSError(f"the store is down (writing {user_id})")

    routing.on_state_change = refuse
    with pytest.raises(OSError, match="writing alice"):
        await routing.set_not_ready("alice", "sms", "Break")
    with pytest.raises(OSError):
        await routing.set_ready("bob", "chat")
    state = routing.state("alice", "sms")
    assert (state.ready, state.reason, state.state_id, state.idle_since) == before
    assert not routing.is_ready("bob", "chat")
    assert recorder.events == [] and offerer.available_calls == calls  # nobody heard of either change
