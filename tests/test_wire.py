"""Request heads read by http/wire.py, without sockets: what is refused, what is left to aiohttp,
and what a parsed head says."""

from __future__ import annotations

import pytest

from cometd_broker.http.wire import (
    MAX_FIELD,
    MAX_HEAD,
    MAX_HEADERS,
    HeadReader,
    MalformedHead,
    UnsupportedHead,
    parse_head,
)

START = b"POST /cometd HTTP/1.1\r\nHost: x\r\n"


def head(*fields: bytes, start: bytes = START) -> bytes:
    return start + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def test_a_long_poll_head_is_parsed() -> None:
    raw = head(b"Content-Type: application/json", b"Content-Length: 12", b"Cookie: a=b ")
    parsed = parse_head(raw)
    assert (parsed.method, parsed.target, parsed.version) == ("POST", "/cometd", "1.1")
    assert parsed.headers == [("Host", "x"), ("Content-Type", "application/json"), ("Content-Length", "12"),
                              ("Cookie", "a=b")]
    assert parsed.size == len(raw) and parsed.content_length == 12
    assert parsed.keep_alive and not parsed.chunked and not parsed.upgrade
    assert parsed.get("content-type") == "application/json" and parsed.get("expect") is None
    assert "cookie" in parsed.names


@pytest.mark.parametrize(("connection", "version", "keep_alive"), [
    (None, b"HTTP/1.1", True),
    (b"close", b"HTTP/1.1", False),
    (b"keep-alive, Close", b"HTTP/1.1", False),
    (b"xclosex", b"HTTP/1.1", True),  # tokens, not substrings (RFC 9112 section 9.3)
    (b"closed", b"HTTP/1.1", True),
    (None, b"HTTP/1.0", False),
    (b"keep-alive", b"HTTP/1.0", True),
    (b"xkeep-alivex", b"HTTP/1.0", False),
])
def test_keep_alive_follows_the_connection_tokens(connection: bytes | None, version: bytes, keep_alive: bool) -> None:
    fields = [b"Connection: " + connection] if connection is not None else []
    parsed = parse_head(head(*fields, start=b"POST /cometd " + version + b"\r\nHost: x\r\n"))
    assert parsed.keep_alive is keep_alive


def test_a_websocket_upgrade_is_flagged_only_with_the_connection_token() -> None:
    start = b"GET /cometd HTTP/1.1\r\nHost: x\r\n"
    assert parse_head(head(b"Upgrade: websocket", b"Connection: keep-alive, Upgrade", start=start)).upgrade
    assert not parse_head(head(b"Upgrade: websocket", b"Connection: xupgradex", start=start)).upgrade
    assert not parse_head(head(b"Upgrade: websocket", start=start)).upgrade


@pytest.mark.parametrize("raw", [
    pytest.param(head(b"X: a\nTransfer-Encoding: chunked", b"Content-Length: 2"), id="bare-LF-in-value"),
    pytest.param(head(b"X: a\rb"), id="bare-CR-in-value"),
    pytest.param(b"POST /cometd HTTP/1.1\nHost: x\nContent-Length: 2\n\n\r\n\r\n", id="LF-only-lines"),
    pytest.param(head(b"X: a\x00b"), id="NUL-in-value"),
    pytest.param(head(b"X: a\x7fb"), id="DEL-in-value"),
    pytest.param(head(b"X: a\x01b"), id="CTL-in-value"),
    pytest.param(head(b"X\x00: a"), id="NUL-in-name"),
    pytest.param(head(b"X\x7f: a"), id="DEL-in-name"),
    pytest.param(head(b"X[: a"), id="bracket-in-name"),
    pytest.param(head(b"X : a"), id="space-before-colon"),
    pytest.param(head(b": a"), id="empty-name"),
    pytest.param(head(b"X: a", b" folded"), id="obs-fold"),
    pytest.param(head(b"Content-Length: \x0c2"), id="FF-in-Content-Length"),
    pytest.param(head(b"Content-Length: 2\x0b"), id="VT-in-Content-Length"),
    pytest.param(head(b"Content-Length: 2", b"Content-Length: 2"), id="duplicate-Content-Length"),
    pytest.param(head(b"Content-Length: 2", b"Content-Length: 3"), id="conflicting-Content-Length"),
    pytest.param(head(b"Content-Length: 2, 2"), id="Content-Length-list"),
    pytest.param(head(b"Content-Length: +2"), id="signed-Content-Length"),
    pytest.param(head(b"Content-Length: " + b"9" * 5000), id="5000-digit-Content-Length"),
    pytest.param(head(b"Content-Length: %d" % 2**64), id="Content-Length-2**64"),
    pytest.param(head(b"Content-Length: %d" % (2**64 - 1)), id="Content-Length-2**64-1"),
    pytest.param(head(b"Content-Length: 2", b"Transfer-Encoding: chunked"), id="Content-Length-and-chunked"),
    pytest.param(head(b"Transfer-Encoding: gzip"), id="not-chunked-last"),
    pytest.param(head(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), id="two-Transfer-Encodings"),
    pytest.param(b"POST /cometd HTTP/1.1\r\nContent-Length: 2\r\n\r\n", id="no-Host"),
    pytest.param(head(b"Host: y"), id="two-Hosts"),
    pytest.param(head(b"Content-Type: a", b"content-type: b"), id="two-Content-Types"),
    pytest.param(head(b"Sec-WebSocket-Key1: 1"), id="hixie-websocket"),
    pytest.param(head(b"X: " + b"a" * MAX_FIELD), id="field-over-limit"),
    pytest.param(head(*[b"X-%d: a" % i for i in range(MAX_HEADERS + 1)]), id="too-many-fields"),
    pytest.param(head(start=b"POST /" + b"a" * MAX_FIELD + b" HTTP/1.1\r\nHost: x\r\n"), id="target-over-limit"),
    pytest.param(head(start=b"P0ST /cometd HTTP/1.1\r\nHost: x\r\n"), id="bad-method"),
    pytest.param(head(start=b"POST /cometd HTTP/1.2\r\nHost: x\r\n"), id="HTTP/1.2"),
    pytest.param(head(start=b"POST /co metd HTTP/1.1\r\nHost: x\r\n"), id="space-in-target"),
    pytest.param(head(start=b"POST /cometd/\xc3\xa9 HTTP/1.1\r\nHost: x\r\n"), id="raw-UTF-8-in-target"),
])
def test_malformed_heads_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedHead):
        parse_head(raw)


