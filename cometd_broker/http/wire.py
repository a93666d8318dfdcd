"""HTTP/1.1 request heads, sans I/O: bytes in, a parsed head (or the reason to refuse it) out.

The lean long-polling path (lean_http.py) serves some requests itself and hands the rest, with every
byte it has read, to aiohttp. If it read a head more permissively than aiohttp does, a lenient proxy in
front could smuggle a request past one of them (RFC 9112 section 11.2). So heads are parsed here by
llhttp, through httptools, in its strict mode -- the parser aiohttp's own C extension runs on requests --
and the checks aiohttp adds on top of llhttp are repeated, with the same limits or stricter ones:

- llhttp (strict): CRLF line endings only (no bare CR or LF, RFC 9112 section 2.2), no obs-fold
  (section 5.2), field names that are tokens with no whitespace before the colon (section 5.1), no
  control characters in field values, one Content-Length of digits only that fits in 64 bits, never
  Content-Length together with Transfer-Encoding (section 6.3), a chunked final transfer coding.
- here, as aiohttp does: exactly one Host in an HTTP/1.1 request (RFC 9112 section 3.2), no duplicate of
  a field defined as a singleton (Content-Length, Content-Type, Host, Transfer-Encoding...), at most
  MAX_FIELD bytes in the request target and in any field line, at most MAX_HEADERS fields, no
  Sec-WebSocket-Key1 (the pre-RFC 6455 handshake).
- here, stricter than aiohttp: a head of at most MAX_HEAD bytes (larger ones are not ours to read, see
  UnsupportedHead), a Content-Length of at most MAX_LENGTH_DIGITS digits.

Only heads are parsed: a head is handed to llhttp up to and including its blank line, never its body
(the lean path frames bodies by Content-Length itself and hands every other framing to aiohttp). A
parser is made per head (about a microsecond): llhttp cannot be reset between requests through httptools,
and a long-polling client repeats one head, whose parse the caller keeps and reuses when the bytes are
equal, so a new parser is rare.
"""

from __future__ import annotations

import httptools

MAX_HEAD = 16 * 1024  # request line, fields and blank line; aiohttp accepts more, and takes those heads
MAX_FIELD = 8190  # bytes in the request target, and in a field's name and value: aiohttp's max_line_size
MAX_HEADERS = 128  # field lines: aiohttp's max_headers
MAX_LENGTH_DIGITS = 18  # a Content-Length of a million terabytes is a lie, not a body
_TERMINATOR = b"\r\n\r\n"
# Fields RFC 9110 allows once; aiohttp refuses a request that repeats one (lower case, as compared).
SINGLETON_FIELDS = frozenset({"content-length", "content-location", "content-range", "content-type", "etag",
                              "host", "max-forwards", "server", "transfer-encoding", "user-agent"})


class MalformedHead(ValueError):
    """The head breaks RFC 9112 or a limit aiohttp enforces too: answer 400 and close the connection,
    since where the next request would start is no longer known."""


class UnsupportedHead(Exception):
    """Not necessarily wrong, but not a head this reader reads (over MAX_HEAD, or only empty lines):
    an HTTP implementation with its own limits (aiohttp) should take the connection."""


class RequestHead:
    """A parsed request head. Field names and values are latin-1 text, values without surrounding
    whitespace, in the order received."""

    __slots__ = ("size", "method", "target", "version", "headers", "names", "content_length", "chunked",
                 "keep_alive", "upgrade", "_lower")

    def __init__(self, size: int, method: str, target: str, version: str, headers: list[tuple[str, str]],
                 lower: list[str], content_length: int | None, chunked: bool, keep_alive: bool,
                 upgrade: bool) -> None:
        self.size = size  # bytes of the head, through its blank line: where the body starts
        self.method = method
        self.target = target
        self.version = version  # "1.1", "1.0" (llhttp also reads "0.9" and "2.0" request lines)
        self.headers = headers
        self._lower = lower  # each field's name in lower case
        self.names = frozenset(lower)
        self.content_length = content_length  # None: no Content-Length field
        self.chunked = chunked  # a Transfer-Encoding field (llhttp accepts only chunked as the final coding)
        self.keep_alive = keep_alive  # per the version and the Connection field's tokens (RFC 9112 section 9.3)
        self.upgrade = upgrade  # an Upgrade field named by a Connection "upgrade" token

    def get(self, name: str) -> str | None:
        """The first value of a field (`name` in lower case), None if there is none."""
        if name not in self.names:
            return None
        return self.headers[self._lower.index(name)][1]


