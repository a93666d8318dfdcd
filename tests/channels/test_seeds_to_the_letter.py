"""The seeds' own samples, driven through the product's wiring (install_contact_center): each request as the seed
writes it, each answer and notification as the seed shows it, and every resource uri the API hands out read back.

- Seed 000 (SMS Invite): the sample posts to `api/v2/smssessions/{id}` (no /me) and names the invitee `userUri`,
  a contact URI; it answers `{"statusCode": 0, "referenceId": 35}` and the inviter hears ParticipantsUpdated, then
  the invitee's ParticipantJoined. Every `uri`/`smssessionUri` of those notifications answers GET.
- Seed 001 (SMS Accept): the StatusChange and ParticipantsUpdated after Accept carry the seed's capabilities,
  with the focus capability named InFocus.
- Seed 002 (Interactions API): Agent is among the permissions of GET /api/v2/interactions.
- Seed 003 (Huawei batchaddparticipant): "This interface supports only the POST method": another method, or a
  path that is no interface, answers in the gateway's JSON envelope.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from typing import Any

import pytest
from desktop_helpers import BrowserSession
from test_model import SEED_000_CONFERENCE, SEED_001_ACCEPTED

from channels import app as app_module
from channels.app import ContactCenterConfig, install_contact_center, plugin
from channels.auth import User, UserDirectory, hash_password
from channels.conversation import ReferenceIds
from channels.huawei import agentgateway
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER

BASE_URL = "http://localhost:8080"  # the seeds' host
SMS_ID = "0000Na9B26EF006E"  # seed 000's session
INVITEE = "429a55994ef64991a77acb77c1cf9041"  # seed 000's contact
MEDIA_TOKEN = "media-secret"
SMS_TOPIC, CHAT_TOPIC = "/v2/me/smssessions", "/v2/me/chats"
# user id -> (first name = default nickname, roles)
PEOPLE = {"testname": ("TestName", {"agent"}), INVITEE: ("BFriend", {"agent"}), "marat": ("Marat", {"agent"}),
          "carol": ("Carol", {"agent"}), "sam": ("Sam", {"agent", "supervisor"})}
WAIT = 3.0


def password(user: str) -> str:
    return f"{user}-pw"


class Desk(BrowserSession):
    """One agent's browser: logged in with Basic once, then the session cookie for REST and CometD."""

    async def login(self, user: str) -> dict[str, Any]:
        credentials = base64.b64encode(f"{user}:{password(user)}".encode()).decode()
        async with self.http.get(self.url("/api/v2/me"), headers={"Authorization": f"Basic {credentials}"}) as r:
            assert r.status == 200
            me = await r.json()
        self.pending: list[dict[str, Any]] = []
        await self.listen(SMS_TOPIC, CHAT_TOPIC, "/v2/me/interactions", "/v2/me/workbins")
        return me

    async def rest(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        async with self.http.request(method, self.url(path), json=body) as response:
            return response.status, await response.json()

    async def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        status, reply = await self.rest(method, path, body)
        assert (status, reply["statusCode"]) == (200, 0), reply
        return reply

    async def ready(self, *channels: str) -> None:
        await self.ok("POST", "/api/v2/me", {"operationName": "StartContactCenterSession", "channels": list(channels)})
        for channel in channels:
            await self.ok("POST", f"/api/v2/me/channels/{channel}", {"operationName": "Ready"})

    async def next(self, count: int, channel: str) -> list[dict[str, Any]]:
        """The next `count` events on `channel` (others on the way are dropped), in order."""
        deadline = time.monotonic() + WAIT
        while sum(1 for e in self.pending if e["channel"] == channel) < count:
            assert time.monotonic() < deadline, f"expected {count} events on {channel}, got {self.pending}"
            async with asyncio.timeout(WAIT):
                replies = await self.bayeux([{"channel": "/meta/connect", "clientId": self.client_id,
                                              "connectionType": "long-polling", "advice": {"timeout": 100}}])
            self.pending += [m for m in replies if not m["channel"].startswith("/meta/")]
        taken = [i for i, e in enumerate(self.pending) if e["channel"] == channel][:count]
        events = [self.pending[i]["data"] for i in taken]
        self.pending = self.pending[taken[-1] + 1:]
        return events


async def make_center(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch, *, last_reference_id: int = 0,
                      **config: Any) -> Any:
    users = UserDirectory(User(name, hash_password(password(name), iterations=1), frozenset(roles), first_name=first)
                          for name, (first, roles) in PEOPLE.items())
    monkeypatch.setattr(app_module, "ReferenceIds", lambda: ReferenceIds(last_reference_id))
    app = create_app(BrokerConfig())
    install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=False, base_url=BASE_URL,
                                                                 media_token=MEDIA_TOKEN, **config), users=users)
    return await aiohttp_server(app)


