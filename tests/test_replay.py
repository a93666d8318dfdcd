"""Replay: resume from an event id, in order, nothing missing and nothing repeated."""

from __future__ import annotations

import asyncio
from unittest.mock import ANY

from bayeux_helpers import broker_of, connect_message, events_in, handshake_message, reply_to, send
from conftest import USERS

from cometd_broker.eventlog import EventLogUnavailable

ANON = {"allow_anonymous": True}


async def replay_session(client, *, replay=True, connection="long-polling", **handshake_ext) -> str:
    ext = {"replay": replay, **handshake_ext}
    [reply] = await send(client, handshake_message(ext=ext))
    assert reply["successful"] is True, reply
    assert reply["ext"]["replay"] is True
    client_id = reply["clientId"]
    await send(client, connect_message(client_id, timeout=0))
    return client_id


async def subscribe_from(client, client_id: str, channel: str, replay_id: int | None, epoch: str | None = None) -> dict:
    message = {"channel": "/meta/subscribe", "clientId": client_id, "subscription": channel}
    if replay_id is not None:
        message["ext"] = {"replay": {channel: replay_id}}
    if epoch is not None:
        message["ext"]["replayEpoch"] = epoch
    [reply] = await send(client, message)
    assert reply["successful"] is True, reply
    return reply


async def receive(client, client_id: str, count: int, timeout: float = 3.0) -> list[dict]:
    """Connect until `count` events arrived (bounded)."""
    got: list[dict] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got += events_in(await send(client, connect_message(client_id, timeout=200)))
    return got


def seqs(events: list[dict]) -> list[int]:
    return [e["data"]["n"] for e in events]


async def test_events_carry_their_id_and_a_subscriber_resumes_after_one(make_client):
    client = await make_client(**ANON)
    broker = broker_of(client)
    for n in range(1, 11):
        await broker.publish("/feed", {"n": n})
    client_id = await replay_session(client)
    reply = await subscribe_from(client, client_id, "/feed", 3)
    assert reply["ext"]["replay"] == {"recovered": True, "oldest": 1, "latest": 10, "epoch": ANY}
    events = await receive(client, client_id, 7)
    assert seqs(events) == list(range(4, 11))
    assert [e["ext"]["replayId"] for e in events] == list(range(4, 11))

    await broker.publish("/feed", {"n": 11})
    live = await receive(client, client_id, 1)
    assert seqs(live) == [11] and live[0]["ext"]["replayId"] == 11
    assert events_in(await send(client, connect_message(client_id, timeout=0))) == []


async def test_minus_one_is_new_only_and_minus_two_is_everything_retained(make_client):
    client = await make_client(**ANON)
    broker = broker_of(client)
    for n in range(3):
        await broker.publish("/feed", {"n": n})
    new_only = await replay_session(client)
    everything = await replay_session(client)
    await subscribe_from(client, new_only, "/feed", -1)
    await subscribe_from(client, everything, "/feed", -2)
    await broker.publish("/feed", {"n": 3})
    assert seqs(await receive(client, new_only, 1)) == [3]
    assert seqs(await receive(client, everything, 4)) == [0, 1, 2, 3]


async def test_resume_past_retention_says_not_recovered(make_client):
    client = await make_client(retention_count=5, **ANON)
    broker = broker_of(client)
    for n in range(1, 11):
        await broker.publish("/feed", {"n": n})
    client_id = await replay_session(client)
    reply = await subscribe_from(client, client_id, "/feed", 2)
    assert reply["ext"]["replay"] == {"recovered": False, "oldest": 6, "latest": 10, "epoch": ANY}
    assert seqs(await receive(client, client_id, 5)) == [6, 7, 8, 9, 10]


