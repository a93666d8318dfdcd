"""The admin HTTP API: bearer authentication, session views, event paging, the live tail, publish."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from bayeux_helpers import broker_of, connect, handshake_id, open_session, subscribe

from cometd_broker import BrokerConfig

TOKEN = "admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def login(user: str) -> dict:
    return {"ext": {"authentication": {"user": user, "password": f"{user}-secret"}}}


@pytest.fixture
async def admin(make_client):
    return await make_client(admin_token=TOKEN)


async def get(client, path: str, params=None, headers=AUTH):
    async with client.get(path, params=params, headers=headers) as response:
        assert response.content_type == "application/json", (response.status, await response.text())
        return response.status, await response.json()


async def post(client, path: str, body, headers=AUTH):
    data = body if isinstance(body, bytes) else json.dumps(body)
    async with client.post(path, data=data, headers={**headers, "Content-Type": "application/json"}) as response:
        assert response.content_type == "application/json", (response.status, await response.text())
        return response.status, await response.json()


# ------------------------------------------------------------------------------------- authentication


async def test_admin_api_is_off_without_a_token(make_client):
    client = await make_client()
    async with client.get("/admin/sessions", headers=AUTH) as response:
        assert response.status == 404


@pytest.mark.parametrize(("headers", "problem"), [
    ({}, "missing admin token"),
    ({"Authorization": "Bearer not-the-token"}, "wrong admin token"),
    ({"Authorization": f"Basic {TOKEN}"}, "wrong admin token"),
])
async def test_requests_without_the_right_bearer_token_get_401(admin, headers, problem):
    for path in ("/admin/sessions", "/admin/events", "/admin/streams", "/admin/nowhere"):
        async with admin.get(path, headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert problem in (await response.json())["error"]
    status, body = await post(admin, "/admin/publish", {"channel": "/a", "data": 1}, headers=headers)
    assert status == 401 and problem in body["error"]


async def test_unknown_paths_and_methods_answer_json(admin):
    status, body = await get(admin, "/admin/nowhere")
    assert status == 404 and "/admin/nowhere" in body["error"]
    status, body = await get(admin, "/admin/publish")
    assert status == 405


def test_a_short_admin_token_is_refused():
    with pytest.raises(ValueError, match="admin_token must be at least 16 characters"):
        BrokerConfig(admin_token="short").validate()


# ------------------------------------------------------------------------------------- sessions


async def test_sessions_show_subscriptions_queue_depths_and_acks(admin):
    alice = await open_session(admin, subscriptions=["/chat/room", "/v2/me/chats"], **login("alice"))
    bob = await handshake_id(admin, ext={**login("bob")["ext"], "ack": True})
    await subscribe(admin, bob, "/chat/room")
    for n in range(3):  # nobody connects: the events wait in the queues
        status, _ = await post(admin, "/admin/publish", {"channel": "/chat/room", "data": {"n": n}})
        assert status == 200
    await post(admin, "/admin/publish", {"channel": "/v2/me/chats", "data": {"x": 1}, "user": "alice"})

    status, body = await get(admin, "/admin/sessions")
    assert status == 200 and body["total"] == 2
    views = {view["clientId"]: view for view in body["sessions"]}
    assert views[alice]["user"] == "alice"
    assert views[alice]["subscriptions"] == ["/chat/room", "/v2/me/chats"]
    assert views[alice]["queue"]["depth"] == 4 and views[alice]["queue"]["bytes"] > 0
    assert views[alice]["transport"] == "long-polling" and views[alice]["ack"]["enabled"] is False
    assert views[bob]["queue"]["depth"] == 3 and views[bob]["ack"]["enabled"] is True

    status, one = await get(admin, f"/admin/sessions/{alice}")
    assert status == 200 and {**one, "expiresIn": None} == {**views[alice], "expiresIn": None}  # time passes
    assert 0 < one["expiresIn"] <= 10.0  # max_interval after the last message, while no connect is held
    status, body = await get(admin, "/admin/sessions", {"user": "bob"})
    assert [v["clientId"] for v in body["sessions"]] == [bob]
    status, body = await get(admin, "/admin/sessions/nope")
    assert status == 404 and "no session 'nope'" in body["error"]
    status, body = await get(admin, "/admin/sessions", {"limit": "0"})
    assert status == 400 and body["error"] == "limit must be between 1 and 10000, got 0"


async def test_a_parked_connect_shows_as_parked(admin):
    client_id = await open_session(admin, subscriptions=["/chat/room"], **login("carol"))
    poll = asyncio.ensure_future(connect(admin, client_id))
    try:
        async with asyncio.timeout(5):
            while True:
                _, view = await get(admin, f"/admin/sessions/{client_id}")
                if view["parked"]:
                    break
                await asyncio.sleep(0.01)
        assert view["expiresIn"] is None
        await post(admin, "/admin/publish", {"channel": "/chat/room", "data": "wake"})
        async with asyncio.timeout(5):
            replies = await poll
        assert any(m.get("data") == "wake" for m in replies)
    finally:
        poll.cancel()


# ------------------------------------------------------------------------------------- events and streams


async def test_events_are_paged_with_a_cursor_or_an_id(admin):
    for n in range(5):
        await post(admin, "/admin/publish", {"channel": "/chat/room", "data": {"n": n}})
    await post(admin, "/admin/publish", {"channel": "/other", "data": {"n": 99}})

    seen, cursor = [], None
    for _ in range(5):  # bounded: 3 pages expected
        params = {"stream": "/chat/room", "limit": "2", **({"cursor": cursor} if cursor else {})}
        status, body = await get(admin, "/admin/events", params)
        assert status == 200
        seen += [(e["id"], e["message"]["data"]["n"]) for e in body["events"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == [(i + 1, i) for i in range(5)]

    status, body = await get(admin, "/admin/events", {"stream": "/chat/room", "after": "3"})
    assert [e["id"] for e in body["events"]] == [4, 5]
    record = body["events"][0]
    assert set(record) == {"stream", "id", "timestamp", "time", "message"} and record["stream"] == "/chat/room"
    assert record["time"] == datetime.fromtimestamp(record["timestamp"], UTC).isoformat(timespec="milliseconds")[
        :-6] + "Z"  # ISO 8601 UTC with milliseconds, beside the epoch seconds
    status, body = await get(admin, "/admin/events")
    assert len(body["events"]) == 6


@pytest.mark.parametrize(("params", "message"), [
    ({"limit": "many"}, "limit must be an integer, got 'many'"),
    ({"limit": "5000"}, "limit must be between 1 and 1000, got 5000"),
    ({"since": "yesterday"}, "bad since 'yesterday'"),
    ({"channel": "no-slash"}, "bad channel 'no-slash'"),
    ({"cursor": "%%%"}, "bad cursor"),
    ({"since": "200", "until": "100"}, "until must be after since"),
])
async def test_bad_event_queries_get_a_specific_400(admin, params, message):
    status, body = await get(admin, "/admin/events", params)
    assert status == 400 and message in body["error"], body


async def test_events_filter_by_user_channel_and_interaction(admin):
    await post(admin, "/admin/publish", [
        {"channel": "/v2/me/smssessions", "user": "alice", "data": {"smssession": {"id": "IX-1"}}},
        {"channel": "/v2/me/chats", "user": "alice", "data": {"chatUri": "http://x/api/v2/me/chats/IX-2"}},
        {"channel": "/v2/me/chats", "user": "bob", "data": {"interaction": {"id": "IX-2"}}},
        {"channel": "/chat/room", "data": {"text": "IX-2 is not an id match"}},
    ])
    _, body = await get(admin, "/admin/events", {"user": "alice"})
    assert [e["stream"] for e in body["events"]] == ["@alice/v2/me/smssessions", "@alice/v2/me/chats"]
    _, body = await get(admin, "/admin/events", {"channel": "/v2/me/chats"})
    assert [e["stream"] for e in body["events"]] == ["@alice/v2/me/chats", "@bob/v2/me/chats"]
    _, body = await get(admin, "/admin/events", {"interaction": "IX-2"})
    assert [e["stream"] for e in body["events"]] == ["@alice/v2/me/chats", "@bob/v2/me/chats"]


async def test_streams_show_their_bounds(admin):
    await post(admin, "/admin/publish", [{"channel": "/a", "data": n} for n in range(3)])
    await post(admin, "/admin/publish", {"channel": "/v2/me/x", "data": 1, "user": "bob"})
    status, body = await get(admin, "/admin/streams")
    assert status == 200 and body["total"] == 2
    assert body["streams"] == [{"stream": "/a", "oldest": 1, "latest": 3, "retained": 3},
                               {"stream": "@bob/v2/me/x", "oldest": 1, "latest": 1, "retained": 1}]
    _, body = await get(admin, "/admin/streams", {"prefix": "@"})
    assert [s["stream"] for s in body["streams"]] == ["@bob/v2/me/x"]


# ------------------------------------------------------------------------------------- tail


async def read_tail(response, until) -> list[dict]:
    lines, buffer = [], b""
    async with asyncio.timeout(5):
        async for chunk in response.content.iter_any():
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines += [json.loads(line) for line in complete if line]
            if until(lines):
                return lines
    return lines


async def test_tail_receives_a_live_publish_with_its_filters(admin):
    await post(admin, "/admin/publish", {"channel": "/chat/room", "data": "before the tail"})
    params = {"channel": "/chat/**", "timeout": "10"}
    async with admin.get("/admin/events/tail", params=params, headers=AUTH) as response:
        assert response.status == 200 and response.content_type == "application/x-ndjson"
        # Headers arrive once the tail has taken its starting point: later publishes are new.
        await post(admin, "/admin/publish", [{"channel": "/elsewhere", "data": "filtered out"},
                                             {"channel": "/chat/room", "data": "live"}])
        lines = await read_tail(response, lambda lines: any("stream" in line for line in lines))
    events = [line for line in lines if "stream" in line]
    assert [(e["stream"], e["id"], e["message"]["data"]) for e in events] == [("/chat/room", 2, "live")]


async def test_tail_ends_after_its_timeout_with_a_resume_cursor(admin):
    async with admin.get("/admin/events/tail", params={"timeout": "0.3"}, headers=AUTH) as response:
        lines = await read_tail(response, lambda lines: any("end" in line for line in lines))
    assert lines[-1]["end"] == "timeout" and lines[-1]["next"]
    cursor = lines[-1]["next"]
    await post(admin, "/admin/publish", {"channel": "/chat/room", "data": "while away"})
    params = {"cursor": cursor, "timeout": "5"}
    async with admin.get("/admin/events/tail", params=params, headers=AUTH) as response:
        lines = await read_tail(response, lambda lines: any("stream" in line for line in lines))
    assert [line["message"]["data"] for line in lines if "stream" in line] == ["while away"]


async def test_tail_rejects_a_bad_timeout(admin):
    status, body = await get(admin, "/admin/events/tail", {"timeout": "9999"})
    assert status == 400 and "timeout must be between 0 and 300 seconds" in body["error"]


# ------------------------------------------------------------------------------------- publish


async def test_publish_reaches_shared_and_per_user_subscribers(admin):
    alice = await open_session(admin, subscriptions=["/v2/me/chats", "/chat/room"], **login("alice"))
    bob = await open_session(admin, subscriptions=["/v2/me/chats"], **login("bob"))
    status, body = await post(admin, "/admin/publish", {"channel": "/v2/me/chats", "data": {"n": 1}, "user": "alice"})
    assert status == 200 and body == {"published": 1, "delivered": [1]}
    status, body = await post(admin, "/admin/publish", [{"channel": "/chat/room", "data": 2},
                                                        {"channel": "/nobody", "data": 3, "ext": {"k": "v"}}])
    assert status == 200 and body == {"published": 2, "delivered": [1, 0]}
    broker = broker_of(admin)
    assert len(broker.session(alice).queue) == 2 and len(broker.session(bob).queue) == 0


@pytest.mark.parametrize(("body", "message"), [
    (b"{nope", "body is not JSON"),
    ({"data": 1}, "'channel' must be a string"),
    ({"channel": "/a"}, "'data' is required"),
    ({"channel": "/a/*", "data": 1}, "bad channel '/a/*'"),
    ({"channel": "/meta/connect", "data": 1}, "bad channel '/meta/connect'"),
    ({"channel": "/v2/me/chats", "data": 1}, "/v2/me/chats is a per-user channel: give 'user'"),
    ({"channel": "/a", "data": 1, "user": "alice"}, "/a is a shared channel"),
    ({"channel": "/a", "data": 1, "extra": True}, "unknown field 'extra'"),
    ([{"channel": "/a", "data": 1}, 5], "event #1: expected an object"),
    ([], "publish 1 to 1000 events per request, got 0"),
])
async def test_bad_publishes_get_a_specific_400_and_publish_nothing(admin, body, message):
    status, answer = await post(admin, "/admin/publish", body)
    assert status == 400 and message in answer["error"], answer
    assert await broker_of(admin).event_log.streams() == []
