"""TLS on the broker's own port (`--tls-cert`/`--tls-key`): a real `cometd-broker serve` with a certificate made
at test time, on both HTTP paths, driven by aiohttp's TLS client over https long-polling and wss websocket.

The official CometD JavaScript client over https and wss is in tests/interop/test_cometd_js_tls.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import uvloop
from aiohttp.test_utils import TestServer
from bayeux_helpers import (
    both_http_servers,  # noqa: F401  (the http_server fixture, both values)
    connect_message,
    events_in,
    handshake_message,
    publish_message,
    reply_to,
    subscribe_message,
)
from conftest import LeanTestServer, RunningBroker, free_port, start_broker, wait_listening
from redis_helpers import running_redis
from test_cli import dockerfile_instructions
from tls_helpers import TlsFiles, make_self_signed

from channels.auth import User, UserDirectory, hash_password
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER
from cometd_broker.serving import LeanAppRunner
from cometd_broker.tls import TlsError, server_context

HTTP_SERVERS = ["lean", "aiohttp"]
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("users") / "users.json"
    UserDirectory([User("alice", hash_password("alice-pw", iterations=1))]).save(path)
    return str(path)


def https(running: RunningBroker) -> RunningBroker:
    running.url = running.url.replace("http://", "https://", 1)
    return running


@pytest.fixture(scope="module", params=HTTP_SERVERS)
def tls_broker(request: pytest.FixtureRequest, tls: TlsFiles, users_file: str) -> Iterator[RunningBroker]:
    """One TLS broker per HTTP server for the module's client tests (with the contact-center API)."""
    running = https(start_broker("--tls-cert", tls.cert, "--tls-key", tls.key, "--allow-anonymous",
                                 "--http-server", request.param, "--users-file", users_file, "--no-csrf"))
    yield running
    running.stop()


def session(tls: TlsFiles) -> aiohttp.ClientSession:
    """A browser-like client: one keep-alive connection, trusting only the test certificate, keeping
    cookies of an IP host (aiohttp's jar drops those unless `unsafe`)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context(), limit=1),
                                 cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 timeout=aiohttp.ClientTimeout(total=TIMEOUT))


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[list[dict], aiohttp.ClientResponse]:
    async with http.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json(), response


async def long_polling_session(http: aiohttp.ClientSession, url: str, channel: str) -> str:
    replies, response = await post(http, url, [handshake_message(connection_types=["long-polling"])])
    handshake = reply_to(replies, "/meta/handshake")
    assert handshake["successful"] is True, handshake
    # The browser cookie of a TLS port must not leak over plain HTTP.
    set_cookie = response.headers.getall("Set-Cookie")
    assert len(set_cookie) == 1 and set_cookie[0].startswith("BAYEUX_BROWSER="), set_cookie
    assert "; Secure" in set_cookie[0] and "HttpOnly" in set_cookie[0], set_cookie
    client_id = handshake["clientId"]
    replies, _ = await post(http, url, [connect_message(client_id, timeout=0)])
    assert reply_to(replies, "/meta/connect")["successful"] is True
    replies, _ = await post(http, url, [subscribe_message(client_id, channel)])
    assert reply_to(replies, "/meta/subscribe")["successful"] is True
    return client_id


async def held_connect_events(http: aiohttp.ClientSession, url: str, client_id: str) -> list[dict]:
    """Long-poll until events arrive (the first connect after subscribing may come back empty)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            replies, _ = await post(http, url, [connect_message(client_id, timeout=5000)])
            assert reply_to(replies, "/meta/connect")["successful"] is True, replies
            if events := events_in(replies):
                return events


# ---------------------------------------------------------------- clients over TLS

