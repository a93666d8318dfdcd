"""Property/fuzz tests: the Bayeux decoder and validator, `Broker.handle_now` and `handle`, the Bayeux
endpoint (long-polling on both HTTP paths, and websocket) and the REST API bodies never crash, always answer
in their documented shape with a specific error, and leave state unchanged when they refuse something.

Hypothesis drives synchronous tests; each keeps one event loop (and one server) for all its examples, so the
file stays fast. Example counts are moderate on purpose (the whole file runs in well under 30 s).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import LeanTestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.app import CENTER, ContactCenterConfig, install_contact_center
from channels.auth import User, UserDirectory, hash_password
from cometd_broker import Broker, BrokerConfig, bayeux, create_app
from cometd_broker.app import BROKER
from cometd_broker.broker import RequestContext
from cometd_broker.exchange import Exchange

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
FEW = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
ERROR = re.compile(r"\A\d{3}:[^:]*:.+\Z", re.S)  # the Bayeux error grammar code:args:message
CID = "$CID"  # replaced by a real, handshaken clientId

# --------------------------------------------------------------------------- strategies

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
channel_names = st.sampled_from([
    "/meta/handshake", "/meta/connect", "/meta/subscribe", "/meta/unsubscribe", "/meta/disconnect", "/meta",
    "/meta/other", "/feed", "/feed/a", "/feed/*", "/feed/**", "/service/echo", "/service/**", "/v2/me/interactions",
    "/v2/me/**", "", "/", "feed", "/a//b", "/a/*/b", "/é", "/a b",
]) | st.text(max_size=12)
transports = st.sampled_from(["long-polling", "callback-polling", "websocket", "bogus", ""])
replay_ids = st.integers(-3, 40) | json_values
messages = st.fixed_dictionaries({}, optional={
    "channel": channel_names | json_values,
    "id": st.text(max_size=6) | st.integers(-(2**63), 2**63 - 1) | json_values,
    "clientId": st.just(CID) | st.text(max_size=8) | json_values,
    "version": st.just("1.0") | json_values,
    "minimumVersion": st.just("1.0") | json_values,
    "supportedConnectionTypes": st.lists(transports, max_size=3) | json_values,
    "connectionType": transports | json_values,
    "subscription": channel_names | st.lists(channel_names, max_size=3) | json_values,
    "data": json_values,
    "advice": st.fixed_dictionaries({}, optional={"timeout": st.integers(-5, 30) | json_values}) | json_values,
    "ext": st.fixed_dictionaries({}, optional={
        "replay": st.booleans() | st.dictionaries(channel_names, replay_ids, max_size=3) | json_values,
        "ack": st.booleans() | st.integers(-2, 5) | json_values,
        "authentication": st.fixed_dictionaries({"user": st.sampled_from(["alice", "nobody"]),
                                                 "password": st.sampled_from(["alice-secret", "wrong"])})
        | json_values,
    }) | json_values,
})
# Mostly well-formed messages (so batches get past validation into the broker's deeper paths).
valid_channels = st.sampled_from(["/meta/handshake", "/meta/connect", "/meta/subscribe", "/meta/unsubscribe",
                                  "/meta/disconnect", "/feed", "/feed/a", "/service/echo", "/v2/me/interactions"])
subscriptions = st.sampled_from(["/feed", "/feed/*", "/feed/**", "/v2/me/interactions", "/v2/me/**", "/service/echo",
                                 "/meta/connect", "/a//b"])
plausible = st.builds(
    lambda channel, client_id, message_id, extra: {"channel": channel, "clientId": client_id, "id": message_id,
                                                   **extra},
    valid_channels, st.just(CID) | st.text(max_size=4), st.text("0123456789", min_size=1, max_size=3),
    st.fixed_dictionaries({}, optional={
        "version": st.just("1.0"),
        "supportedConnectionTypes": st.lists(transports, min_size=1, max_size=2),
        "connectionType": transports,
        "subscription": subscriptions | st.lists(subscriptions, min_size=1, max_size=3),
        "data": json_values,
        "advice": st.fixed_dictionaries({"timeout": st.integers(0, 20)}),
        "ext": st.fixed_dictionaries({}, optional={
            "replay": st.booleans() | st.dictionaries(subscriptions, st.integers(-3, 5), max_size=2),
            "ack": st.booleans() | st.integers(-1, 3),
            "authentication": st.fixed_dictionaries({"user": st.sampled_from(["alice", "nobody"]),
                                                     "password": st.sampled_from(["alice-secret", "wrong"])}),
        }),
    }))
# A plausible message with one field (or one extension field) of any JSON type: past the first checks,
# so a field the broker reads with the wrong type meets the code that reads it.
MESSAGE_FIELDS = ["channel", "id", "clientId", "version", "minimumVersion", "supportedConnectionTypes",
                  "connectionType", "subscription", "data", "advice", "ext"]
mistyped = st.one_of(
    st.builds(lambda m, name, value: {**m, name: value}, plausible, st.sampled_from(MESSAGE_FIELDS), json_values),
    st.builds(lambda m, name, value: {**m, "ext": {name: value}}, plausible, st.sampled_from(["ack", "replay"]),
              json_values),
    st.builds(lambda m, name, value: {**m, "ext": {"replay": {name: value}}}, plausible, subscriptions, json_values),
    st.builds(lambda m, value: {**m, "advice": {"timeout": value}}, plausible, json_values),
    st.builds(lambda m, value: {**m, "channel": value}, plausible, json_values),  # the field read first
)
batches = st.lists(plausible | plausible | mistyped | messages, max_size=5)


def with_client_id(batch: list[dict[str, Any]], client_id: str) -> list[dict[str, Any]]:
    return [{**m, "clientId": client_id} if m.get("clientId") == CID else m for m in batch]


# --------------------------------------------------------------------------- (a) decoder, validator, handle


@SETTINGS
@given(json_values | batches)
def test_decode_body_and_validate_message_never_raise(parsed):
    try:
        decoded = bayeux.decode_body(parsed)
    except bayeux.BodyError as exc:
        assert ERROR.match(exc.error) and exc.http_status == 400, exc.error
        assert not isinstance(parsed, dict)
        return
    assert isinstance(decoded, list) and all(isinstance(m, dict) for m in decoded)
    for message in decoded:
        problem = bayeux.validate_message(message)
        assert problem is None or ERROR.match(problem), problem
        if problem is None:
            assert isinstance(message["channel"], str)


def check_replies(batch: list[dict[str, Any]], replies: list[dict[str, Any]]) -> None:
    """One reply per message (only the handshake's, when a batch starts with one), each with a channel and a
    boolean `successful`, the request's id echoed, a specific error when unsuccessful; all serializable."""
    if batch and batch[0].get("channel") == bayeux.HANDSHAKE:
        batch = batch[:1]  # the spec: the rest of a batch starting with a handshake is ignored
    assert len(replies) == len(batch), (batch, replies)
    for message, reply in zip(batch, replies, strict=True):
        assert isinstance(reply.get("channel"), str), reply
        assert type(reply.get("successful")) is bool, reply
        if message.get("id") is not None:
            assert reply.get("id") == message["id"], (message, reply)
        if reply["successful"] is False:
            assert ERROR.match(reply.get("error", "")), reply
    orjson.dumps(replies)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


@SETTINGS
@given(batches, batches)
def test_broker_handle_answers_every_message_and_never_raises(first, second):
    async def scenario() -> None:
        broker = Broker(BrokerConfig(allow_anonymous=True, users="alice:alice-secret", timeout=50))
        try:
            await broker.publish("/feed", {"n": 1})  # something to replay
            ctx = RequestContext("long-polling")
            handshake = {"channel": bayeux.HANDSHAKE, "version": "1.0", "supportedConnectionTypes": ["long-polling"],
                         "ext": {"replay": True, "ack": True}}
            [reply] = (await broker.handle([handshake], ctx)).replies
            client_id = reply["clientId"]
            for batch in (first, second):  # the second batch meets whatever state the first left
                batch = with_client_id(batch, client_id)
                # As the lean transports do: the synchronous path first, `handle` when it declines.
                result = broker.handle_now(batch, ctx) or await broker.handle(batch, ctx)
                check_replies(batch, result.replies)
                if result.deliver_to is not None:
                    Exchange(broker).take_events(result.deliver_to, result.connect_reply)
        finally:
            await broker.close()

    run(scenario())


# --------------------------------------------------------------------------- (b) the Bayeux HTTP endpoint


def in_loop(test: Callable[[asyncio.AbstractEventLoop], None]) -> None:
    loop = asyncio.new_event_loop()
    try:
        test(loop)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def bayeux_client(http_server: str) -> TestClient:
    config = BrokerConfig(allow_anonymous=True, users="alice:alice-secret", timeout=50, max_message_size=4096,
                          max_batch=4)
    app = create_app(config)
    server = LeanTestServer(app) if http_server == "lean" else TestServer(app)
    client = TestClient(server, cookie_jar=aiohttp.DummyCookieJar())
    await client.start_server()
    return client


async def handshake_ok(client: TestClient) -> str:
    async with client.post("/cometd", json=[{"channel": "/meta/handshake", "version": "1.0",
                                             "supportedConnectionTypes": ["long-polling"]}]) as response:
        assert response.status == 200
        [reply] = await response.json()
    assert reply["successful"] is True, reply
    return reply["clientId"]


async def check_bayeux_answer(client: TestClient, data: bytes, content_type: str) -> None:
    async with client.post("/cometd", data=data, headers={"Content-Type": content_type}) as response:
        text = await response.text()
        status = response.status
        assert status < 500, (status, text)
        assert response.content_type == "application/json", (response.content_type, text)
    answer = orjson.loads(text)
    check_answer_shape(answer)
    if status != 200:
        [reply] = answer  # a body that could not be read: one specific error
        assert reply["channel"] == bayeux.UNSUCCESSFUL and reply["successful"] is False


bodies = st.one_of(
    st.binary(max_size=200).map(lambda b: (b, "application/json")),
    st.binary(max_size=200).map(lambda b: (b, "text/plain")),
    (json_values | batches).map(lambda v: (orjson.dumps(v), "application/json")),
    st.text(max_size=60).map(lambda t: (urlencode({"message": t}).encode(), "application/x-www-form-urlencoded")),
    (json_values | batches).map(
        lambda v: (urlencode({"message": orjson.dumps(v).decode()}).encode(), "application/x-www-form-urlencoded")),
    st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3).map(
        lambda d: (urlencode(d).encode(), "application/x-www-form-urlencoded")),
    st.binary(min_size=4000, max_size=5000).map(lambda b: (b, "application/json")),  # around max_message_size
)


