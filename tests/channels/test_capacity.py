"""How many interactions an agent holds at once per channel: `--capacity`, routing, and where the desktop reads it."""

from __future__ import annotations

import pytest
from convo_helpers import Recorder
from test_agent_api import PASSWORDS, Desktop
from test_routing import FakeOfferer

from channels.app import ContactCenterConfig, install_contact_center, parse_capacity
from channels.auth import User, UserDirectory, hash_password
from channels.model import Role
from channels.routing import OfferRequest, Routing
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER


def chat(ident: str, channel: str = "chat") -> OfferRequest:
    return OfferRequest(ident, channel, Role.OWNER, queue="default")


async def test_channel_capacity_overrides_the_default_and_a_user_override_wins() -> None:
    offerer = FakeOfferer()
    routing = Routing(Recorder(), capacity=1, channel_capacity={"chat": 2})
    routing.attach(offerer, offerer.available)
    await routing.set_ready("alice", "chat")
    await routing.set_ready("alice", "sms")
    for ident in ("C1", "C2", "C3"):
        routing.enqueue(chat(ident))
    for ident in ("S1", "S2"):
        routing.enqueue(chat(ident, "sms"))
    routing.dispatch()
    assert sorted(i for i, _ in offerer.offers) == ["C1", "C2", "S1"]  # chat 2, sms the default 1
    assert routing.capacity("alice", "chat") == 2 and routing.capacity("alice", "sms") == 1
    routing.set_capacity("alice", "chat", 3)
    routing.dispatch()
    assert "C3" in [i for i, _ in offerer.offers]
    with pytest.raises(ValueError):
        Routing(Recorder(), channel_capacity={"chat": -1})


@pytest.mark.parametrize(("text", "expected"), [
    ("1", (1, {})),
    ("", (1, {})),
    ("3", (3, {})),
    ("chat=2", (1, {"chat": 2})),
    ("2, chat=4 ,sms=0", (2, {"chat": 4, "sms": 0})),
])
def test_parse_capacity(text, expected) -> None:
    assert parse_capacity(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("voice=2", "unknown channel 'voice'"),
    ("chat=-1", "must be N or CHANNEL=N"),
    ("many", "must be N or CHANNEL=N"),
    ("=2", "must be N or CHANNEL=N"),
])
def test_parse_capacity_refuses_bad_entries(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_capacity(text)


@pytest.fixture
async def desktop(aiohttp_server):
    users = UserDirectory(User(name, hash_password(pw, iterations=1), first_name=name.capitalize())
                          for name, pw in PASSWORDS.items())
    app = create_app(BrokerConfig())
    install_contact_center(app, app[BROKER], ContactCenterConfig(capacity=1, channel_capacity={"chat": 3}),
                           users=users)
    opened = Desktop(await aiohttp_server(app))
    yield opened
    await opened.close()


async def test_the_desktop_reads_each_channels_capacity_from_me_and_channel_events(desktop):
    await desktop.login("alice")
    await desktop.listen("/v2/me/channels")
    status, reply = await desktop.rest("POST", "/api/v2/me", {"operationName": "StartContactCenterSession",
                                                              "channels": ["sms", "chat"]})
    assert reply == {"statusCode": 0}
    events = await desktop.events()
    assert {c["channel"]: c["capacity"] for e in events for c in e["data"]["channels"]} == {"sms": 1, "chat": 3}
    status, me = await desktop.rest("GET", "/api/v2/me?subresources=*")
    assert status == 200
    assert {c["channel"]: c["capacity"] for c in me["user"]["channels"]} == {"sms": 1, "chat": 3}
