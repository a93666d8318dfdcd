"""RFC 6455 framing without I/O (the wsproto style): a client's bytes in, events out; server frames out.

`FrameReader` is what a server needs to read a client: it checks every rule of RFC 6455 §5 that
applies when no extension and no subprotocol were negotiated, reassembles fragmented messages,
validates the UTF-8 of text (§8.1) and of close reasons (§5.5.1), and reports each violation as a
`Failure` carrying the close code to send (§7.4.1): 1002 for a protocol error, 1007 for invalid
UTF-8, 1009 for a message over the size limit. After a `Close` or a `Failure` it reads nothing
more: the connection is ending (§7.1.7, §5.5.1).

Bounds: a message's bytes are counted as its frames arrive, and a frame that would take it over
`max_message_size` fails as soon as its header is read, before its payload is buffered; the
number of frames of one fragmented message is capped (`max_fragments`), empty ones included,
so a peer cannot make the server spend time on a message without it also costing the peer size.
Every frame costs constant bookkeeping and each byte is copied a bounded number of times, so
reading is linear in the input however it is split across `receive_data` calls.

What is done with a ping (answer it, or not while the peer does not read) is the transport's
decision; the reader only reports it.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass
from typing import Final

# Opcodes (RFC 6455 §5.2, §11.8): 0x3-0x7 and 0xB-0xF are reserved.
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# Close codes (RFC 6455 §7.4.1)
NORMAL, GOING_AWAY, PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1000, 1001, 1002, 1007, 1009

MAX_CONTROL_PAYLOAD: Final = 125  # RFC 6455 §5.5
# Frames one fragmented message may take, its first included. Browsers send a message as one
# frame; libraries that fragment use frames of kilobytes (the default max_message_size of 256 KiB
# in 1024 frames is 256 bytes a frame). Empty frames count: without a cap they cost nothing in size.
MAX_FRAGMENTS: Final = 1024


def valid_close_code(code: int) -> bool:
    """A code a peer may send in a close frame (RFC 6455 §7.4.1, §7.4.2; 1012-1014 are registered with
    IANA since). 1004-1006 and 1015 are reserved and never sent; 0-999 and 1016-2999 are not used."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# ------------------------------------------------------------------------------------------ events


@dataclass(slots=True)
class Message:
    """A whole data message; for text, the payload is valid UTF-8."""
    opcode: int  # TEXT or BINARY
    payload: bytes


@dataclass(slots=True)
class Ping:
    payload: bytes


@dataclass(slots=True)
class Pong:
    payload: bytes


@dataclass(slots=True)
class Close:
    """The peer's close frame, valid: its code (None when it sent none) and reason."""
    code: int | None
    reason: str


@dataclass(slots=True)
class Failure:
    """The peer broke RFC 6455 or a limit: fail the connection with this close code (RFC 6455 §7.1.7)."""
    code: int
    reason: str


Event = Message | Ping | Pong | Close | Failure