async def test_a_deep_history_is_paged_and_live_events_wait_their_turn(make_client):
    client = await make_client(replay_page=3, max_queue=5, **ANON)
    broker = broker_of(client)
    for n in range(40):
        await broker.publish("/feed", {"n": n})
    client_id = await replay_session(client)
    await subscribe_from(client, client_id, "/feed", 0)
    got: list[dict] = []
    async with asyncio.timeout(5):
        n = 40
        while len(got) < 60:
            if n < 60:  # live events published while the history is still being read
                await broker.publish("/feed", {"n": n})
                n += 1
            replies = await send(client, connect_message(client_id, timeout=50))
            got += events_in(replies)
            assert len(broker.session(client_id).queue) <= 5
    assert seqs(got) == list(range(60))


async def test_a_handshake_map_resumes_per_user_channels_for_that_user_only(make_client):
    client = await make_client()
    broker = broker_of(client)
    for n in range(5):
        await broker.publish_to_user("alice", "/v2/me/interactions", {"n": n})
    await broker.publish_to_user("bob", "/v2/me/interactions", {"n": 99})

    def auth(user):
        return {"authentication": {"user": user, "password": USERS[user]}}

    alice = await replay_session(client, replay={"/v2/me/interactions": 2}, **auth("alice"))
    bob = await replay_session(client, replay={"/v2/me/interactions": 0}, **auth("bob"))
    reply = await subscribe_from(client, alice, "/v2/me/interactions", None)  # the handshake's map applies
    assert reply["ext"]["replay"]["recovered"] is True
    await subscribe_from(client, bob, "/v2/me/interactions", None)
    assert seqs(await receive(client, alice, 3)) == [2, 3, 4]
    assert seqs(await receive(client, bob, 1)) == [99]
    assert events_in(await send(client, connect_message(bob, timeout=100))) == []


async def test_session_expiry_during_a_burst_then_resume_loses_and_repeats_nothing(make_client):
    client = await make_client(max_interval=100, sweep_period=0.02, **ANON)
    broker = broker_of(client)
    first = await replay_session(client)
    await subscribe_from(client, first, "/feed", -1)
    for n in range(20):
        await broker.publish("/feed", {"n": n})
    seen = await receive(client, first, 20)
    last_id = seen[-1]["ext"]["replayId"]

    # The laptop sleeps: no connect, the session expires while events keep coming.
    await asyncio.sleep(0.15)
    for n in range(20, 50):
        await broker.publish("/feed", {"n": n})
        if n == 30:
            await asyncio.sleep(0.1)
    assert broker.session(first) is None
    replies = await send(client, connect_message(first, timeout=0))
    assert reply_to(replies, "/meta/connect")["error"].startswith("402::session_unknown")

    second = await replay_session(client)
    await subscribe_from(client, second, "/feed", last_id)
    for n in range(50, 55):
        await broker.publish("/feed", {"n": n})
    assert seqs(seen + await receive(client, second, 35)) == list(range(55))
    assert events_in(await send(client, connect_message(second, timeout=100))) == []


async def test_without_replay_ext_subscriptions_are_live_only(make_client):
    client = await make_client(**ANON)
    broker = broker_of(client)
    await broker.publish("/feed", {"n": 0})
    [reply] = await send(client, handshake_message())
    assert "ext" not in reply
    client_id = reply["clientId"]
    await send(client, connect_message(client_id, timeout=0))
    [sub] = await send(client, {"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/feed"})
    assert "ext" not in sub
    await broker.publish("/feed", {"n": 1})
    assert seqs(await receive(client, client_id, 1)) == [1]


# ---- ids of another log: the epoch ----------------------------------------------------------------


async def handshake_epoch(client, **ext) -> tuple[str, str]:
    """A replay handshake: (clientId, the replayEpoch its reply names)."""
    [reply] = await send(client, handshake_message(ext={"replay": True, **ext}))
    assert reply["successful"] is True and reply["ext"]["replay"] is True, reply
    await send(client, connect_message(reply["clientId"], timeout=0))
    return reply["clientId"], reply["ext"]["replayEpoch"]


