"""The lean path (http/lean_http.py) against aiohttp itself, on malformed and unusual requests.

Each case's bytes go over a raw loopback socket to two brokers: one served as `cometd-broker serve`
does (lean path in front of aiohttp) and one served by aiohttp alone. A valid long-poll follows each
case on the same connection (pipelined), so a server that frames the case differently answers the
second request differently. The lean path must never be more permissive than aiohttp: wherever aiohttp
refuses (4xx, or closes without an answer) the first or the second request, so does the lean path. It
may refuse more, and with another 4xx.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from aiohttp.test_utils import TestServer
from conftest import LeanTestServer

from cometd_broker import BrokerConfig, create_app

BODY = b'[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]'
START = b"POST /cometd HTTP/1.1\r\n"
HOST = b"Host: 127.0.0.1\r\n"
JSON = b"Content-Type: application/json\r\n"
WS_KEY = b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


def request(*fields: bytes, start: bytes = START, host: bytes = HOST, body: bytes = BODY, length: bool = True,
            eol: bytes = b"\r\n") -> bytes:
    """A long-poll POST with `fields` after Host and Content-Type (each a whole field line, without its end)."""
    lines = [start.rstrip(b"\r\n"), host.rstrip(b"\r\n"), JSON.rstrip(b"\r\n"), *fields]
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"".join(line + eol for line in lines if line) + eol + body


VALID = request()


def chunked(*chunks: bytes, fields: tuple[bytes, ...] = ()) -> bytes:
    return request(b"Transfer-Encoding: chunked", *fields, length=False, body=b"".join(chunks))


@dataclass
class Case:
    name: str
    data: bytes | list[bytes]  # a list: written in pieces, with a pause between them
    then: bytes | None = VALID  # pipelined after the case on the same connection
    # Send `then` after a pause: aiohttp refuses a whole segment whose later bytes are malformed or follow
    # a "close", before answering its valid first request; the lean path answers in order, then refuses.
    pause: bool = False


MANY_FIELDS = b"".join(b"X-Field-%d: v\r\n" % i for i in range(3000)).rstrip(b"\r\n")

CASES = [
    Case("valid", VALID),
    Case("valid-in-pieces", [VALID[:20], VALID[20:60], VALID[60:]]),
    Case("bare-LF-hides-chunked", request(b"X-Note: a\nTransfer-Encoding: chunked")),
    Case("bare-CR-in-value", request(b"X-Note: a\rb")),
    Case("LF-only-head", request(eol=b"\n")),
    Case("LF-only-head-in-pieces", [request(eol=b"\n")[:40], request(eol=b"\n")[40:]]),
    Case("head-ends-CRLF-LF", VALID.replace(b"\r\n\r\n", b"\r\n\n", 1)),
    Case("NUL-in-value", request(b"X-Note: a\x00b")),
    Case("NUL-in-name", request(b"X-No\x00te: a")),
    Case("CR-in-name", request(b"X-No\rte: a")),
    Case("DEL-in-name", request(b"X-Note\x7f: a")),
    Case("DEL-in-value", request(b"X-Note: a\x7f")),
    Case("CTL-in-value", request(b"X-Note: a\x01b")),
    Case("bracket-in-name", request(b"X-Note[: a")),
    Case("8-bit-in-name", request(b"X-N\xe9te: a")),
    Case("obs-text-in-value", request(b"X-Note: caf\xe9")),
    Case("obs-fold", request(b"X-Note: a\r\n folded")),
    Case("space-before-colon", request(b"Content-Type : application/json")),
    Case("tab-before-colon", request(b"X-Note\t: a")),
    Case("FF-before-Content-Length", request(b"Content-Length: \x0c%d" % len(BODY), length=False)),
    Case("VT-after-Content-Length", request(b"Content-Length: %d\x0b" % len(BODY), length=False)),
    Case("trailing-space-Content-Length", request(b"Content-Length: %d " % len(BODY), length=False)),
    Case("duplicate-Content-Length", request(b"Content-Length: %d" % len(BODY))),
    Case("conflicting-Content-Length", request(b"Content-Length: 2")),
    Case("Content-Length-list", request(b"Content-Length: %d, %d" % (len(BODY), len(BODY)), length=False)),
    Case("negative-Content-Length", request(b"Content-Length: -1", length=False)),
    Case("empty-Content-Length", request(b"Content-Length:", length=False)),
    Case("5000-digit-Content-Length", request(b"Content-Length: " + b"9" * 5000, length=False)),
    Case("Content-Length-2**64", request(b"Content-Length: %d" % 2**64, length=False)),
    Case("Content-Length-2**64-1", request(b"Content-Length: %d" % (2**64 - 1), length=False), then=None),
    Case("Content-Length-short", request(b"Content-Length: 10", length=False)),  # the rest: a bad next head
    Case("Content-Length-and-chunked", request(b"Transfer-Encoding: chunked")),
    Case("chunked-and-Content-Length", chunked(b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY),
                                               fields=(b"Content-Length: 5",))),
    Case("chunked", chunked(b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))),
    Case("chunked-bad-size", chunked(b"zz\r\n%s\r\n0\r\n\r\n" % BODY)),
    Case("chunked-size-overflow", chunked(b"1%s\r\n%s\r\n0\r\n\r\n" % (b"0" * 20, BODY))),
    Case("chunked-size-LF", chunked(b"%x\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))),
    Case("chunked-not-last", request(b"Transfer-Encoding: chunked, gzip", length=False)),
    Case("xchunked", request(b"Transfer-Encoding: xchunked", length=False)),
    Case("two-Transfer-Encodings", chunked(b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY),
                                           fields=(b"Transfer-Encoding: chunked",))),
    Case("15000-byte-field", request(b"X-Long: " + b"a" * 15000)),
    Case("3000-fields", request(MANY_FIELDS)),
    Case("128-fields", request(*[b"X-F%d: v" % i for i in range(125)])),  # with Host, Content-*: 128
    Case("129-fields", request(*[b"X-F%d: v" % i for i in range(126)])),
    Case("100KiB-one-line", request(b"X-Long: " + b"a" * 100 * 1024)),
    Case("100KiB-in-25-fields", request(*[b"X-F%d: %s" % (i, b"a" * 4096) for i in range(25)])),
    Case("20KiB-in-5-fields", request(*[b"X-F%d: %s" % (i, b"a" * 4096) for i in range(5)])),
    Case("8190-byte-name-and-value", request(b"X-Long: " + b"a" * (8190 - 6))),  # aiohttp's max_field_size
    Case("8191-byte-name-and-value", request(b"X-Long: " + b"a" * (8191 - 6))),
    Case("9000-byte-target", request(start=b"POST /cometd/" + b"a" * 9000 + b" HTTP/1.1")),
    Case("pipelined-partial-head", VALID + VALID[:30], then=None),
    Case("pipelined-partial-body", VALID + VALID[:-10], then=None),
    Case("pipelined-malformed", VALID, then=request(b"X-Note: a\nb"), pause=True),
    Case("expect-100-continue", request(b"Expect: 100-continue")),
    Case("expect-unknown", request(b"Expect: fortune")),
    Case("HTTP/1.0", request(start=b"POST /cometd HTTP/1.0", host=b""), pause=True),
    Case("HTTP/1.0-keep-alive", request(b"Connection: keep-alive", start=b"POST /cometd HTTP/1.0", host=b"")),
    Case("no-Host", request(host=b"")),
    Case("two-Hosts", request(b"Host: example.com")),
    Case("empty-Host", request(host=b"Host:")),
    Case("Connection-xclosex", request(b"Connection: xclosex")),
    Case("Connection-close", request(b"Connection: close"), pause=True),
    Case("Connection-keep-alive-close", request(b"Connection: keep-alive, close"), pause=True),
    Case("absolute-form", request(start=b"POST http://127.0.0.1/cometd HTTP/1.1")),
    Case("absolute-form-no-authority", request(start=b"POST http:/cometd HTTP/1.1")),
    Case("bad-method", request(start=b"P0ST /cometd HTTP/1.1")),
    Case("lower-case-method", request(start=b"post /cometd HTTP/1.1")),
    Case("unknown-method", request(start=b"PROPFIND /cometd HTTP/1.1")),
    Case("HTTP/2.0", request(start=b"POST /cometd HTTP/2.0")),
    Case("HTTP/1.2", request(start=b"POST /cometd HTTP/1.2")),
    Case("lower-case-version", request(start=b"POST /cometd http/1.1")),
    Case("leading-empty-line", b"\r\n" + VALID),
    Case("two-spaces-in-request-line", request(start=b"POST  /cometd HTTP/1.1")),
    Case("space-in-target", request(start=b"POST /com etd HTTP/1.1")),
    Case("fragment-in-target", request(start=b"POST /cometd#x HTTP/1.1")),
    Case("raw-UTF-8-in-target", request(start=b"POST /cometd/\xc3\xa9 HTTP/1.1")),
    Case("encoded-slash-in-target", request(start=b"POST /cometd%2Fconnect HTTP/1.1")),
    Case("encoded-letter-in-target", request(start=b"POST /c%6Fmetd HTTP/1.1")),
    Case("dot-segment-in-target", request(start=b"POST /cometd/../cometd HTTP/1.1")),
    Case("query-in-target", request(start=b"POST /cometd/connect?x=1 HTTP/1.1")),
    Case("two-Content-Types", request(b"Content-Type: text/plain")),
    Case("hixie-websocket-key", request(b"Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5")),
    Case("body-too-large", request(b"Content-Length: 99999999", length=False, body=b"")),
    Case("no-Content-Length", request(length=False, body=b"")),
    Case("POST-with-upgrade", request(b"Upgrade: websocket", b"Connection: Upgrade")),
    Case("websocket-upgrade", b"GET /cometd HTTP/1.1\r\n" + HOST + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
         + WS_KEY + b"\r\n", then=None),
    Case("websocket-xupgradex", b"GET /cometd HTTP/1.1\r\n" + HOST + b"Upgrade: websocket\r\n"
         b"Connection: xupgradex\r\n" + WS_KEY + b"\r\n"),
    Case("websocket-with-body", b"GET /cometd HTTP/1.1\r\n" + HOST + b"Upgrade: websocket\r\n"
         b"Connection: Upgrade\r\nContent-Length: 2\r\n" + WS_KEY + b"\r\n[]"),
]

READ_TIMEOUT = 1.0  # loopback, in process: an answer takes milliseconds; no answer means held


@dataclass
class Outcome:
    statuses: list[int] = field(default_factory=list)  # final answers, in order (an interim 100 skipped)
    closed: bool = False  # the server closed (or reset) the connection

    def accepted(self, index: int) -> bool:
        return index < len(self.statuses) and self.statuses[index] < 400

    def __str__(self) -> str:
        return " ".join(map(str, self.statuses)) + (" closed" if self.closed else " open") if self.statuses \
            else ("closed" if self.closed else "held")


async def _read_response(reader: asyncio.StreamReader) -> int:
    while True:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        if 100 <= status < 200 and status != 101:
            continue  # 100 Continue: the final answer follows
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 101:
            return status
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), READ_TIMEOUT)).split(b";")[0], 16)
                await asyncio.wait_for(reader.readexactly(size + 2), READ_TIMEOUT)
                if size == 0:
                    break
        elif "content-length" in headers:
            await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), READ_TIMEOUT)
        else:
            await asyncio.wait_for(reader.read(), READ_TIMEOUT)  # delimited by the close
        return status


async def exchange(port: int, case: Case) -> Outcome:
    """Send the case (and the pipelined valid request) and read up to two answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    outcome = Outcome()
    pieces = case.data if isinstance(case.data, list) else [case.data]
    try:
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(0.02)
            writer.write(piece)
            await writer.drain()
        if case.then is not None:
            if case.pause:
                await asyncio.sleep(0.05)
            writer.write(case.then)
            await writer.drain()
    except ConnectionError:
        pass  # refused while still sending: what was answered is read below
    try:
        for _ in range(2):
            status = await _read_response(reader)
            outcome.statuses.append(status)
            if status == 101:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        outcome.closed = True
    except TimeoutError:
        pass  # held: waiting for more bytes
    writer.close()
    return outcome