@pytest.mark.parametrize("http_server", ["lean", "aiohttp"])
def test_bayeux_endpoint_always_answers_a_json_array_and_keeps_serving(http_server):
    def test(loop: asyncio.AbstractEventLoop) -> None:
        client = loop.run_until_complete(bayeux_client(http_server))
        client_id = loop.run_until_complete(handshake_ok(client))
        try:
            @SETTINGS
            @given(bodies)
            def check(body: tuple[bytes, str]) -> None:
                loop.run_until_complete(check_bayeux_answer(client, *body))

            @FEW
            @given(batches | st.lists(mistyped, min_size=1, max_size=2))
            def check_batch(batch: list[dict[str, Any]]) -> None:
                data = orjson.dumps(with_client_id(batch, client_id))
                loop.run_until_complete(check_bayeux_answer(client, data, "application/json"))

            # Batches first: a body the lean path does not serve (too large, say) hands the client's kept-alive
            # connection to aiohttp for good, and the batches must meet the lean path too.
            check_batch()
            check()
            loop.run_until_complete(handshake_ok(client))  # still serving
        finally:
            loop.run_until_complete(client.close())

    in_loop(test)


def check_answer_shape(answer: Any) -> None:
    """A reply array: objects with a channel; replies with a boolean `successful` and, when false, an error."""
    assert isinstance(answer, list), answer
    for message in answer:
        assert isinstance(message, dict) and isinstance(message.get("channel"), str), message
        if "successful" in message:
            assert type(message["successful"]) is bool
            if not message["successful"]:
                assert ERROR.match(message.get("error", "")), message