async def test_the_epoch_is_in_the_handshake_and_subscribe_replies_and_the_same_one_resumes(make_client):
    client = await make_client(**ANON)
    broker = broker_of(client)
    for n in range(1, 6):
        await broker.publish("/r", {"n": n})
    client_id, epoch = await handshake_epoch(client)
    assert epoch == await broker.event_log.epoch()
    reply = await subscribe_from(client, client_id, "/r", 3, epoch=epoch)
    assert reply["ext"]["replay"] == {"recovered": True, "oldest": 1, "latest": 5, "epoch": epoch}
    assert seqs(await receive(client, client_id, 2)) == [4, 5]
    # The epoch given at handshake goes with the handshake's map, as the map does.
    again, _ = await handshake_epoch(client, replay={"/r": 4}, replayEpoch=epoch)
    assert (await subscribe_from(client, again, "/r", None))["ext"]["replay"]["recovered"] is True
    assert seqs(await receive(client, again, 1)) == [5]


async def test_a_restarted_memory_log_is_another_log_so_old_ids_are_not_recovered(make_client):
    before = await make_client(**ANON)
    for n in range(1, 6):
        await broker_of(before).publish("/r", {"n": n})
    client_id, old_epoch = await handshake_epoch(before)
    await subscribe_from(before, client_id, "/r", -2)
    assert [e["ext"]["replayId"] for e in await receive(before, client_id, 5)] == [1, 2, 3, 4, 5]
    await before.close()

    after = await make_client(**ANON)  # the broker restarted with --event-log memory:
    broker = broker_of(after)
    for n in range(1, 8):  # past the client's id 5: only the epoch tells these ids from the old ones
        await broker.publish("/r", {"n": 100 + n})
    client_id, epoch = await handshake_epoch(after)
    assert epoch != old_epoch
    reply = await subscribe_from(after, client_id, "/r", 5, epoch=old_epoch)
    assert reply["ext"]["replay"] == {"recovered": False, "oldest": 1, "latest": 7, "epoch": epoch}
    # As after a gap: everything the new log retains, then live events.
    events = await receive(after, client_id, 7)
    assert [e["ext"]["replayId"] for e in events] == list(range(1, 8))
    await broker.publish("/r", {"n": 108})
    assert [e["ext"]["replayId"] for e in await receive(after, client_id, 1)] == [8]
    assert broker.stats.replay_misses == 1


async def test_an_id_above_the_newest_is_not_recovered_even_without_an_epoch(make_client):
    client = await make_client(**ANON)
    broker = broker_of(client)
    for n in range(1, 4):
        await broker.publish("/r", {"n": n})
    client_id = await replay_session(client)
    # A client that saw ids 1-5 of a log that has since started over, and sends no epoch.
    reply = await subscribe_from(client, client_id, "/r", 5)
    assert reply["ext"]["replay"] == {"recovered": False, "oldest": 1, "latest": 3, "epoch": ANY}
    assert seqs(await receive(client, client_id, 3)) == [1, 2, 3]
    await broker.publish("/r", {"n": 4})
    assert [e["ext"]["replayId"] for e in await receive(client, client_id, 1)] == [4]
    # A stream the log never wrote has issued no id at all.
    other = await replay_session(client)
    reply = await subscribe_from(client, other, "/never", 2)
    assert reply["ext"]["replay"] == {"recovered": False, "oldest": 0, "latest": 0, "epoch": ANY}
    assert (await subscribe_from(client, other, "/never/either", 0))["ext"]["replay"]["recovered"] is True


async def test_another_epoch_is_not_recovered_for_ids_but_minus_one_and_minus_two_keep_their_meaning(make_client):
    client = await make_client(**ANON)
    broker = broker_of(client)
    for n in range(1, 4):
        await broker.publish("/r", {"n": n})
    client_id, epoch = await handshake_epoch(client, replayEpoch="an-older-log")
    ids = {"/r": 1, "/s": -1, "/t": -2}
    [reply] = await send(client, {"channel": "/meta/subscribe", "clientId": client_id, "subscription": list(ids),
                                  "ext": {"replay": ids}})
    assert reply["successful"] is True, reply
    summary = reply["ext"]["replay"]
    assert summary["recovered"] is False and summary["epoch"] == epoch
    assert {name: report["recovered"] for name, report in summary["channels"].items()} == {
        "/r": False, "/s": True, "/t": True}
    assert seqs(await receive(client, client_id, 3)) == [1, 2, 3]  # all of /r: it is a gap


