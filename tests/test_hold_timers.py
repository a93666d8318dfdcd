"""The timeouts of held /meta/connects (session.HoldTimers): never early, at most a tick late,
and a connect released for another reason is not timed out afterwards."""

from __future__ import annotations

import asyncio
import time

from cometd_broker.security import Principal
from cometd_broker.session import MESSAGES, TIMEOUT, HoldTimers, ParkedConnect, ServerSession, SessionQueue


def _session(name: str) -> ServerSession:
    return ServerSession(name, Principal(None, frozenset()), None, SessionQueue(10, 10_000, False), "long-polling")


def _park(session: ServerSession, holds: HoldTimers, timeout: float, log: list) -> None:
    started = time.monotonic()
    parked = ParkedConnect({"id": session.client_id}, lambda reason: log.append(
        (session.client_id, reason, time.monotonic() - started)))
    session.park(parked, timeout, holds, asyncio.get_running_loop())


async def test_timeouts_fire_in_order_never_early_and_at_most_a_tick_late() -> None:
    holds = HoldTimers(tick=0.02)
    log: list = []
    for name, timeout in (("c", 0.15), ("a", 0.05), ("b", 0.1)):
        _park(_session(name), holds, timeout, log)
    await asyncio.sleep(0.3)
    assert [(name, reason) for name, reason, _ in log] == [("a", TIMEOUT), ("b", TIMEOUT), ("c", TIMEOUT)]
    for name, _, waited in log:
        wanted = {"a": 0.05, "b": 0.1, "c": 0.15}[name]
        assert wanted <= waited < wanted + 0.1, (name, waited)
    holds.close()


async def test_a_connect_released_for_messages_is_not_timed_out_later() -> None:
    holds = HoldTimers(tick=0.02)
    log: list = []
    session = _session("x")
    _park(session, holds, 0.05, log)
    session.unpark(MESSAGES)
    await asyncio.sleep(0.15)
    assert [reason for _, reason, _ in log] == [MESSAGES]
    assert session.parked is None
    holds.close()


async def test_a_newer_park_gets_its_own_timeout() -> None:
    holds = HoldTimers(tick=0.02)
    log: list = []
    session = _session("x")
    _park(session, holds, 0.05, log)
    _park(session, holds, 0.2, log)  # supersedes the first
    await asyncio.sleep(0.12)
    assert [reason for _, reason, _ in log] == ["superseded"]
    await asyncio.sleep(0.2)
    assert [reason for _, reason, _ in log] == ["superseded", TIMEOUT]
    holds.close()