# ------------------------------------------------------------------------------------------ reading


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR with the 4-byte mask (RFC 6455 §5.3), as one big integer: a machine word at a time."""
    size = len(payload)
    if not size:
        return b""
    repeated = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(size, "little")


class FrameReader:
    """Reads the frames a client sends. `receive_data(bytes)` returns the events they complete."""

    __slots__ = ("max_message_size", "max_fragments", "_buffer", "_message", "_message_opcode", "_fragments",
                 "_decoder", "_ended")

    def __init__(self, max_message_size: int, max_fragments: int = MAX_FRAGMENTS) -> None:
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        self._buffer = bytearray()  # the start of a frame not yet whole; never more than one frame
        self._message: bytearray | None = None  # a fragmented message being assembled
        self._message_opcode = 0
        self._fragments = 0  # frames of that message so far
        self._decoder: codecs.IncrementalDecoder | None = None  # checks a fragmented text message's UTF-8
        self._ended = False  # after a Close or a Failure

    @property
    def ended(self) -> bool:
        """A Close or a Failure was reported: nothing more is read."""
        return self._ended

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet whole (at most one frame's)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> list[Event]:
        if self._ended:
            return []
        buffer = self._buffer
        if buffer:
            buffer += data
            source: bytes | bytearray = buffer
        else:
            source = data  # the common case: whole frames in one read, parsed in place
        events: list[Event] = []
        used = self._read(source, events)
        if self._ended:
            buffer.clear()
        elif source is buffer:
            del buffer[:used]
        elif used < len(source):
            buffer += source[used:]
        return events

    def _read(self, data: bytes | bytearray, events: list[Event]) -> int:
        """Read the whole frames at the start of `data` into `events`; how many bytes they took
        (after a Close or a Failure the rest is not read and the count does not matter)."""
        at = 0
        available = len(data)
        while available - at >= 2:
            first, second = data[at], data[at + 1]
            if first & 0x70:
                return self._fail(events, Failure(PROTOCOL_ERROR, "reserved bits set: no extension was negotiated"))
            if not second & 0x80:
                return self._fail(events, Failure(PROTOCOL_ERROR, "client frames must be masked"))
            size = second & 0x7F
            head = at + 2
            if size == 126:
                head = at + 4
                if available < head:
                    break
                size = (data[at + 2] << 8) | data[at + 3]
            elif size == 127:
                head = at + 10
                if available < head:
                    break
                size = int.from_bytes(data[at + 2:head], "big")
                if size >> 63:
                    return self._fail(events, Failure(PROTOCOL_ERROR, "64-bit payload length with its top bit set"))
            opcode = first & 0x0F
            fin = first & 0x80
            # Everything that can be judged from the header is, before the payload is waited for;
            # the common case, a whole text message, is judged here, the rest by _check_header.
            if first != 0x81 or self._message is not None or size > self.max_message_size:
                problem = self._check_header(fin, opcode, size)
                if problem is not None:
                    return self._fail(events, problem)
            end = head + 4 + size
            if available < end:
                break
            payload = unmask(data[head + 4:end], data[head:head + 4])
            at = end
            if fin and opcode == TEXT:  # the common case first: a whole text message in one frame
                if not payload.isascii():
                    try:
                        payload.decode()
                    except UnicodeDecodeError:
                        return self._fail(events, Failure(INVALID_DATA, "text message is not valid UTF-8"))
                events.append(Message(TEXT, payload))
            elif opcode >= CLOSE:
                if opcode == PING:
                    events.append(Ping(payload))
                elif opcode == PONG:
                    events.append(Pong(payload))
                else:
                    events.append(self._close(payload))
                    self._ended = True
                    return at
            elif not self._data(fin, opcode, payload, events):
                return at
        return at

    def _check_header(self, fin: int, opcode: int, size: int) -> Failure | None:
        if opcode >= CLOSE:
            if opcode > PONG:
                return Failure(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
            if not fin:
                return Failure(PROTOCOL_ERROR, "control frames must not be fragmented")
            if size > MAX_CONTROL_PAYLOAD:
                return Failure(PROTOCOL_ERROR, f"control frame payload over {MAX_CONTROL_PAYLOAD} bytes")
            return None
        if opcode > BINARY:
            return Failure(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        message = self._message
        if opcode == CONTINUATION:
            if message is None:
                return Failure(PROTOCOL_ERROR, "continuation frame without a message to continue")
            if self._fragments >= self.max_fragments:
                return Failure(TOO_BIG, f"message in more than {self.max_fragments} frames")
            size += len(message)
        elif message is not None:
            return Failure(PROTOCOL_ERROR, "a new message started inside a fragmented one")
        if size > self.max_message_size:
            return Failure(TOO_BIG, f"message larger than max_message_size ({self.max_message_size} bytes)")
        return None

    def _data(self, fin: int, opcode: int, payload: bytes, events: list[Event]) -> bool:
        """A data frame other than a whole text message (headers checked); False if it failed."""
        if opcode != CONTINUATION:
            if fin:  # a whole binary message
                events.append(Message(opcode, payload))
                return True
            self._message, self._message_opcode, self._fragments = bytearray(payload), opcode, 1
            if opcode == TEXT:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
        else:
            assert self._message is not None  # checked with the header
            self._message += payload
            self._fragments += 1
        decoder = self._decoder
        if decoder is not None:
            # Incremental, so invalid text fails at the frame that shows it (RFC 6455 §8.1), in linear time.
            try:
                decoder.decode(payload, bool(fin))
            except UnicodeDecodeError:
                self._fail(events, Failure(INVALID_DATA, "text message is not valid UTF-8"))
                return False
        if fin:
            events.append(Message(self._message_opcode, bytes(self._message)))
            self._message, self._decoder, self._fragments = None, None, 0
        return True

    @staticmethod
    def _close(payload: bytes) -> Close | Failure:
        """The peer's close frame (RFC 6455 §5.5.1): no body, or a valid code and a UTF-8 reason."""
        if not payload:
            return Close(None, "")
        if len(payload) == 1:
            return Failure(PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code = (payload[0] << 8) | payload[1]
        if not valid_close_code(code):
            return Failure(PROTOCOL_ERROR, f"invalid close code {code}")
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            return Failure(INVALID_DATA, "close reason is not valid UTF-8")
        return Close(code, reason)

    def _fail(self, events: list[Event], failure: Failure) -> int:
        events.append(failure)
        self._ended = True
        return 0  # nothing after a failure is read: receive_data drops the buffer


# ------------------------------------------------------------------------------------------ writing


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, unfragmented server frame (RFC 6455 §5.2: a server never masks)."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, size) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, size) + payload


def close_frame(code: int | None = None, reason: str = "") -> bytes:
    """A close frame (RFC 6455 §5.5.1): no body without a code; the reason is cut, at a character
    boundary, to what fits a control frame's 125 bytes."""
    if code is None:
        return frame(CLOSE, b"")
    encoded = reason.encode()
    if len(encoded) > MAX_CONTROL_PAYLOAD - 2:
        encoded = encoded[:MAX_CONTROL_PAYLOAD - 2].decode(errors="ignore").encode()
    return frame(CLOSE, struct.pack("!H", code) + encoded)