async def check_websocket_answer(ws: aiohttp.ClientWebSocketResponse, text: str, probe: int) -> None:
    """Send one frame, then a handshake probe in its own frame; read until the probe is answered (frames are
    handled in order), checking every frame on the way and that the socket stays open."""
    probe_id = f"probe-{probe}"
    await ws.send_str(text)
    await ws.send_str(orjson.dumps([{"channel": "/meta/handshake", "version": "1.0", "id": probe_id,
                                     "supportedConnectionTypes": ["websocket"]}]).decode())
    async with asyncio.timeout(5):
        while True:
            frame = await ws.receive()
            assert frame.type is aiohttp.WSMsgType.TEXT, (frame, text)
            answer = orjson.loads(frame.data)
            check_answer_shape(answer)
            if any(m.get("id") == probe_id and m.get("successful") is True for m in answer):
                return


@pytest.mark.parametrize("http_server", ["lean", "aiohttp"])
def test_websocket_answers_every_frame_and_stays_open(http_server):
    def test(loop: asyncio.AbstractEventLoop) -> None:
        client = loop.run_until_complete(bayeux_client(http_server))
        ws = loop.run_until_complete(client.ws_connect("/cometd"))
        probes = iter(range(10**6))
        try:
            loop.run_until_complete(check_websocket_answer(ws, "[]", next(probes)))
            client_id = loop.run_until_complete(websocket_handshake(ws))

            @FEW
            @given((json_values | batches).map(orjson.dumps) | st.text(max_size=40).map(str.encode))
            def check_frame(data: bytes) -> None:
                loop.run_until_complete(check_websocket_answer(ws, data.decode(), next(probes)))

            @FEW
            @given(batches)
            def check_batch(batch: list[dict[str, Any]]) -> None:
                text = orjson.dumps(with_client_id(batch, client_id)).decode()
                loop.run_until_complete(check_websocket_answer(ws, text, next(probes)))

            check_frame()
            check_batch()
        finally:
            loop.run_until_complete(ws.close())
            loop.run_until_complete(client.close())

    in_loop(test)