async def test_https_long_polling_round_trip_with_secure_cookie(tls_broker, tls):
    async with session(tls) as listener, session(tls) as publisher:
        client_id = await long_polling_session(listener, tls_broker.url, "/tls/news")
        held = asyncio.create_task(held_connect_events(listener, tls_broker.url, client_id))
        await asyncio.sleep(0.2)  # let the connect be held
        publisher_id = await long_polling_session(publisher, tls_broker.url, "/tls/other")
        replies, _ = await post(publisher, tls_broker.url, [publish_message(publisher_id, "/tls/news", {"n": 1})])
        assert reply_to(replies, "/tls/news")["successful"] is True
        events = await held
        assert [(e["channel"], e["data"]) for e in events] == [("/tls/news", {"n": 1})]
        # The same TLS connection, then a request the lean path hands to aiohttp (set_protocol on the
        # SSL transport), then Bayeux again on aiohttp's protocol.
        async with listener.get(tls_broker.url.rsplit("/", 1)[0] + "/health") as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"
        replies, _ = await post(listener, tls_broker.url, [connect_message(client_id, timeout=0)])
        assert reply_to(replies, "/meta/connect")["successful"] is True
    log = tls_broker.log()
    assert f"listening on https://127.0.0.1:{tls_broker.port}/cometd" in log, log
    assert "Traceback" not in log, log


async def test_wss_websocket_receives_what_an_https_long_poll_client_publishes(tls_broker, tls):
    wss = tls_broker.url.replace("https://", "wss://", 1)
    async with session(tls) as http, http.ws_connect(wss) as ws:
        async def call(message: dict) -> list[dict]:
            await ws.send_json([message])
            async with asyncio.timeout(TIMEOUT):
                while True:
                    replies = await ws.receive_json()
                    if any(r.get("id") == message["id"] for r in replies):
                        return replies

        handshake = reply_to(await call(handshake_message(connection_types=["websocket"])), "/meta/handshake")
        assert handshake["successful"] is True
        client_id = handshake["clientId"]
        await call(connect_message(client_id, connection_type="websocket", timeout=0))
        assert reply_to(await call(subscribe_message(client_id, "/tls/ws")), "/meta/subscribe")["successful"]
        await ws.send_json([connect_message(client_id, connection_type="websocket")])  # held until an event

        async with session(tls) as publisher:
            publisher_id = await long_polling_session(publisher, tls_broker.url, "/tls/unused")
            await post(publisher, tls_broker.url, [publish_message(publisher_id, "/tls/ws", "over wss")])
        async with asyncio.timeout(TIMEOUT):
            events: list[dict] = []
            while not events:
                events = events_in(await ws.receive_json())
        assert [(e["channel"], e["data"]) for e in events] == [("/tls/ws", "over wss")]
        ssl_object = ws._response.connection.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")


async def test_contact_center_session_cookie_is_secure_and_uris_are_https(tls_broker, tls):
    async with session(tls) as http:
        base = tls_broker.url.rsplit("/", 1)[0]
        basic = "Basic " + base64.b64encode(b"alice:alice-pw").decode()
        async with http.get(base + "/api/v2/me", headers={"Authorization": basic}) as response:
            assert response.status == 200, await response.text()
            cookie = response.cookies["JSESSIONID"]
            assert cookie["secure"] is True and cookie["httponly"] is True
            body = await response.json()
        assert body["user"]["uri"].startswith(f"https://127.0.0.1:{tls_broker.port}/"), body