def test_heads_over_the_limit_or_without_a_request_line_are_not_read() -> None:
    big = head(*[b"X-%d: %s" % (i, b"a" * 4000) for i in range(5)])
    assert len(big) > MAX_HEAD
    with pytest.raises(UnsupportedHead):
        parse_head(big)
    with pytest.raises(UnsupportedHead):
        parse_head(b"\r\n\r\n")


def test_limits_are_inclusive_like_aiohttp() -> None:
    parse_head(head(*[b"X-%d: a" % i for i in range(MAX_HEADERS - 1)]))  # with Host: exactly MAX_HEADERS
    parse_head(head(b"X: " + b"a" * (MAX_FIELD - 1)))  # name and value: exactly MAX_FIELD bytes


def test_trailing_whitespace_and_obs_text_in_values() -> None:
    parsed = parse_head(head(b"X: \t a b \t", b"Y: caf\xe9"))
    assert parsed.get("x") == "a b" and parsed.get("y") == "caf\u00e9"


def test_other_shapes_parse_and_are_left_to_the_caller() -> None:
    assert parse_head(head(start=b"POST http://x/cometd HTTP/1.1\r\nHost: x\r\n")).target == "http://x/cometd"
    assert parse_head(b"POST /cometd HTTP/2.0\r\nHost: x\r\n\r\n").version == "2.0"
    assert parse_head(head(b"Transfer-Encoding: chunked")).chunked
    assert parse_head(b"POST /cometd HTTP/1.0\r\nContent-Length: 0\r\n\r\n").content_length == 0


# --------------------------------------------------------------------------- HeadReader


def test_the_reader_finds_a_head_split_anywhere() -> None:
    raw = head(b"Content-Length: 2") + b"[]"
    size = len(raw) - 2
    for cut in range(1, len(raw)):
        reader = HeadReader()
        assert reader.find(raw[:cut]) == (size if cut >= size else -1)
        assert reader.find(raw) == size
        assert reader.find(raw) == size  # and again, for the next head: nothing left over


def test_the_reader_refuses_bare_line_feeds_before_the_head_ends() -> None:
    reader = HeadReader()
    with pytest.raises(MalformedHead):
        reader.find(b"POST /cometd HTTP/1.1\nHost: x\n")


def test_the_reader_refuses_a_bad_field_as_soon_as_it_arrives() -> None:
    reader = HeadReader()
    assert reader.find(START) == -1
    with pytest.raises(MalformedHead):
        reader.find(START + b"X\x00")


def test_the_reader_leaves_heads_over_the_limit_to_another_reader() -> None:
    reader = HeadReader()
    with pytest.raises(UnsupportedHead):
        reader.find(START + b"X: " + b"a" * MAX_HEAD)  # incomplete
    with pytest.raises(UnsupportedHead):
        HeadReader().find(head(*[b"X-%d: %s" % (i, b"a" * 4000) for i in range(5)]))  # complete