async def websocket_handshake(ws: aiohttp.ClientWebSocketResponse) -> str:
    await ws.send_str(orjson.dumps([{"channel": "/meta/handshake", "version": "1.0", "id": "ws",
                                     "supportedConnectionTypes": ["websocket"]}]).decode())
    async with asyncio.timeout(5):
        [reply] = orjson.loads((await ws.receive()).data)
    assert reply["successful"] is True, reply
    return reply["clientId"]


# --------------------------------------------------------------------------- (c) the REST API bodies

PASSWORDS = {"alice": "alice-pw", "ada": "ada-pw"}
MEDIA_TOKEN = "gateway-secret"


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()}


class Rest:
    """The product wiring (install_contact_center) with alice holding one accepted SMS."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.sms_id = ""

    @classmethod
    async def start(cls) -> Rest:
        users = UserDirectory([User("alice", hash_password("alice-pw", iterations=1)),
                               User("ada", hash_password("ada-pw", iterations=1), frozenset({"agent", "admin"}))])
        app = create_app(BrokerConfig())
        install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=False, media_token=MEDIA_TOKEN),
                               users=users)
        rest = cls(TestClient(TestServer(app), cookie_jar=aiohttp.DummyCookieJar()))
        await rest.client.start_server()
        await rest.expect_ok("POST", "/api/v2/me", {"operationName": "StartContactCenterSession",
                                                    "channels": ["sms", "chat"]})
        await rest.expect_ok("POST", "/api/v2/me/channels/sms", {"operationName": "Ready"})
        await rest.new_sms()
        return rest

    async def new_sms(self) -> None:
        """A fresh SMS, offered to and accepted by alice."""
        reply = await self.expect_ok("POST", "/api/v2/media/sms/interactions", {"nickname": "P", "text": "hi"},
                                     headers={"Authorization": f"Bearer {MEDIA_TOKEN}"})
        self.sms_id = reply["id"]
        await self.expect_ok("POST", f"/api/v2/me/smssessions/{self.sms_id}", {"operationName": "Accept"})

    async def call(self, method: str, path: str, body: Any = None, *, data: bytes | None = None,
                   headers: dict[str, str] | None = None, user: str = "alice") -> tuple[int, dict[str, Any]]:
        sent = {**basic(user), **(headers or {})}
        if data is None and body is not None:
            data = orjson.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        async with self.client.request(method, path, data=data, headers=sent) as response:
            text = await response.text()
            assert response.status < 500, (method, path, data, response.status, text)
            assert response.content_type == "application/json", (path, data, response.status, text)
            reply = orjson.loads(text)
        assert isinstance(reply, dict) and type(reply.get("statusCode")) is int, reply
        if reply["statusCode"] not in (0, 7):  # 7: partial success carries per-channel results
            assert set(reply) == {"statusCode", "statusMessage"}, reply
            assert isinstance(reply["statusMessage"], str) and reply["statusMessage"].strip(), reply
            assert response.status in (200, 400, 401, 403, 404, 409, 413, 415), (response.status, reply)
        return response.status, reply

    async def expect_ok(self, method: str, path: str, body: Any, **kwargs: Any) -> dict[str, Any]:
        _, reply = await self.call(method, path, body, **kwargs)
        assert reply["statusCode"] == 0, (path, body, reply)
        return reply

    async def state(self) -> Any:
        """Everything a failed request must leave as it was."""
        _, interaction = await self.call("GET", f"/api/v2/interactions/{self.sms_id}")
        _, me = await self.call("GET", "/api/v2/me?subresources=*")
        _, sms = await self.call("GET", f"/api/v2/me/smssessions/{self.sms_id}")
        _, transcript = await self.call("GET", f"/api/v2/media/sms/interactions/{self.sms_id}/transcript",
                                        headers={"Authorization": f"Bearer {MEDIA_TOKEN}"})
        count = len(list(self.client.app[CENTER].conversations.all_interactions()))
        return interaction, me, sms, transcript, count

    async def fuzz(self, path: str, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> bool:
        """One request; True when it succeeded (and so may have changed anything)."""
        before = await self.state()
        _, reply = await self.call("POST", path.format(id=self.sms_id), data=data,
                                   headers={"Content-Type": content_type, **(headers or {})})
        if reply["statusCode"] == 0:
            return True
        assert await self.state() == before, (path, data, reply)
        return False


OPERATIONS = st.sampled_from(["Accept", "Reject", "Complete", "PlaceInQueue", "PlaceInWorkbin", "UpdateUserData",
                              "AttachUserData", "DeleteUserData", "SingleStepTransfer", "Transfer", "Cancel",
                              "SendMessage", "SendTypingStarted", "Leave", "Ready", "NotReady",
                              "StartContactCenterSession", "EndContactCenterSession", "GetWorkbinContent"])
rest_params = {"text": json_values, "userData": json_values, "keys": json_values,
    "queueName": json_values, "userId": json_values, "nickname": json_values, "channels": json_values,
    "reason": json_values, "workbin": json_values, "state": json_values}
typed_params = {"text": st.text(max_size=10), "userData": st.dictionaries(st.text(max_size=5), st.text(max_size=5),
                                                                        max_size=2),
                "keys": st.lists(st.text(max_size=5), max_size=2), "queueName": st.sampled_from(["default", "nowhere"]),
                "userId": st.sampled_from(["ada", "alice", "ghost"]), "nickname": st.text(max_size=6),
                "channels": st.lists(st.sampled_from(["sms", "chat", "voice"]), max_size=2),
                "reason": st.text(max_size=6), "state": st.sampled_from(["started", "stopped", "x"])}
rest_objects = st.one_of(
    st.tuples(OPERATIONS, st.fixed_dictionaries({}, optional=typed_params)).map(
        lambda t: {"operationName": t[0], **t[1]}),
    st.fixed_dictionaries({}, optional=typed_params),
    st.tuples(OPERATIONS, st.fixed_dictionaries({}, optional=rest_params)).map(
        lambda t: {"operationName": t[0], **t[1]}),
    st.fixed_dictionaries({}, optional={"operationName": json_values, **rest_params}),
    st.dictionaries(st.text(max_size=10), json_values, max_size=4),
)
rest_bodies = st.one_of(
    rest_objects.map(lambda v: (orjson.dumps(v), "application/json")),
    json_values.map(lambda v: (orjson.dumps(v), "application/json")),
    st.binary(max_size=120).map(lambda b: (b, "application/json")),
    rest_objects.map(lambda v: (orjson.dumps(v), "text/plain")),
    st.text(max_size=40).map(lambda t: (t.encode(), "application/x-www-form-urlencoded")),
)
REST_PATHS = ["/api/v2/me/smssessions/{id}", "/api/v2/me/interactions/{id}", "/api/v2/me",
              "/api/v2/me/channels/sms", "/api/v2/me/smssessions/0000FFFFFFFFFFFF"]
MEDIA_PATHS = ["/api/v2/media/sms/interactions", "/api/v2/media/sms/interactions/{id}/messages",
               "/api/v2/media/sms/interactions/{id}/typing", "/api/v2/media/fax/interactions"]


def test_rest_bodies_always_get_the_envelope_and_failures_change_nothing():
    def test(loop: asyncio.AbstractEventLoop) -> None:
        stack = [loop.run_until_complete(Rest.start())]

        def fuzz(path: str, body: tuple[bytes, str], headers: dict[str, str] | None = None) -> None:
            if loop.run_until_complete(stack[0].fuzz(path, *body, headers=headers)):
                # It did something: the next example starts from a fresh stack, alice holding one SMS.
                loop.run_until_complete(stack[0].client.close())
                stack[0] = loop.run_until_complete(Rest.start())

        try:
            @SETTINGS
            @given(st.sampled_from(REST_PATHS), rest_bodies)
            def agent(path: str, body: tuple[bytes, str]) -> None:
                fuzz(path, body)

            @FEW
            @given(st.sampled_from(MEDIA_PATHS), rest_bodies)
            def gateway(path: str, body: tuple[bytes, str]) -> None:
                fuzz(path, body, {"Authorization": f"Bearer {MEDIA_TOKEN}"})

            agent()
            gateway()
            loop.run_until_complete(stack[0].expect_ok("GET", "/api/v2/me", None))  # still serving
        finally:
            loop.run_until_complete(stack[0].client.close())

    in_loop(test)