async def test_plain_http_to_the_tls_port_fails_cleanly_and_the_port_keeps_serving(tls_broker, tls):
    def plain_request() -> bytes:
        with socket.create_connection(("127.0.0.1", tls_broker.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST /cometd HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\n\r\n[]")
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            return received

    for _ in range(3):
        answer = await asyncio.to_thread(plain_request)
        assert b"HTTP/1.1" not in answer  # closed (at most a TLS alert): nothing is served in the clear
    # A TLS client that gives up in the middle of its handshake.
    with socket.create_connection(("127.0.0.1", tls_broker.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x05hello")
    async with session(tls) as http:
        await long_polling_session(http, tls_broker.url, "/tls/after")
    log = tls_broker.log()
    assert "Traceback" not in log and "Error" not in log, log
    assert tls_broker.process.poll() is None


async def test_a_client_that_does_not_trust_the_certificate_is_refused(tls_broker):
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.post(tls_broker.url, json=[handshake_message()])


@pytest.mark.parametrize("http_server", HTTP_SERVERS)
async def test_sigterm_answers_a_held_connect_over_tls_before_closing(tls, http_server):
    running = https(await asyncio.to_thread(start_broker, "--tls-cert", tls.cert, "--tls-key", tls.key,
                                            "--allow-anonymous", "--http-server", http_server))
    try:
        async with session(tls) as http:
            client_id = await long_polling_session(http, running.url, "/tls/stop")
            held = asyncio.create_task(post(http, running.url, [connect_message(client_id)]))
            await asyncio.sleep(0.3)
            running.process.send_signal(signal.SIGTERM)
            replies, _ = await held
        assert reply_to(replies, "/meta/connect")["error"].startswith("503::server_shutdown"), replies
        assert await asyncio.to_thread(running.process.wait, 10) == 0
        assert "stopping on SIGTERM: 1 client(s) connected" in running.log(), running.log()
    finally:
        running.stop()


def test_the_docker_healthcheck_asks_https_when_tls_is_configured(tls_broker, tls):
    [check] = [arguments for name, arguments in dockerfile_instructions() if name == "HEALTHCHECK"]
    command = [sys.executable, *json.loads(check.split(" CMD ", 1)[1])[1:]]
    env = {**os.environ, "COMETD_BROKER_PORT": str(tls_broker.port), "COMETD_BROKER_TLS_CERT": tls.cert}
    assert subprocess.run(command, env=env, capture_output=True, timeout=15).returncode == 0
    del env["COMETD_BROKER_TLS_CERT"]  # plain HTTP to the TLS port: unhealthy
    assert subprocess.run(command, env=env, capture_output=True, timeout=15).returncode != 0


# ---------------------------------------------------------------- configuration

def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`cometd-broker serve` expected to stop at start (it would otherwise run until the timeout)."""
    return subprocess.run([sys.executable, "-m", "cometd_broker", "serve", "--port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})})


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cometd-broker: invalid configuration: "), lines[0]
    assert all(phrase in lines[0] for phrase in phrases), lines[0]
    assert "listening" not in result.stdout


def test_a_missing_certificate_stops_serve_with_one_line(tls, tmp_path):
    missing = str(tmp_path / "nope.pem")
    assert_one_line_exit_2(serve("--tls-cert", missing, "--tls-key", tls.key),
                           f"tls_cert {missing}", "No such file or directory")


def test_a_key_of_another_certificate_in_the_config_file_stops_serve(tls, tmp_path):
    other = make_self_signed(tmp_path, "other")
    config = tmp_path / "broker.toml"
    config.write_text(f'[broker]\ntls-cert = "{tls.cert}"\ntls_key = "{other.key}"\n')
    assert_one_line_exit_2(serve("--config", str(config)), f"tls_key {other.key} is not the private key")


def test_certificate_without_key_from_the_environment_is_refused(tls):
    assert_one_line_exit_2(serve(env={"COMETD_BROKER_TLS_CERT": tls.cert}), "tls_cert and tls_key go together")


def test_a_certificate_file_that_is_not_pem_is_refused(tls, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert_one_line_exit_2(serve("--tls-cert", str(junk), "--tls-key", tls.key), "no PEM certificate")
    assert_one_line_exit_2(serve("--tls-cert", tls.cert, "--tls-key", str(junk)), "no PEM private key")


async def test_tls_from_the_config_file_serves_https(tls, tmp_path):
    config = tmp_path / "broker.toml"
    config.write_text(f'[broker]\nallow-anonymous = true\ntls-cert = "{tls.cert}"\ntls-key = "{tls.key}"\n')
    running = https(await asyncio.to_thread(start_broker, "--config", str(config)))
    try:
        async with session(tls) as http:
            await long_polling_session(http, running.url, "/tls/file")
        assert f"listening on https://127.0.0.1:{running.port}/cometd" in running.log()
    finally:
        running.stop()


def test_server_context_requires_tls_1_2_and_reports_encrypted_keys(tls, tmp_path):
    context = server_context(tls.cert, tls.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
    with pytest.raises(TlsError, match="encrypted"):
        server_context(tls.cert, str(encrypted))


def test_config_pairs_the_two_options():
    with pytest.raises(ValueError, match="go together"):
        BrokerConfig(tls_key="/k.pem").validate()
    assert BrokerConfig(tls_cert="/c.pem", tls_key="/k.pem").scheme == "https"
    assert BrokerConfig().scheme == "http"


# ---------------------------------------------------------------- the cookie behind a relay

async def test_browser_cookie_is_secure_by_configuration_on_a_plain_connection(make_client, http_server, tls):
    """A cluster relays long-polls to their owner over the plain private port: the owner's cookie
    follows the configuration, not that connection."""
    for secure, options in ((True, {"tls_cert": tls.cert, "tls_key": tls.key}), (False, {})):
        client = await make_client(allow_anonymous=True, **options)
        response = await client.post("/cometd", json=[handshake_message()])
        assert response.status == 200
        assert (response.cookies["BAYEUX_BROWSER"]["secure"] is True) is secure, response.headers
        assert ("; Secure" in response.headers["Set-Cookie"]) is secure



# ---------------------------------------------------------------- in process, on asyncio's and uvloop's SSL transports

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}  # `serve` runs on either


def on_tls_server(loop: str, http_server: str, tls: TlsFiles, check: Callable[[TestServer], Awaitable[None]]) -> None:
    """`check(server)` against the broker app on a TLS test server, on a fresh event loop of the given kind:
    asyncio's SSL transport and uvloop's are different code."""
    async def main() -> None:
        app = create_app(BrokerConfig(allow_anonymous=True, max_queue=100_000, max_queue_bytes=64 * 1024 * 1024))
        server = LeanTestServer(app) if http_server == "lean" else TestServer(app)
        await server.start_server(ssl=server_context(tls.cert, tls.key))
        try:
            await check(server)
        finally:
            await server.close()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_long_polls_then_a_hand_over_on_one_tls_connection(loop, http_server, tls):
    """Fifty pipelined handshakes in one write, then a GET the lean path hands to aiohttp with the
    bytes it has read: every answer arrives, in order, through the SSL transport."""
    on_tls_server(loop, http_server, tls, lambda server: pipelined(server, tls))


async def pipelined(tls_server: TestServer, tls: TlsFiles) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_server.port, ssl=tls.client_context())
    try:
        requests = b""
        for i in range(50):
            body = orjson.dumps([handshake_message(id=str(i))])
            requests += (b"POST /cometd HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        requests += b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        writer.write(requests)
        async with asyncio.timeout(TIMEOUT):
            received = await reader.read()  # until the server closes after /health
    finally:
        writer.close()
    answers = received.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(answers) == 51, received[-500:]
    ids = [orjson.loads(a.split(b"\r\n\r\n", 1)[1])[0]["id"] for a in answers[:50]]
    assert ids == [str(i) for i in range(50)]
    assert all(b"; Secure" in a for a in answers[:50])
    assert b'"status":"ok"' in answers[50]


@pytest.mark.parametrize("loop", LOOPS)
def test_wss_flow_control_holds_events_while_the_client_does_not_read(loop, http_server, tls):
    """26 MB of events to a websocket client that stops reading: the SSL transport's buffer
    fills, writing pauses (events wait in the session queue), and all of them arrive, in order, once
    the client reads again."""
    on_tls_server(loop, http_server, tls, lambda server: flood(server, tls))


async def flood(tls_server: TestServer, tls: TlsFiles) -> None:
    count, payload = 400, "x" * 65536
    # No size limit on the client: what waited in the queue leaves in one frame when writing resumes.
    async with session(tls) as http, http.ws_connect(str(tls_server.make_url("/cometd")), max_msg_size=0) as ws:
        async def call(message: dict) -> list[dict]:
            await ws.send_json([message])
            async with asyncio.timeout(TIMEOUT):
                while True:
                    replies = await ws.receive_json()
                    if any(r.get("id") == message["id"] for r in replies):
                        return replies

        handshake = reply_to(await call(handshake_message(connection_types=["websocket"])), "/meta/handshake")
        client_id = handshake["clientId"]
        await call(connect_message(client_id, connection_type="websocket", timeout=0))
        await call(subscribe_message(client_id, "/tls/flood"))
        await ws.send_json([connect_message(client_id, connection_type="websocket")])
        broker = tls_server.app[BROKER]
        runner = tls_server.runner
        lean = runner.lean.websockets if isinstance(runner, LeanAppRunner) and runner.lean is not None else None
        paused_at = None
        for n in range(count):
            await broker.publish("/tls/flood", {"n": n, "pad": payload})
            await asyncio.sleep(0.001)  # a frame each: the SSL transport reports back-pressure on a later write
            if paused_at is None and lean and any(w.paused for w in lean):
                paused_at = n
        if lean is not None:  # the lean websocket stopped writing: the rest waits in the session queue
            assert paused_at is not None and paused_at < count - 10, paused_at
            assert len(broker.session(client_id).queue) > 0
        seen: list[int] = []
        async with asyncio.timeout(30):
            while len(seen) < count:
                for message in await ws.receive_json():
                    if message.get("channel") == "/tls/flood" and "data" in message:
                        seen.append(message["data"]["n"])
                    elif message.get("channel") == "/meta/connect":  # the long-poll of websocket: renew it
                        await ws.send_json([connect_message(client_id, connection_type="websocket")])
        assert seen == list(range(count))


# ---------------------------------------------------------------- --workers: TLS outside, plain relays inside

async def test_workers_share_the_tls_port_and_relay_over_their_plain_private_ports(tls, tmp_path):
    """Two workers on one TLS port: a long-poll reaching the worker that does not own its session is
    relayed over the owner's private port, which stays plain HTTP on loopback."""
    with running_redis() as redis_server:
        port = free_port()
        with open(tmp_path / "workers.log", "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "cometd_broker", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "2", "--redis", redis_server.url, "--allow-anonymous",
                 "--tls-cert", tls.cert, "--tls-key", tls.key],
                env={**os.environ, "COMETD_BROKER_EVENT_LOG": redis_server.url}, stdout=log_file,
                stderr=subprocess.STDOUT)
        running = RunningBroker(f"https://127.0.0.1:{port}/cometd", port, process, str(tmp_path / "workers.log"))
        try:
            await asyncio.to_thread(wait_listening, running, 20)
            async with asyncio.timeout(20):
                while "listening on" not in running.log():
                    await asyncio.sleep(0.05)
            assert f"listening on https://127.0.0.1:{port}/cometd" in running.log()

            def connection() -> aiohttp.ClientSession:  # one keep-alive TLS connection: one worker
                return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context(), limit=1),
                                             cookie_jar=aiohttp.DummyCookieJar(),
                                             timeout=aiohttp.ClientTimeout(total=TIMEOUT))

            sessions = [connection() for _ in range(10)]  # handshake, subscribe, publish
            holders = [connection() for _ in range(10)]  # the connects, often on the other worker
            try:
                client_ids = []
                for http, holder in zip(sessions, holders, strict=True):
                    replies, _ = await post(http, running.url, [handshake_message()])
                    client_id = reply_to(replies, "/meta/handshake")["clientId"]
                    client_ids.append(client_id)
                    await post(holder, running.url, [connect_message(client_id, timeout=0)])
                    await post(http, running.url, [subscribe_message(client_id, "/tls/workers")])
                assert len({c[:8] for c in client_ids}) == 2, "every connection reached the same worker"
                await post(sessions[0], running.url, [publish_message(client_ids[0], "/tls/workers", "relayed")])
                for client_id, holder in zip(client_ids, holders, strict=True):
                    events = await held_connect_events(holder, running.url, client_id)
                    assert [e["data"] for e in events] == ["relayed"]
                async with asyncio.timeout(TIMEOUT):  # a worker's /metrics page is up to 2 s old
                    while await forwarded(sessions[0], f"https://127.0.0.1:{port}/metrics") == 0:
                        await asyncio.sleep(0.2)
            finally:
                for http in sessions + holders:
                    await http.close()
            assert "Traceback" not in running.log(), running.log()
        finally:
            running.stop()


async def forwarded(http: aiohttp.ClientSession, url: str) -> float:
    """Long-polls relayed to their owner, summed over the workers."""
    async with http.get(url) as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cometd_forwarded_requests_total{") and 'result="forwarded"' in line)