@pytest.fixture
async def desks():
    opened: list[Desk] = []

    async def open_desk(server: Any, user: str) -> Desk:
        desk = Desk(server)
        opened.append(desk)
        await desk.login(user)
        return desk

    yield open_desk
    for desk in opened:
        await desk.close()


async def customer(desk: Desk, medium: str = "sms", nickname: str = "FirstL") -> str:
    """A customer arrives through the media gateway (its bearer token, not the desk's login)."""
    async with desk.http.post(desk.url(f"/api/v2/media/{medium}/interactions"), json={"nickname": nickname},
                              headers={"Authorization": f"Bearer {MEDIA_TOKEN}"}) as response:
        reply = await response.json()
    assert reply["statusCode"] == 0, reply
    return reply["id"]


def path_of(uri: str) -> str:
    assert uri.startswith(BASE_URL + "/api/v2/"), uri
    return uri[len(BASE_URL):]


def without_participant_ids(resource: dict[str, Any]) -> dict[str, Any]:
    return {**resource, "participants": [{k: v for k, v in p.items() if k != "participantId"}
                                         for p in resource["participants"]]}


# ---------------------------------------------------------------- seed 000: the Invite sample, to the letter


async def test_seed_000_sample_request_and_its_notifications(aiohttp_server, monkeypatch, desks) -> None:
    monkeypatch.setattr("channels.conversation_repository.new_interaction_id", lambda: SMS_ID)
    server = await make_center(aiohttp_server, monkeypatch, last_reference_id=33)
    inviter = await desks(server, "testname")
    await inviter.ready("sms")
    assert await customer(inviter) == SMS_ID
    (offer,) = await inviter.next(1, SMS_TOPIC)
    assert offer["smssession"]["state"] == "Invited"
    accepted = await inviter.ok("POST", f"/api/v2/me/smssessions/{SMS_ID}", {"operationName": "Accept"})
    assert accepted["referenceId"] == 34
    await inviter.next(3, SMS_TOPIC)  # seed 001's Accept sequence
    friend = await desks(server, INVITEE)
    await friend.ready("sms")

    # The seed's request, byte for byte: no /me, the invitee as `userUri`, a contact URI.
    async with inviter.http.post(inviter.url(f"/api/v2/smssessions/{SMS_ID}"), data=(
            '{\n  "operationName": "Invite",\n'
            f'  "userUri": "http://localhost:8080/api/v2/contacts/{INVITEE}"\n}}'),
            headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200
        assert await response.json() == {"statusCode": 0, "referenceId": 35}  # the seed's response

    (invited,) = await friend.next(1, SMS_TOPIC)
    assert (invited["notificationType"], invited["smssession"]["state"]) == ("StatusChange", "Invited")
    await friend.ok("POST", f"/api/v2/me/smssessions/{SMS_ID}", {"operationName": "Accept", "nickname": "BFriend"})

    first, second = await inviter.next(2, SMS_TOPIC)
    # "First Notification", with the uri printed without the page's stray spaces and the one capability name
    # the seeds disagree on spelled InFocus (model.CHATTING_CAPS). Participants: agents in join order, then
    # the customer (the page also repeats its first agent: a copy artefact, not a participant).
    assert {**first, "smssession": without_participant_ids(first["smssession"])} == {
        "notificationType": "ParticipantsUpdated",
        "messageType": "SMSsessionStateChangeMessage",
        "smssession": {
            "participants": [{"nickname": "TestName", "type": "Agent"}, {"nickname": "BFriend", "type": "Agent"},
                             {"nickname": "FirstL", "type": "Customer"}],
            "state": "Chatting",
            "id": SMS_ID,
            "capabilities": SEED_000_CONFERENCE,
            "uri": f"http://localhost:8080/api/v2/smssessions/{SMS_ID}"}}
    # "Second Notification".
    (joined,) = second.pop("messages")
    assert second == {"notificationType": "NewMessages", "messageType": "MessageLogUpdated",
                      "smssessionUri": f"http://localhost:8080/api/v2/smssessions/{SMS_ID}"}
    assert {k: joined[k] for k in ("type", "visibility")} == {"type": "ParticipantJoined", "visibility": "All"}
    assert joined["from"] == first["smssession"]["participants"][1]  # BFriend
    assert set(joined) == {"index", "from", "timestamp", "visibility", "type", "timestampSeconds"}

    # The uri both notifications hand out answers GET: the session as it is now, for each agent in it.
    status, now = await inviter.rest("GET", path_of(first["smssession"]["uri"]))
    assert (status, now) == (200, {"statusCode": 0, "smssession": first["smssession"]})
    assert (await inviter.rest("GET", path_of(second["smssessionUri"]))) == (status, now)
    _, theirs = await friend.rest("GET", f"/api/v2/smssessions/{SMS_ID}")
    assert theirs["smssession"]["participants"] == first["smssession"]["participants"]
    # ... and nobody else learns it exists: the 404 of an unknown id.
    carol = await desks(server, "carol")
    assert await carol.rest("GET", f"/api/v2/smssessions/{SMS_ID}") == (
        404, {"statusCode": 6, "statusMessage": f"smssession {SMS_ID} not found"})
    assert await carol.rest("GET", "/api/v2/smssessions/0000NOPE") == (
        404, {"statusCode": 6, "statusMessage": "smssession 0000NOPE not found"})
    assert (await carol.rest("POST", f"/api/v2/smssessions/{SMS_ID}", {"operationName": "Leave"}))[0] == 404


async def test_user_uri_is_an_alias_of_target_uri_on_both_paths(aiohttp_server, monkeypatch, desks) -> None:
    server = await make_center(aiohttp_server, monkeypatch)
    marat, carol = await desks(server, "marat"), await desks(server, "carol")
    await marat.ready("chat")
    chat_id = await customer(marat, "chat")
    await marat.next(1, CHAT_TOPIC)
    await marat.ok("POST", f"/api/v2/chats/{chat_id}", {"operationName": "Accept"})  # the uri takes operations too
    await carol.ready("chat")
    await marat.ok("POST", f"/api/v2/me/chats/{chat_id}",
                   {"operationName": "Consult", "userUri": f"{BASE_URL}/api/v2/users/carol"})
    (offer,) = await carol.next(1, CHAT_TOPIC)
    assert offer["chat"]["state"] == "Invited" and offer["chat"]["id"] == chat_id
    # One target, under either name; two different ones are refused with nothing changed.
    status, refused = await marat.rest("POST", f"/api/v2/chats/{chat_id}", {
        "operationName": "Transfer", "userUri": "/users/carol", "targetUri": "/users/sam"})
    assert (status, refused) == (400, {"statusCode": 10,
                                       "statusMessage": "userUri is another name for targetUri: give one of them"})


# ---------------------------------------------------------------- seed 001: the capabilities after Accept


async def test_seed_001_accept_notifications_carry_the_seed_capabilities(aiohttp_server, monkeypatch, desks) -> None:
    server = await make_center(aiohttp_server, monkeypatch)
    marat = await desks(server, "marat")
    await marat.ready("sms")
    sms_id = await customer(marat, nickname="PersonP")
    await marat.next(1, SMS_TOPIC)
    reply = await marat.ok("POST", f"/api/v2/me/smssessions/{sms_id}", {"operationName": "Accept",
                                                                          "nickname": "John Doe"})
    status_change, participants, _ = await marat.next(3, SMS_TOPIC)
    assert (status_change["notificationType"], status_change["referenceId"]) == ("StatusChange", reply["referenceId"])
    assert participants["notificationType"] == "ParticipantsUpdated"
    for notification in (status_change, participants):
        caps = notification["smssession"]["capabilities"]
        assert set(SEED_001_ACCEPTED) <= set(caps), caps  # every name the seed lists, InFocus among them
        assert "SetInFocus" not in caps
        assert notification["smssession"]["uri"] == f"{BASE_URL}/api/v2/smssessions/{sms_id}"
    # The InFocus capability permits the SetInFocus operation.
    await marat.ok("POST", f"/api/v2/me/smssessions/{sms_id}", {"operationName": "SetInFocus"})


# ---------------------------------------------------------------- every uri the API hands out answers GET


async def test_every_uri_handed_out_answers_get_for_its_owner_only(aiohttp_server, monkeypatch, desks) -> None:
    server = await make_center(aiohttp_server, monkeypatch)
    marat, carol, sam = await desks(server, "marat"), await desks(server, "carol"), await desks(server, "sam")
    await marat.ready("sms", "chat")
    sms_id = await customer(marat, "sms")
    (offer,) = await marat.next(1, SMS_TOPIC)
    await marat.ok("POST", f"/api/v2/me/smssessions/{sms_id}", {"operationName": "Accept"})
    chat_id = await customer(marat, "chat")
    await marat.next(1, CHAT_TOPIC)
    await marat.ok("POST", f"/api/v2/me/chats/{chat_id}", {"operationName": "Accept"})
    await marat.ok("POST", "/api/v2/me/workbins/marat-inprogress", {"operationName": "AddInteraction",
                                                                     "id": chat_id})

    handed_out: dict[str, str] = {offer["smssession"]["uri"]: "smssession"}  # uri -> the key of its resource
    me = await marat.ok("GET", "/api/v2/me")
    handed_out[me["user"]["uri"]] = "user"
    for listing, key in (("/api/v2/me/smssessions", "smssession"), ("/api/v2/me/chats", "chat"),
                         ("/api/v2/me/interactions", "interaction"), ("/api/v2/interactions", "interaction"),
                         ("/api/v2/me/workbins", "workbin")):
        for uri in (await marat.ok("GET", listing))["uris"]:
            handed_out[uri] = key
        for resource in next(v for k, v in (await marat.ok("GET", listing + "?fields=*")).items() if k != "statusCode"):
            handed_out[resource["uri"]] = key
    content = await marat.ok("GET", "/api/v2/me/workbins/marat-inprogress")
    handed_out.update({item["uri"]: "interaction" for item in content["workbin"]["interactions"]})
    assert {path_of(uri) for uri in handed_out} >= {
        f"/api/v2/smssessions/{sms_id}", "/api/v2/users/marat", f"/api/v2/interactions/{sms_id}",
        f"/api/v2/interactions/{chat_id}", "/api/v2/me/workbins/marat-inprogress"}

    for uri, key in handed_out.items():
        status, reply = await marat.rest("GET", path_of(uri))
        assert (status, reply["statusCode"]) == (200, 0), (uri, reply)
        assert reply[key]["uri"] == uri  # the resource itself, as it is now
    # The current state, not the state when the uri was handed out (the offer said Invited).
    assert (await marat.ok("GET", path_of(offer["smssession"]["uri"])))["smssession"]["state"] == "Chatting"

    # Another agent: the 404 of an unknown id for what is not theirs (the parked chat is no active interaction;
    # the SMS is, and seed 002 lets agents see active ones as summaries: the next test).
    for path in (f"/api/v2/smssessions/{sms_id}", f"/api/v2/chats/{chat_id}", f"/api/v2/interactions/{chat_id}",
                 "/api/v2/users/marat", "/api/v2/me/workbins/marat-inprogress"):
        status, reply = await carol.rest("GET", path)
        assert (status, reply["statusCode"]) == (404, 6), (path, reply)
        assert set(reply) == {"statusCode", "statusMessage"}
    # A supervisor reads users and interactions whole.
    assert (await sam.ok("GET", "/api/v2/users/marat"))["user"] == me["user"]
    assert (await sam.rest("GET", "/api/v2/users/nobody"))[0] == 404
    assert (await sam.ok("GET", f"/api/v2/interactions/{chat_id}"))["interaction"]["workbinId"] == "marat-inprogress"


# ---------------------------------------------------------------- seed 002: agents list every active interaction


async def test_seed_002_an_agent_lists_all_active_interactions(aiohttp_server, monkeypatch, desks) -> None:
    server = await make_center(aiohttp_server, monkeypatch)
    marat, carol = await desks(server, "marat"), await desks(server, "carol")
    await marat.ready("sms")
    mine = await customer(marat, "sms")
    await marat.next(1, SMS_TOPIC)
    await marat.ok("POST", f"/api/v2/me/smssessions/{mine}", {"operationName": "Accept"})
    await marat.ok("POST", f"/api/v2/me/smssessions/{mine}",
                   {"operationName": "AttachUserData", "userData": {"account": "secret-42"}})
    await carol.ready("chat")
    theirs = await customer(carol, "chat", nickname="Private Person")
    await carol.next(1, CHAT_TOPIC)
    await carol.ok("POST", f"/api/v2/me/chats/{theirs}", {"operationName": "Accept"})
    await carol.ok("POST", f"/api/v2/me/chats/{theirs}", {"operationName": "SendMessage", "text": "hush"})
    waiting = await customer(marat, "sms", nickname="Waiting W")  # marat is busy (capacity 1): it is queued
    ended = await customer(marat, "chat")  # carol is busy too; this customer leaves before anyone answers
    async with marat.http.post(marat.url(f"/api/v2/media/chat/interactions/{ended}/end"),
                               headers={"Authorization": f"Bearer {MEDIA_TOKEN}"}) as response:
        assert response.status == 200

    status, listing = await marat.rest("GET", "/api/v2/interactions")
    assert status == 200 and listing["statusCode"] == 0
    uris = {path_of(uri) for uri in listing["uris"]}
    assert {f"/api/v2/interactions/{i}" for i in (mine, theirs, waiting)} <= uris
    assert f"/api/v2/interactions/{ended}" not in uris

    _, full = await marat.rest("GET", "/api/v2/interactions?fields=*")
    by_id = {view["id"]: view for view in full["interactions"]}
    assert by_id[mine] == (await marat.ok("GET", f"/api/v2/interactions/{mine}"))["interaction"]
    assert by_id[mine]["userData"] == {"account": "secret-42"}  # their own, as they see it
    for other, state, medium in ((theirs, "Chatting", "chat"), (waiting, "Queued", "sms")):
        # Someone else's or nobody's: that it exists, its medium, its state, its uri; nothing said, nobody named.
        assert by_id[other] == {"id": other, "mediaType": medium, "state": state,
                                "uri": f"{BASE_URL}/api/v2/interactions/{other}"}
        assert (await marat.ok("GET", f"/api/v2/interactions/{other}"))["interaction"] == by_id[other]
    assert "Private Person" not in str(full) and "hush" not in str(full)
    # Knowing it exists is not working on it.
    assert (await marat.rest("POST", f"/api/v2/me/interactions/{theirs}", {"operationName": "Complete"}))[0] == 404
    assert (await marat.rest("GET", f"/api/v2/chats/{theirs}"))[0] == 404

    # Parked in carol's workbin: not active, so gone from marat's list and its uri 404 for him.
    await carol.ok("POST", "/api/v2/me/workbins/carol-inprogress", {"operationName": "AddInteraction", "id": theirs})
    _, after = await marat.rest("GET", "/api/v2/interactions")
    assert f"{BASE_URL}/api/v2/interactions/{theirs}" not in after["uris"]
    assert (await marat.rest("GET", f"/api/v2/interactions/{theirs}"))[0] == 404


async def test_the_option_keeps_the_list_for_admins_and_supervisors(aiohttp_server, monkeypatch, desks) -> None:
    parser = argparse.ArgumentParser()
    plugin.add_arguments(parser)
    assert parser.parse_args([]).interactions_list_supervisors_only is False
    assert parser.parse_args(["--interactions-list-supervisors-only"]).interactions_list_supervisors_only is True

    server = await make_center(aiohttp_server, monkeypatch, interactions_list_supervisors_only=True)
    marat, sam = await desks(server, "marat"), await desks(server, "sam")
    waiting = await customer(marat, "sms")
    status, refused = await marat.rest("GET", "/api/v2/interactions")
    assert (status, refused["statusCode"]) == (403, 5)
    assert (await marat.rest("GET", f"/api/v2/interactions/{waiting}"))[0] == 404
    assert (await sam.ok("GET", "/api/v2/interactions"))["uris"] == [f"{BASE_URL}/api/v2/interactions/{waiting}"]


# ---------------------------------------------------------------- seed 003: the gateway's envelope everywhere


@pytest.mark.parametrize(("method", "path", "status", "allow"), [
    ("GET", "/agentconf/101/batchaddparticipant", 405, "POST"),  # "supports only the POST method"
    ("PUT", "/agentconf/101/batchaddparticipant", 405, "POST"),
    ("POST", "/onlineagent/101", 405, "PUT"),
    ("POST", "/agentconf/101/batchaddparticipants", 404, None),
    ("GET", "/nosuchinterface", 404, None),
    ("GET", "", 404, None),
])
async def test_seed_003_wrong_method_or_path_answers_in_the_gateway_envelope(aiohttp_server, monkeypatch, desks,
                                                                             method, path, status, allow) -> None:
    server = await make_center(aiohttp_server, monkeypatch)
    desk = Desk(server)
    try:
        async with desk.http.request(method, desk.url(agentgateway.PREFIX + path), json={"addresses": []}) as r:
            assert r.status == status and r.content_type == "application/json"
            assert r.headers.get("Allow") == allow
            body = await r.json()
    finally:
        await desk.close()
    assert set(body) == {"message", "retcode", "result"}
    assert (body["retcode"], body["result"]) == (agentgateway.INVALID_PARAMETER, {})
    assert (method in body["message"] and allow in body["message"]) if allow else "no agent gateway" in body["message"]
