"""Every message field the broker reads, sent with each wrong JSON type, over long-polling on both HTTP
paths and over websocket: the message gets a 400 Bayeux error naming the field, never a traceback or a
dropped connection, and the same connection goes on serving the session."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from bayeux_helpers import both_http_servers, broker_of  # noqa: F401  (each test runs on both HTTP paths)
from wire_clients import Connection, handshake, open_connection

ANON = {"allow_anonymous": True}
WRONG = {"array": ["/a"], "object": {"x": 1}, "number": 7, "boolean": True, "null": None}
Build = Callable[[str, Any], dict[str, Any]]


def handshake_with(field: str) -> Build:
    def build(_cid: str, value: Any) -> dict[str, Any]:
        return {"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"],
                field: value}
    return build


def handshake_ext(name: str) -> Build:
    return lambda _cid, value: {**handshake_with("id")(_cid, "h"), "ext": {name: value}}


def connect_with(field: str) -> Build:
    return lambda cid, value: {"channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling",
                               field: value}


def subscribe_with(field: str) -> Build:
    return lambda cid, value: {"channel": "/meta/subscribe", "clientId": cid, "subscription": "/chat", field: value}


def publish_with(field: str) -> Build:
    return lambda cid, value: {"channel": "/chat", "clientId": cid, "data": 1, field: value}


# (the field as the error names it, how to build a message carrying a value in it, the types that are wrong)
FIELDS: list[tuple[str, Build, tuple[str, ...]]] = [
    ("channel", lambda cid, value: {"channel": value, "clientId": cid, "data": 1}, tuple(WRONG)),
    ("clientId", connect_with("clientId"), tuple(WRONG)),
    ("clientId", subscribe_with("clientId"), tuple(WRONG)),
    ("clientId", lambda cid, value: {**publish_with("id")(cid, "p"), "clientId": value}, tuple(WRONG)),
    ("id", connect_with("id"), ("array", "object", "boolean", "null", "fraction")),
    ("id", publish_with("id"), ("array", "object", "boolean", "null", "fraction")),
    ("connectionType", connect_with("connectionType"), tuple(WRONG)),
    ("subscription", subscribe_with("subscription"), ("object", "number", "boolean", "null", "array of numbers")),
    ("subscription", lambda cid, value: {"channel": "/meta/unsubscribe", "clientId": cid, "subscription": value},
     ("object", "number", "boolean", "null", "array of numbers")),
    ("version", handshake_with("version"), tuple(WRONG)),
    ("minimumVersion", handshake_with("minimumVersion"), tuple(WRONG)),
    ("supportedConnectionTypes", handshake_with("supportedConnectionTypes"),
     ("object", "number", "boolean", "null", "array of numbers")),
    ("ext", connect_with("ext"), ("array", "number", "boolean", "null", "string")),
    ("ext", publish_with("ext"), ("array", "number", "boolean", "null", "string")),
    ("advice", connect_with("advice"), ("array", "number", "boolean", "null", "string")),
    ("advice", handshake_with("advice"), ("array", "number", "boolean", "null")),
    ("advice.timeout", lambda cid, value: connect_with("advice")(cid, {"timeout": value}),
     ("array", "object", "boolean", "null", "string")),
    ("ext.ack", handshake_ext("ack"), ("array", "object", "number", "null", "string")),
    ("ext.ack", lambda cid, value: connect_with("ext")(cid, {"ack": value}),
     ("array", "object", "boolean", "null", "string", "fraction")),
    ("ext.replay", handshake_ext("replay"), ("array", "number", "null", "string")),
    ("ext.replay", lambda cid, value: subscribe_with("ext")(cid, {"replay": value}),
     ("array", "number", "boolean", "null", "string")),
    ("ext.replay of a channel", lambda cid, value: subscribe_with("ext")(cid, {"replay": {"/chat": value}}),
     ("array", "object", "boolean", "null", "string", "fraction")),
]
VALUES = {**WRONG, "fraction": 1.5, "string": "x", "array of numbers": [7]}
CASES = [(field, build, kind) for field, build, kinds in FIELDS for kind in kinds]


def case_id(case: tuple[str, Build, str]) -> str:
    field, build, kind = case
    channel = build("c", VALUES[kind]).get("channel")
    return f"{field}-{kind}-on-{channel if isinstance(channel, str) else 'publish'}"


@pytest.fixture(params=["long-polling", "websocket"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


async def opened(make_client, transport: str) -> tuple[Any, Connection, str]:
    client = await make_client(**ANON)
    conn = await open_connection(client, transport)
    return client, conn, await handshake(conn)


async def still_serving(conn: Connection, client_id: str) -> None:
    """A valid request on the same connection is answered: an unsubscribe (answered without waiting on
    anything, the lean path's common case) and a publish (which waits on the engine)."""
    status, replies = await conn.exchange([
        {"channel": "/meta/unsubscribe", "clientId": client_id, "subscription": "/chat", "id": "u"},
        {"channel": "/chat", "clientId": client_id, "data": "after", "id": "p"}])
    assert status == 200
    assert [(r["id"], r["successful"]) for r in replies] == [("u", True), ("p", True)], replies


async def test_each_field_with_each_wrong_type_gets_a_400_naming_it(make_client, transport, caplog):
    """All cases on one connection: each is answered there, with its own error, and the session lives on."""
    client, conn, client_id = await opened(make_client, transport)
    wrong: list[str] = []
    try:
        with caplog.at_level(logging.ERROR):
            for case in CASES:
                field, build, kind = case
                message = build(client_id, VALUES[kind])
                status, replies = await conn.exchange([message])
                reply = replies[0] if len(replies) == 1 else {}
                error = reply.get("error", "")
                if (status != 200 or reply.get("successful") is not False or not error.startswith("400:")
                        or f"{field} must be" not in error):
                    wrong.append(f"{case_id(case)}: HTTP {status} {replies}")
                await still_serving(conn, client_id)
        assert not wrong, "\n".join(wrong)
        assert broker_of(client).session(client_id).subscriptions == set()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    finally:
        await conn.close()


@pytest.mark.parametrize("channel", [["/a"], {}, 7, True, None])
async def test_a_channel_of_another_type_among_valid_messages(make_client, transport, channel, caplog):
    """The bad message of a batch gets its error; the others are handled as usual, in order."""
    _client, conn, client_id = await opened(make_client, transport)
    try:
        with caplog.at_level(logging.ERROR):
            status, replies = await conn.exchange([
                {"channel": "/meta/unsubscribe", "clientId": client_id, "subscription": "/chat", "id": "1"},
                {"channel": channel, "clientId": client_id, "data": 1, "id": "2"},
                {"channel": "/meta/disconnect", "clientId": client_id, "id": "3"}])
        assert status == 200
        assert [(r["id"], r["successful"]) for r in replies] == [("1", True), ("2", False), ("3", True)], replies
        assert replies[1]["channel"] == "/meta/unsuccessful"
        kind = {list: "array", dict: "object", int: "number", bool: "boolean"}.get(type(channel), "null")
        assert replies[1]["error"] == f"400::channel must be a string, got {kind}"
        assert not caplog.records, caplog.text
        await handshake(conn)  # the connection carries on
    finally:
        await conn.close()


@pytest.mark.parametrize("body", [b'[{"channel":["/a"]}]', b'{"channel":{}}', b'[{"channel":7,"clientId":[]}]'])
async def test_a_lone_message_with_a_non_string_channel(make_client, transport, body):
    _client, conn, _client_id = await opened(make_client, transport)
    try:
        status, [reply] = await conn.exchange(None, raw=body)
        assert status == 200
        assert reply["successful"] is False and reply["error"].startswith("400::channel must be a string")
        await handshake(conn)
    finally:
        await conn.close()


@pytest.mark.parametrize(("advice", "error"), [
    ([], "400::advice must be an object, got array"),
    ({"timeout": "x"}, "400::advice.timeout must be a number of milliseconds, got string"),
    ({"timeout": -1}, "400::advice.timeout must be >= 0 milliseconds"),
])
async def test_a_connect_with_bad_advice_is_refused_and_the_next_connect_works(make_client, transport, advice,
                                                                                error):
    _client, conn, client_id = await opened(make_client, transport)
    try:
        connect = {"channel": "/meta/connect", "clientId": client_id, "connectionType": transport}
        _, [reply] = await conn.exchange([{**connect, "advice": advice, "id": "bad"}])
        assert (reply["id"], reply["successful"], reply["error"]) == ("bad", False, error)
        _, [reply] = await conn.exchange([{**connect, "advice": {"timeout": 0}, "id": "good"}])
        assert (reply["id"], reply["successful"]) == ("good", True), reply
    finally:
        await conn.close()


async def test_replay_and_ack_extensions_of_the_wrong_type_change_nothing(make_client, transport):
    """A subscribe whose ext.replay is malformed subscribes nothing; a connect whose ext.ack is malformed
    acknowledges nothing (the session's unacknowledged batches stay for the next valid connect)."""
    client, conn, _ = await opened(make_client, transport)
    try:
        _, [reply] = await conn.exchange([{"channel": "/meta/handshake", "version": "1.0", "id": "h",
                                           "supportedConnectionTypes": [transport],
                                           "ext": {"ack": True, "replay": True}}])
        client_id = reply["clientId"]
        session = broker_of(client).session(client_id)
        assert session.ack is not None
        _, [reply] = await conn.exchange([{"channel": "/meta/subscribe", "clientId": client_id,
                                           "subscription": "/chat", "ext": {"replay": {"/chat": "0"}}, "id": "s"}])
        assert reply["successful"] is False and reply["error"].startswith("400:/chat:ext.replay of a channel")
        assert session.subscriptions == set()
        _, [reply] = await conn.exchange([{"channel": "/meta/connect", "clientId": client_id, "id": "c",
                                           "connectionType": transport, "ext": {"ack": "1"}}])
        assert reply["successful"] is False and reply["error"].startswith("400::ext.ack must be an integer")
        assert session.ack.batch == 0  # no batch was sent or acknowledged
        _, [reply] = await conn.exchange([{"channel": "/meta/connect", "clientId": client_id, "id": "c2",
                                           "connectionType": transport, "ext": {"ack": 0}}])
        assert reply["successful"] is True and reply["ext"] == {"ack": 1}, reply
    finally:
        await conn.close()