class _Collector:
    """httptools' callbacks for one head."""

    __slots__ = ("parser", "target", "fields", "complete", "version", "method", "keep_alive", "upgrade")

    def __init__(self) -> None:
        self.parser: httptools.HttpRequestParser | None = None
        self.target = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.version = ""
        self.method = b""
        self.keep_alive = False
        self.upgrade = False

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        self.complete = True
        # Read here: llhttp forgets the Connection flags once the message is complete.
        self.version = parser.get_http_version()
        self.method = parser.get_method()
        self.keep_alive = parser.should_keep_alive()
        self.upgrade = parser.should_upgrade()


def _new_parser() -> tuple[_Collector, httptools.HttpRequestParser]:
    collector = _Collector()
    parser = httptools.HttpRequestParser(collector)  # strict: no dangerous leniencies set
    collector.parser = parser
    return collector, parser


def _feed(parser: httptools.HttpRequestParser, data: bytes) -> None:
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass  # the head is complete; what follows it is another protocol's, which the caller decides on
    except httptools.HttpParserError as exc:
        raise MalformedHead(str(exc) or type(exc).__name__) from None


def parse_head(raw: bytes) -> RequestHead:
    """Parse one whole request head, `raw` ending with its blank line (as `HeadReader.find` measured it).

    Raises MalformedHead or UnsupportedHead."""
    if len(raw) > MAX_HEAD:
        raise UnsupportedHead(f"a head of over {MAX_HEAD} bytes")
    collector, parser = _new_parser()
    try:
        _feed(parser, raw)
    finally:
        collector.parser = None  # no reference cycle: both are freed as soon as this returns
    if not collector.complete:  # only empty lines, which RFC 9112 section 2.2 lets a server skip
        raise UnsupportedHead("no request line before the blank line")
    target = collector.target
    if len(target) > MAX_FIELD:
        raise MalformedHead("request target too long")
    fields = collector.fields
    if len(fields) > MAX_HEADERS:
        raise MalformedHead("too many header fields")
    if len(raw) > MAX_FIELD and any(len(name) + len(value) > MAX_FIELD for name, value in fields):
        raise MalformedHead("header field too long")
    # llhttp drops the whitespace before a value, not after it; neither is part of it (RFC 9112 section 5)
    headers = [(name.decode("latin-1"), value.decode("latin-1").rstrip(" \t")) for name, value in fields]
    lower = [name.lower() for name, _ in headers]
    names = set(lower)
    if len(names) != len(lower):
        _refuse_repeated_singletons(lower)
    if "sec-websocket-key1" in names:
        raise MalformedHead("pre-RFC 6455 websocket handshake")
    version = collector.version
    if version == "1.1" and "host" not in names:
        raise MalformedHead("no Host in an HTTP/1.1 request")
    content_length = None
    if "content-length" in names:  # llhttp checked it: digits only, at most 2**64 - 1, not repeated
        value = headers[lower.index("content-length")][1]
        if len(value) > MAX_LENGTH_DIGITS:
            raise MalformedHead("Content-Length too large")
        content_length = int(value)
    return RequestHead(len(raw), collector.method.decode("ascii"), target.decode("latin-1"), version, headers,
                       lower, content_length, "transfer-encoding" in names, collector.keep_alive, collector.upgrade)


def _refuse_repeated_singletons(lower: list[str]) -> None:
    seen: set[str] = set()
    for name in lower:
        if name in SINGLETON_FIELDS:
            if name in seen:
                raise MalformedHead(f"more than one {name}")
            seen.add(name)


class HeadReader:
    """Finds where each request head of a connection ends, and refuses a malformed one as soon as its
    bytes show it, complete or not (a head whose lines end in bare LFs never ends in CRLF CRLF)."""

    __slots__ = ("_parser", "_fed")

    def __init__(self) -> None:
        self._parser: httptools.HttpRequestParser | None = None  # checking a head still arriving
        self._fed = 0  # bytes of it checked so far

    def find(self, buffer: bytes | bytearray) -> int:
        """The size of the head at the start of `buffer`, through its blank line, or -1 if it is not
        all there yet. Raises MalformedHead, or UnsupportedHead for a head over MAX_HEAD bytes."""
        fed = self._fed
        end = buffer.find(_TERMINATOR, fed - 3 if fed > 3 else 0)  # the blank line may straddle two reads
        if end >= 0:
            self._parser = None
            self._fed = 0
            if end + 4 > MAX_HEAD:
                raise UnsupportedHead(f"a head of over {MAX_HEAD} bytes")
            return end + 4
        if len(buffer) > MAX_HEAD:
            raise UnsupportedHead(f"a head of over {MAX_HEAD} bytes")
        if self._parser is None:
            self._parser = _new_parser()[1]
        _feed(self._parser, bytes(buffer[self._fed:]))  # llhttp reads a head in pieces as well as whole
        self._fed = len(buffer)
        return -1
