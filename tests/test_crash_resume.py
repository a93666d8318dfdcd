"""Restart safety (issue 4): a broker killed with SIGKILL mid-stream and restarted on the same SQLite event
log; clients that re-handshake with the last replayId they saw lose nothing and see nothing twice.

Everything runs against real `python -m cometd_broker serve` subprocesses over loopback, with plain
aiohttp clients (see crash_helpers.py). Bounded: every loop stops at a deadline well under 40 s.
"""

from __future__ import annotations

import asyncio
import time

from crash_helpers import BayeuxPublisher, RestPublisher, Subscriber, Target, delivery_problems, seq_of, wait_for

from channels.auth import User, UserDirectory, hash_password

SHARED = "/feed"
PERSONAL = "/v2/me/channels"
SUBSCRIBERS = 4
SEQS = 240  # per publisher
KILL_AFTER = SEQS // 2  # acknowledged shared publishes before the SIGKILL
DOWN_FOR = 0.5  # seconds the broker stays dead while the publishers keep trying
BUDGET = 35.0  # seconds for the whole scenario


def broker_flags(event_log: str, users_file: str) -> list[str]:
    return ["--event-log", event_log, "--allow-anonymous", "--users", "u:pw", "--users-file", users_file,
            "--no-csrf", "--state-db", ":memory:", "--log-level", "WARNING"]


async def test_sigkill_mid_stream_then_restart_on_the_same_log_loses_and_repeats_nothing(broker_process, tmp_path):
    users_file = tmp_path / "users.json"
    UserDirectory([User("u", hash_password("pw", iterations=1))]).save(users_file)
    flags = broker_flags(str(tmp_path / "events.db"), str(users_file))
    first = await asyncio.to_thread(broker_process, *flags)
    target = Target(first.url, time.monotonic() + BUDGET)

    subscribers = [Subscriber(f"shared-{i}", target, SHARED) for i in range(SUBSCRIBERS)]
    personal = Subscriber("personal-u", target, PERSONAL, auth={"user": "u", "password": "pw"})
    everyone = [*subscribers, personal]
    listening = [asyncio.create_task(s.run(), name=s.name) for s in everyone]
    shared_publisher = BayeuxPublisher(target, SEQS, channel=SHARED)
    rest_publisher = RestPublisher(target, SEQS)
    try:
        # Every subscriber is subscribed before the first publish: all of them must get seq 0 on.
        await wait_for(lambda: all(s.client_id for s in everyone), 10, "every subscriber to subscribe")
        publishing = [asyncio.create_task(shared_publisher.run(), name="publish-shared"),
                      asyncio.create_task(rest_publisher.run(), name="publish-rest")]

        await wait_for(lambda: len(shared_publisher.acked) >= KILL_AFTER, 15, f"{KILL_AFTER} acknowledged publishes")
        first.process.kill()  # SIGKILL: no shutdown, no final commit, parked connects just break
        first.process.wait(timeout=5)
        killed_at = (len(shared_publisher.acked), len(rest_publisher.acked))
        await asyncio.sleep(DOWN_FOR)
        failures_while_down = shared_publisher.failures
        second = await asyncio.to_thread(broker_process, *flags)  # same event log, new port
        target.url = second.url

        for task in publishing:
            await asyncio.wait_for(task, timeout=max(1.0, target.deadline - time.monotonic()))
        assert shared_publisher.acked == list(range(SEQS)), "the shared publisher ran out of time"
        assert rest_publisher.acked == list(range(SEQS)), "the REST publisher ran out of time"
        assert 0 < killed_at[0] < SEQS and killed_at[1] < SEQS, f"the kill was not mid-stream: {killed_at}"
        assert failures_while_down > 0, "no publish failed while the broker was down: the kill did not bite"

        def caught_up(subscriber: Subscriber) -> bool:
            return SEQS - 1 in {seq_of(e) for e in subscriber.events}

        await wait_for(lambda: all(caught_up(s) for s in everyone), max(1.0, target.deadline - time.monotonic()),
                       "every subscriber to receive the last seq")
        await asyncio.sleep(0.3)  # anything that would arrive twice arrives now
    finally:
        for s in everyone:
            s.stopping = True
        for task in listening:
            task.cancel()
        await asyncio.gather(*listening, return_exceptions=True)

    problems = [p for s in subscribers for p in delivery_problems(s, shared_publisher)]
    problems += delivery_problems(personal, rest_publisher)
    assert problems == [], "\n".join(problems) + "\n--- second broker log:\n" + second.log()[-3000:]
    for s in everyone:
        assert s.handshakes >= 2, f"{s.name} never resumed on the restarted broker"
        # The log covered every requested id: nothing was trimmed, so every resume says recovered.
        assert all(r.get("recovered") is True for r in s.replay_replies), (s.name, s.replay_replies)