async def test_a_deleted_sqlite_log_is_another_log(make_client, tmp_path):
    path = tmp_path / "events.db"
    first = await make_client(event_log=str(path), **ANON)
    for n in range(1, 6):
        await broker_of(first).publish("/r", {"n": n})
    client_id, epoch = await handshake_epoch(first)
    await first.close()

    restarted = await make_client(event_log=str(path), **ANON)  # the same file: the same log
    client_id, same = await handshake_epoch(restarted)
    assert same == epoch
    reply = await subscribe_from(restarted, client_id, "/r", 3, epoch=epoch)
    assert reply["ext"]["replay"] == {"recovered": True, "oldest": 1, "latest": 5, "epoch": epoch}
    await restarted.close()

    for leftover in tmp_path.glob("events.db*"):
        leftover.unlink()
    fresh = await make_client(event_log=str(path), **ANON)
    for n in range(1, 8):
        await broker_of(fresh).publish("/r", {"n": 100 + n})
    client_id, new_epoch = await handshake_epoch(fresh)
    assert new_epoch != epoch
    reply = await subscribe_from(fresh, client_id, "/r", 5, epoch=epoch)
    assert reply["ext"]["replay"] == {"recovered": False, "oldest": 1, "latest": 7, "epoch": new_epoch}
    assert [e["ext"]["replayId"] for e in await receive(fresh, client_id, 7)] == list(range(1, 8))


async def test_a_batch_of_publishes_is_one_commit_of_the_sqlite_log(make_client, tmp_path):
    client = await make_client(event_log=str(tmp_path / "events.db"), **ANON)
    log = broker_of(client).event_log
    reader = await replay_session(client)
    await subscribe_from(client, reader, "/r", 0)
    await subscribe_from(client, reader, "/s", 0)
    publisher = await replay_session(client)
    before = log.commits
    batch = [{"channel": "/r" if n % 3 else "/s", "clientId": publisher, "data": {"seq": n}} for n in range(12)]
    replies = await send(client, batch)
    assert [r["successful"] for r in replies] == [True] * 12
    assert log.commits == before + 1  # recorded together, and delivered only after that commit
    events = await receive(client, reader, 12)
    assert [e["data"]["seq"] for e in events] == list(range(12))  # the batch's order
    assert [e["ext"]["replayId"] for e in events if e["channel"] == "/r"] == list(range(1, 9))
    assert [e["ext"]["replayId"] for e in events if e["channel"] == "/s"] == list(range(1, 5))


async def test_a_replay_epoch_that_is_not_a_string_is_refused(make_client):
    client = await make_client(**ANON)
    [reply] = await send(client, handshake_message(ext={"replay": True, "replayEpoch": 7}))
    assert reply["successful"] is False and reply["error"].startswith("400:")
    assert "ext.replayEpoch" in reply["error"]
    client_id = await replay_session(client)
    [reply] = await send(client, {"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/r",
                                  "ext": {"replay": {"/r": 0}, "replayEpoch": ["x"]}})
    assert reply["successful"] is False and "ext.replayEpoch" in reply["error"]


async def test_a_handshake_succeeds_without_the_epoch_while_the_log_is_unavailable(make_client, monkeypatch):
    client = await make_client(**ANON)

    async def unavailable() -> str:
        raise EventLogUnavailable("redis at redis://127.0.0.1:1/0 is unavailable")

    monkeypatch.setattr(broker_of(client).event_log, "epoch", unavailable)
    [reply] = await send(client, handshake_message(ext={"replay": True}))
    assert reply["successful"] is True and reply["ext"] == {"replay": True}