@pytest.fixture
async def ports():
    """Two brokers alike: one behind the lean path, one served by aiohttp alone."""
    config = {"allow_anonymous": True}
    lean = LeanTestServer(create_app(BrokerConfig(**config)))
    plain = TestServer(create_app(BrokerConfig(**config)))
    await lean.start_server()
    await plain.start_server()
    yield lean.port, plain.port
    await lean.close()
    await plain.close()


def assert_not_more_permissive(lean: Outcome, plain: Outcome) -> None:
    for index in range(2):
        if not plain.accepted(index):
            assert not lean.accepted(index), f"answer {index + 1}: lean {lean}, aiohttp {plain}"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_the_lean_path_is_never_more_permissive_than_aiohttp(ports: tuple[int, int], case: Case) -> None:
    lean_port, plain_port = ports
    lean, plain = await asyncio.gather(exchange(lean_port, case), exchange(plain_port, case))
    assert_not_more_permissive(lean, plain)


async def test_valid_requests_are_accepted_by_both(ports: tuple[int, int]) -> None:
    """The comparison means something: the pipelined request both paths answer when all is well."""
    for port in ports:
        outcome = await exchange(port, CASES[0])
        assert outcome.statuses == [200, 200] and not outcome.closed


async def test_a_head_that_cannot_end_is_refused_at_once(ports: tuple[int, int]) -> None:
    """Bare LF line ends: the lean path answers 400 before any blank line arrives (no 75 s wait)."""
    lean_port, _ = ports
    reader, writer = await asyncio.open_connection("127.0.0.1", lean_port)
    writer.write(b"POST /cometd HTTP/1.1\nHost: x\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head
    writer.close()


async def test_a_malformed_head_pipelined_after_a_valid_request_is_refused_after_its_answer(
        ports: tuple[int, int]) -> None:
    """The one accepted difference: in a single write, aiohttp refuses the whole segment (400, close) before
    answering its valid first request; the lean path answers requests in order, so the valid one gets its
    200 and the malformed one its 400 and the close. Nothing after the malformed head is read by anyone."""
    lean_port, plain_port = ports
    case = Case("pipelined-malformed-one-write", VALID + request(b"X-Note: a\nb") + VALID, then=None)
    lean, plain = await asyncio.gather(exchange(lean_port, case), exchange(plain_port, case))
    assert plain.statuses == [400]
    assert lean.statuses == [200, 400]
    reader, writer = await asyncio.open_connection("127.0.0.1", lean_port)
    writer.write(case.data)
    for status in (200, 400):
        assert await _read_response(reader) == status
    assert await asyncio.wait_for(reader.read(), READ_TIMEOUT) == b""  # closed: the third is never answered
    writer.close()
