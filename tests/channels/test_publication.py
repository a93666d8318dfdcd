"""The engine's notifications go out once their run's write is stored, in run order, several runs' at once:
channels/publication.py on its own, then the engine on a real SQLite store and the broker's batch publish."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from convo_helpers import DIRECTORY

from channels.conversation import Conversations
from channels.model import SMS
from channels.outbox import Notice
from channels.publication import Publications, one_by_one
from channels.routing import Routing
from channels.store import StateStore
from cometd_broker import Broker, BrokerConfig
from cometd_broker.engine import EngineUnavailable


class Recorder:
    """A PublishMany that records each call; refuses the notifications whose data says so."""

    def __init__(self) -> None:
        self.calls: list[list[Notice]] = []

    async def __call__(self, notices: Sequence[Notice]) -> list[BaseException | None]:
        self.calls.append(list(notices))
        await asyncio.sleep(0)
        return [EngineUnavailable("refused") if data.get("refuse") else None for _, _, data in notices]

    @property
    def published(self) -> list[int]:
        return [data["n"] for call in self.calls for _, _, data in call]


def notices(*numbers: int, **extra: Any) -> list[Notice]:
    return [("alice", "/v2/me/chats", {"n": n, **extra}) for n in numbers]


async def test_runs_are_published_in_their_order_whatever_order_their_writes_settle_in() -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    publications = Publications(recorder)
    writes = [loop.create_future() for _ in range(3)]
    runs = [asyncio.create_task(publications.publish_after(write, notices(2 * i, 2 * i + 1)))
            for i, write in enumerate(writes)]
    await asyncio.sleep(0.01)
    writes[2].set_result(None)
    writes[1].set_result(None)
    await asyncio.sleep(0.01)
    assert recorder.calls == []  # the first run's write is not stored: nobody may overtake it
    writes[0].set_result(None)
    await asyncio.gather(*runs)
    assert recorder.published == [0, 1, 2, 3, 4, 5]
    assert len(recorder.calls) == 1  # stored by then, all three: one call to the broker


async def test_a_run_whose_write_failed_publishes_nothing_and_the_next_ones_go_on() -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    publications = Publications(recorder)
    writes = [loop.create_future() for _ in range(3)]
    runs = [asyncio.create_task(publications.publish_after(write, notices(i))) for i, write in enumerate(writes)]
    writes[0].set_result(None)
    writes[1].set_exception(OSError("the disk is full"))
    writes[2].set_result(None)
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], OSError)
    assert recorder.published == [0, 2]


async def test_a_notification_the_broker_refused_fails_its_own_run_only() -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    publications = Publications(recorder)
    stored = loop.create_future()
    runs = [asyncio.create_task(publications.publish_after(stored, notices(0))),
            asyncio.create_task(publications.publish_after(stored, notices(1, refuse=True))),
            asyncio.create_task(publications.publish_after(stored, notices(2)))]
    await asyncio.sleep(0)
    stored.set_result(None)
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], EngineUnavailable)


async def test_a_caller_that_stops_waiting_does_not_stop_its_notifications() -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    publications = Publications(recorder)
    stored = loop.create_future()
    run = asyncio.create_task(publications.publish_after(stored, notices(7)))
    await asyncio.sleep(0)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert not stored.cancelled()  # the write is not the caller's to cancel
    stored.set_result(None)
    await asyncio.sleep(0.01)
    assert recorder.published == [7]


async def test_one_by_one_publishes_each_and_reports_each_failure() -> None:
    sent: list[str] = []

    async def publish(user_id: str, topic: str, data: dict[str, Any]) -> None:
        if data.get("refuse"):
            raise EngineUnavailable("refused")
        sent.append(data["n"])

    outcomes = await one_by_one(publish)([*notices(0), *notices(1, refuse=True), *notices(2)])
    assert sent == [0, 2]
    assert outcomes[0] is None and isinstance(outcomes[1], EngineUnavailable) and outcomes[2] is None


# ================================================================ the engine on a real store


async def test_concurrent_operations_share_commits_and_notify_in_order(tmp_path) -> None:
    """Many customers write at once: their runs queue while a write commits, so the store commits fewer
    times than there are runs, and each agent still hears of its messages in the order they were sent."""
    published: list[tuple[str, dict[str, Any]]] = []
    batches: list[int] = []

    async def publish_many(events: Sequence[Notice]) -> list[BaseException | None]:
        batches.append(len(events))
        published.extend((user_id, data) for user_id, _, data in events)
        return [None] * len(events)

    async def publish(*_: Any) -> None:  # routing's own (readiness); the engine publishes through publish_many
        return None

    async def engine_publish(*_: Any) -> None:
        raise AssertionError("the engine publishes through publish_many")

    store = StateStore(tmp_path / "state.db")
    routing = Routing(publish, capacity=100)
    conv = Conversations(engine_publish, routing, DIRECTORY, store=store, publish_many=publish_many)
    await routing.set_ready("alice", "sms")
    ids = [(await conv.create_inbound(SMS, f"Person{i}", text="hello")).id for i in range(20)]
    for sms in ids:
        await conv.operate("alice", SMS, sms, "Accept", {})
    commits_before = store.commits
    await asyncio.gather(*(conv.customer_message(SMS, sms, f"{sms} {n}") for n in range(5) for sms in ids))
    runs = 100
    assert store.commits - commits_before < runs / 2, (store.commits - commits_before, batches)
    texts = [m["text"] for user_id, data in published if data.get("notificationType") == "NewMessages"
             for m in data["messages"] if m.get("text", "").split(" ")[0] in ids]
    for sms in ids:
        assert [t for t in texts if t.startswith(sms + " ")] == [f"{sms} {n}" for n in range(5)]
    assert store.load("interaction")[ids[-1]]["log"][-1]["text"] == f"{ids[-1]} 4"
    await conv.close()
    await store.close()


# ================================================================ the broker's batch publish


async def test_publish_to_users_checks_every_channel_before_publishing_any() -> None:
    broker = Broker(BrokerConfig())
    with pytest.raises(ValueError, match="per-user prefix"):
        await broker.publish_to_users([("alice", "/v2/me/chats", {"n": 1}), ("bob", "/shared", {"n": 2})])
    assert await broker.event_log.streams() == []
    results = await broker.publish_to_users([("alice", "/v2/me/chats", {"n": 1}), ("bob", "/v2/me/chats", {"n": 2}),
                                             ("alice", "/v2/me/chats", {"n": 3})])
    assert [result.event_id for result in results] == [1, 1, 2]  # ids per user's stream, in order
    await broker.close()


async def test_a_drain_cancelled_mid_publish_leaves_nobody_waiting() -> None:
    """The loop ends while the broker call is in flight: every caller gets an error, none waits forever."""
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    async def never(notices: Sequence[Notice]) -> list[BaseException | None]:
        entered.set()
        await asyncio.Event().wait()
        return []

    publications = Publications(never)
    stored = loop.create_future()
    stored.set_result(None)
    runs = [asyncio.create_task(publications.publish_after(stored, notices(n))) for n in range(3)]
    await entered.wait()
    later = asyncio.create_task(publications.publish_after(stored, notices(9)))  # queued behind the stuck call
    await asyncio.sleep(0)
    drain = publications._drain_task
    assert drain is not None
    drain.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(*runs, later, return_exceptions=True), 5)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes), outcomes
