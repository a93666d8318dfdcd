"""Interaction limits: no agent or customer can grow an interaction (its transcript, a message, its userData)
without bound, and hitting a limit is a clear refusal that changes nothing, never a stuck interaction (leaving
and completing still work)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest
from gws_stack import make_stack
from test_sms_chat_api import SMS_TOPIC, _accepted

from channels.model import InteractionLimits

LIMITS = InteractionLimits(max_text=20, max_messages=8, max_user_data=100)


async def transcript(stack, sms_id: str) -> list[tuple[int, str]]:
    _, reply = await stack.gateway("GET", f"sms/interactions/{sms_id}/transcript")
    return [(m["index"], m["type"]) for m in reply["messages"]]


def test_limits_are_at_least_one() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        InteractionLimits(max_text=0)
    with pytest.raises(ValueError, match=">= 1"):
        InteractionLimits(max_messages=0)
    with pytest.raises(ValueError, match=">= 1"):
        InteractionLimits(max_user_data=0)


async def test_a_text_over_the_limit_is_refused_from_either_side_and_changes_nothing(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client, limits=LIMITS)
    alice = await stack.desk("alice")
    _, refused = await stack.gateway("POST", "sms/interactions", {"nickname": "P", "text": "x" * 21})
    assert refused["statusCode"] == 10 and "at most 20" in refused["statusMessage"], refused
    assert stack.routing.waiting() == []  # no interaction was made

    sms_id = await _accepted(stack, alice)
    before = await transcript(stack, sms_id)
    reply = await stack.operate("alice", "smssessions", sms_id, "SendMessage", text="y" * 21)
    assert reply["statusCode"] == 10 and "21 characters" in reply["statusMessage"], reply
    _, reply = await stack.gateway("POST", f"sms/interactions/{sms_id}/messages", {"text": "z" * 500})
    assert reply["statusCode"] == 10, reply
    assert await transcript(stack, sms_id) == before
    await alice.quiet()
    exactly = await stack.operate("alice", "smssessions", sms_id, "SendMessage", text="y" * 20)
    assert exactly["statusCode"] == 0, exactly  # the limit itself is allowed
    # A farewell is a text too.
    reply = await stack.operate("alice", "smssessions", sms_id, "Complete", text="bye" * 10)
    assert reply["statusCode"] == 10, reply


async def test_a_full_transcript_refuses_more_but_the_agent_can_still_leave(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client, limits=LIMITS)
    alice = await stack.desk("alice")
    sms_id = await _accepted(stack, alice)
    sent = len(await transcript(stack, sms_id))
    while sent < LIMITS.max_messages:
        assert (await stack.gateway("POST", f"sms/interactions/{sms_id}/messages", {"text": "hi"}))[1][
            "statusCode"] == 0
        sent += 1
    await alice.drain()
    full = await transcript(stack, sms_id)
    assert len(full) == LIMITS.max_messages

    for operation, params in (("SendMessage", {"text": "more"}), ("SendStartTypingNotification", {})):
        reply = await stack.operate("alice", "smssessions", sms_id, operation, **params)
        assert reply["statusCode"] == 2 and "8 messages" in reply["statusMessage"], (operation, reply)
    _, reply = await stack.gateway("POST", f"sms/interactions/{sms_id}/messages", {"text": "more"})
    assert reply["statusCode"] == 2, reply
    _, reply = await stack.gateway("POST", f"sms/interactions/{sms_id}/typing", {"state": "started"})
    assert reply["statusCode"] == 2, reply
    assert await transcript(stack, sms_id) == full
    await alice.quiet()

    # Leaving is never refused: the customer can go, and the agent can say goodbye and complete.
    assert (await stack.gateway("POST", f"sms/interactions/{sms_id}/end"))[1]["statusCode"] == 0
    reply = await stack.operate("alice", "smssessions", sms_id, "Complete", text="bye")
    assert reply["statusCode"] == 0, reply
    states = [e["smssession"]["state"] for e in await alice.next(3, SMS_TOPIC) if "smssession" in e]
    assert "Completed" in states, states


async def test_the_options_set_the_limits_of_a_served_api(broker_process) -> None:
    token = "media-secret"
    running = await asyncio.to_thread(broker_process, "--media-token", token, "--message-max-chars", "10",
                                      "--interaction-max-messages", "3")
    base = f"http://127.0.0.1:{running.port}/api/v2/media/sms/interactions"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

        async def post(url: str, body: dict) -> dict:
            async with http.post(url, json=body) as response:
                return await response.json()

        assert (await post(base, {"nickname": "P", "text": "x" * 11}))["statusCode"] == 10
        sms_id = (await post(base, {"nickname": "P", "text": "x" * 10}))["id"]  # joined, and the text: 2
        assert (await post(f"{base}/{sms_id}/messages", {"text": "third"}))["statusCode"] == 0
        assert (await post(f"{base}/{sms_id}/messages", {"text": "fourth"}))["statusCode"] == 2


@pytest.mark.parametrize("flag", ["--message-max-chars", "--interaction-max-messages", "--user-data-max-bytes"])
def test_a_limit_below_one_is_refused_at_startup(flag: str) -> None:
    done = subprocess.run([sys.executable, "-m", "cometd_broker", "serve", "--port", "0", "--media-token", "t",
                           flag, "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "interaction-max-messages and user-data-max-bytes must be >= 1" in done.stderr + done.stdout


async def test_user_data_over_the_limit_is_refused_and_changes_nothing(aiohttp_client) -> None:
    stack = await make_stack(aiohttp_client, limits=LIMITS)
    alice = await stack.desk("alice")
    sms_id = await _accepted(stack, alice)
    ok = await stack.operate("alice", "smssessions", sms_id, "AttachUserData", userData={"a": "x" * 40})
    assert ok["statusCode"] == 0, ok
    await alice.drain()
    for operation, params in (("AttachUserData", {"userData": {"b": "y" * 60}}),
                              ("UpdateUserData", {"userData": {"a": "z" * 95}}),
                              ("SetDisposition", {"disposition": "d" * 80})):
        reply = await stack.operate("alice", "smssessions", sms_id, operation, **params)
        assert reply["statusCode"] == 10 and "at most 100" in reply["statusMessage"], (operation, reply)
    await alice.quiet()
    assert stack.conversations.interaction(sms_id).user_data == {"a": "x" * 40}
    # Small, but nested deeper than it can be stored or sent: refused the same way, not a failed write.
    deep: dict = {}
    for _ in range(300):
        deep = {"k": deep}
    reply = await stack.operate("alice", "smssessions", sms_id, "AttachUserData", userData={"z": deep})
    assert reply["statusCode"] == 10 and "cannot be stored as JSON" in reply["statusMessage"], reply
    assert stack.conversations.interaction(sms_id).user_data == {"a": "x" * 40}
    # Deleting always fits, and makes room.
    assert (await stack.operate("alice", "smssessions", sms_id, "DeleteUserData", keys=["a"]))["statusCode"] == 0
    reply = await stack.operate("alice", "smssessions", sms_id, "AttachUserData", userData={"b": "y" * 60})
    assert reply["statusCode"] == 0, reply
