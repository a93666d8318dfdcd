"""The Huawei agent gateway inside the product: conference events reach the invited agent both
through the gateway's event poll and on that agent's own CometD channel, and nobody else's."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from channels.app import ContactCenterConfig, install_contact_center
from channels.auth import User, UserDirectory, hash_password
from channels.huawei.agentgateway import MIRROR_CHANNEL
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER

PASSWORDS = {"chair": "chair-pw", "invitee": "invitee-pw", "other": "other-pw"}
AGENT_IDS = {"chair": "101", "invitee": "102", "other": "103"}
GATEWAY = "/agentgateway/resource"


@pytest.fixture
async def client(aiohttp_client):
    users = UserDirectory(User(name, hash_password(pw, iterations=1), agent_id=AGENT_IDS[name])
                          for name, pw in PASSWORDS.items())
    app = create_app(BrokerConfig())
    install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=False, gateway_poll_wait=0.2), users=users)
    return await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())


async def bayeux(client: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with client.post("/api/v2/notifications", json=messages) as response:
        return await response.json()


async def listen(client: Any, user: str) -> str:
    auth = {"authentication": {"user": user, "password": PASSWORDS[user]}}
    [reply] = await bayeux(client, [{"channel": "/meta/handshake", "version": "1.0",
                                     "supportedConnectionTypes": ["long-polling"], "ext": auth}])
    client_id = reply["clientId"]
    await bayeux(client, [{"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"}])
    [sub] = await bayeux(client, [{"channel": "/meta/subscribe", "clientId": client_id,
                                   "subscription": [MIRROR_CHANNEL, "/**"]}])
    assert sub["successful"] is True, sub
    return client_id


async def events(client: Any, client_id: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(3):
        replies = await bayeux(client, [{"channel": "/meta/connect", "clientId": client_id,
                                         "connectionType": "long-polling", "advice": {"timeout": 300}}])
    return [m for m in replies if not m["channel"].startswith("/meta/")]


async def sign_in(client: Any, user: str) -> str:
    async with client.put(f"{GATEWAY}/onlineagent/{AGENT_IDS[user]}", json={"password": PASSWORDS[user]}) as r:
        reply = await r.json()
    assert reply["retcode"] == "0", reply
    return reply["result"]["guid"]


async def test_conference_invite_reaches_the_invitee_by_poll_and_by_cometd(client):
    chair_guid = await sign_in(client, "chair")
    invitee_guid = await sign_in(client, "invitee")
    invitee_desk = await listen(client, "invitee")
    other_desk = await listen(client, "other")

    async with client.post(f"{GATEWAY}/agentconf/101/requestagentconf", headers={"Guid": chair_guid}) as r:
        assert (await r.json())["retcode"] == "0"
    body = {"addresses": [{"addressType": "9", "address": "102"}]}
    async with client.post(f"{GATEWAY}/agentconf/101/batchaddparticipant", json=body,
                           headers={"Guid": chair_guid}) as r:
        assert await r.json() == {"result": {}, "message": "success", "retcode": "0"}

    async with client.get(f"{GATEWAY}/agentevent/102", headers={"Guid": invitee_guid}) as r:
        polled = (await r.json())["event"]
    assert polled["eventType"] == "AgentConf_ParticipantChanged"
    assert polled["content"]["changeType"] == 0 and polled["content"]["participant"] == "102"

    [pushed] = await events(client, invitee_desk)
    assert pushed["channel"] == MIRROR_CHANNEL and pushed["data"] == polled
    assert await events(client, other_desk) == []


async def test_a_gateway_error_is_not_mirrored(client):
    chair_guid = await sign_in(client, "chair")
    desk = await listen(client, "chair")
    async with client.post(f"{GATEWAY}/agentconf/101/batchaddparticipant", json={"addresses": []},
                           headers={"Guid": chair_guid}) as r:
        assert (await r.json())["retcode"] == "000-002"
    assert await events(client, desk) == []
