"""Malformed REST input (issue 4): each bad request gets its specific statusCode and statusMessage in the GWS
envelope (and nothing else), changes nothing, and the next valid request still succeeds.

One table; every row runs against a fresh product stack (install_contact_center) where alice holds one
accepted SMS, so `{id}` in a path is a real interaction of hers.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from channels.app import ContactCenterConfig, install_contact_center
from channels.auth import User, UserDirectory, hash_password
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER

PASSWORDS = {"alice": "alice-pw"}
MEDIA_TOKEN = "gateway-secret"
JSON = "application/json"
UNKNOWN = "0000FFFFFFFFFFFF"
MAX_MESSAGE_SIZE = 4096  # the app's body limit is this + 1024 (cometd_broker.app.create_app)
BODY_LIMIT = MAX_MESSAGE_SIZE + 1024


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()}


GATEWAY = {"Authorization": f"Bearer {MEDIA_TOKEN}"}


@dataclass
class Stack:
    client: Any
    sms_id: str

    async def call(self, method: str, path: str, data: bytes | None = None, content_type: str | None = JSON, *,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        sent = dict(basic("alice") if headers is None else headers)
        if content_type is not None:
            sent["Content-Type"] = content_type
        async with self.client.request(method, path.format(id=self.sms_id), data=data, headers=sent) as response:
            text = await response.text()
            assert response.content_type == JSON, (response.status, text)
            return response.status, orjson.loads(text)

    async def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        status, reply = await self.call(method, path, None if body is None else orjson.dumps(body), **kwargs)
        assert status == 200 and reply["statusCode"] == 0, (path, body, status, reply)
        return reply

    async def state(self) -> Any:
        interaction = await self.ok("GET", "/api/v2/interactions/{id}")
        me = await self.ok("GET", "/api/v2/me?subresources=*")
        transcript = await self.ok("GET", "/api/v2/media/sms/interactions/{id}/transcript", headers=GATEWAY)
        return interaction, me, transcript


@pytest.fixture
async def stack(aiohttp_client) -> Stack:
    users = UserDirectory([User("alice", hash_password("alice-pw", iterations=1))])
    app = create_app(BrokerConfig(max_message_size=MAX_MESSAGE_SIZE))
    install_contact_center(app, app[BROKER], ContactCenterConfig(csrf=False, media_token=MEDIA_TOKEN), users=users)
    client = await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())
    stack = Stack(client, "")
    await stack.ok("POST", "/api/v2/me", {"operationName": "StartContactCenterSession", "channels": ["sms"]})
    await stack.ok("POST", "/api/v2/me/channels/sms", {"operationName": "Ready"})
    created = await stack.ok("POST", "/api/v2/media/sms/interactions", {"nickname": "P", "text": "hi"},
                             headers=GATEWAY)
    stack.sms_id = created["id"]
    await stack.ok("POST", "/api/v2/me/smssessions/{id}", {"operationName": "Accept"})
    return stack


def js(value: Any) -> bytes:
    return orjson.dumps(value)


NOT_JSON = "request body is not valid JSON ("
SMS = "/api/v2/me/smssessions/{id}"
IX = "/api/v2/me/interactions/{id}"
ME = "/api/v2/me"
READY = "/api/v2/me/channels/sms"
CREATE = "/api/v2/media/sms/interactions"
MESSAGES = "/api/v2/media/sms/interactions/{id}/messages"
TYPING = "/api/v2/media/sms/interactions/{id}/typing"

# (id, path, body, content type, headers (None: alice's Basic), HTTP status, statusCode, statusMessage;
#  a message ending in "(" is a prefix: the parser's own detail follows)
CASES = [
    # Bodies that are not a JSON object.
    ("not-json", SMS, b"operationName: Complete", JSON, None, 400, 10, NOT_JSON),
    ("truncated-json", IX, b'{"operationName": "Complete"', JSON, None, 400, 10, NOT_JSON),
    ("invalid-utf8", IX, b'{"operationName": "\xff"}', JSON, None, 400, 10, NOT_JSON),
    ("empty-body", SMS, b"", JSON, None, 400, 1, "request body is empty: expected a JSON object"),
    ("json-array", SMS, b'[{"operationName": "Complete"}]', JSON, None, 400, 10, "request body must be a JSON object"),
    ("json-string", ME, b'"StartContactCenterSession"', JSON, None, 400, 10, "request body must be a JSON object"),
    ("json-null", READY, b"null", JSON, None, 400, 10, "request body must be a JSON object"),
    ("media-json-array", CREATE, b"[]", JSON, GATEWAY, 400, 10, "request body must be a JSON object"),
    # operationName missing, unknown, wrong type.
    ("no-operation", SMS, js({"text": "hi"}), JSON, None, 400, 1, "missing parameter 'operationName'"),
    ("null-operation", IX, js({"operationName": None}), JSON, None, 400, 1, "missing parameter 'operationName'"),
    ("no-operation-me", ME, js({}), JSON, None, 400, 1, "missing parameter 'operationName'"),
    ("unknown-operation-ix", IX, js({"operationName": "Bogus"}), JSON, None, 400, 10,
     "unknown operationName 'Bogus'; valid: Accept, Reject, Complete, PlaceInQueue, PlaceInWorkbin, UpdateUserData, "
     "AttachUserData, DeleteUserData, SingleStepTransfer, Transfer, Cancel, GetWorkbinContent"),
    ("unknown-operation-me", ME, js({"operationName": "Bogus"}), JSON, None, 400, 10,
     "unknown operationName 'Bogus' on /me: use one of StartContactCenterSession, EndContactCenterSession"),
    ("unknown-operation-channel", READY, js({"operationName": "Sleep"}), JSON, None, 400, 10,
     "unknown operationName 'Sleep' on a channel: use one of Ready, NotReady"),
    ("numeric-operation", SMS, js({"operationName": 5}), JSON, None, 400, 10,
     "parameter 'operationName' must be a string"),
    ("boolean-operation", IX, js({"operationName": True}), JSON, None, 400, 10,
     "parameter 'operationName' must be a string"),
    # Parameters of the wrong type.
    ("text-number", SMS, js({"operationName": "SendMessage", "text": 5}), JSON, None, 400, 10,
     "parameter 'text' must be a string"),
    ("userid-number", IX, js({"operationName": "Transfer", "userId": 7}), JSON, None, 400, 10,
     "parameter 'userId' must be a string"),
    ("channels-string", ME, js({"operationName": "StartContactCenterSession", "channels": "sms"}), JSON, None,
     400, 10, "parameter 'channels' must be an array"),
    ("reason-number", READY, js({"operationName": "NotReady", "reason": 3}), JSON, None, 400, 10,
     "parameter 'reason' must be a string"),
    ("nickname-number", CREATE, js({"nickname": 5}), JSON, GATEWAY, 400, 10, "parameter 'nickname' must be a string"),
    ("typing-state", TYPING, js({"state": "sideways"}), JSON, GATEWAY, 400, 10,
     "parameter 'state' must be 'started' or 'stopped'"),
    ("missing-text", MESSAGES, js({"body": "hi"}), JSON, GATEWAY, 400, 1, "missing parameter 'text'"),
    # Unknown ids and names.
    ("unknown-sms", SMS.replace("{id}", UNKNOWN), js({"operationName": "Complete"}), JSON, None, 404, 6,
     f"smssession {UNKNOWN} not found"),
    ("unknown-interaction", IX.replace("{id}", UNKNOWN), js({"operationName": "Complete"}), JSON, None, 404, 6,
     f"interaction {UNKNOWN} not found"),
    ("unknown-channel", "/api/v2/me/channels/voice", js({"operationName": "Ready"}), JSON, None, 404, 6,
     "unknown channel 'voice': use one of chat, sms"),
    ("unknown-media", "/api/v2/media/fax/interactions", js({"nickname": "P"}), JSON, GATEWAY, 404, 6,
     "unknown media 'fax' (known: chat, sms)"),
    ("unknown-queue", CREATE, js({"nickname": "P", "queue": "nowhere"}), JSON, GATEWAY, 404, 6,
     "queue nowhere not found"),
    # Wrong Content-Type: a form post is not read as JSON.
    ("form-encoded", SMS, b"operationName=Complete", "application/x-www-form-urlencoded", None, 400, 10, NOT_JSON),
    # Oversized.
    ("oversized", SMS, js({"operationName": "SendMessage", "text": "x" * (2 * BODY_LIMIT)}), JSON, None, 413, 10,
     f"Maximum request body size {BODY_LIMIT} exceeded."),
    # Not authenticated.
    ("no-credentials", SMS, js({"operationName": "Complete"}), JSON, {}, 401, 20,
     "authentication required: log in with Basic credentials"),
    ("bad-gateway-token", CREATE, js({"nickname": "P"}), JSON, {"Authorization": "Bearer nope"}, 401, 20,
     "media gateway token required: Authorization: Bearer <token>"),
]


@pytest.mark.parametrize(("path", "body", "content_type", "headers", "http", "code", "message"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
async def test_malformed_request_gets_its_specific_error_and_changes_nothing(
        stack, path, body, content_type, headers, http, code, message):
    before = await stack.state()
    status, reply = await stack.call("POST", path, body, content_type, headers=headers)
    assert (status, reply.get("statusCode")) == (http, code), reply
    assert set(reply) == {"statusCode", "statusMessage"}, reply
    if message.endswith("("):
        assert reply["statusMessage"].startswith(message) and reply["statusMessage"].endswith(")"), reply
    else:
        assert reply["statusMessage"] == message
    assert await stack.state() == before, "a refused request changed state"
    # The server keeps serving: a valid request right after succeeds.
    assert (await stack.ok("POST", SMS, {"operationName": "SendMessage", "text": "still here"}))["referenceId"]


async def test_a_json_body_sent_as_text_plain_is_accepted(stack):
    """Lenient on the label, strict on the content: a JSON object is read whatever the Content-Type says
    (curl and some GWS clients mislabel it); a body that is not JSON gets the specific error above."""
    status, reply = await stack.call("POST", SMS, js({"operationName": "SendMessage", "text": "hi"}), "text/plain")
    assert status == 200 and reply["statusCode"] == 0, reply
