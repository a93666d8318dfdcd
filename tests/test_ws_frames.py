"""RFC 6455 framing without sockets (http/ws_frames.py): what a client sends, what the reader reports.

Each rule of RFC 6455 §5-§8 that binds a server reading a client is checked on bytes, and the
reader must give the same events however the bytes are split across reads.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ws_helpers import client_frame

from cometd_broker.http.ws_frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    MAX_FRAGMENTS,
    PING,
    PONG,
    TEXT,
    Close,
    Failure,
    FrameReader,
    Message,
    Ping,
    Pong,
    close_frame,
    frame,
    unmask,
    valid_close_code,
)

MASK = b"\x37\xfa\x21\x3d"
LIMIT = 1000



def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def read(data: bytes, *, limit: int = LIMIT, **options: int) -> list:
    return FrameReader(limit, **options).receive_data(data)


def failure(events: list) -> Failure:
    assert events and isinstance(events[-1], Failure), events
    return events[-1]


# --------------------------------------------------------------------------- data frames (§5.2, §5.6)


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_a_whole_message_in_one_frame(opcode: int) -> None:
    assert read(client_frame(opcode, b'[{"channel":"/meta/connect"}]')) == [
        Message(opcode, b'[{"channel":"/meta/connect"}]')]


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536, 70000])
def test_every_length_form_is_read_and_unmasked(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    assert read(client_frame(BINARY, payload), limit=1 << 20) == [Message(BINARY, payload)]


@pytest.mark.parametrize(("size", "length_bytes"), [(5, 2), (5, 8), (300, 8)])
def test_a_length_in_a_longer_form_than_needed_is_accepted(size: int, length_bytes: int) -> None:
    # §5.2 asks the sender for the minimal form; rejecting a longer one would protect nothing.
    payload = b"x" * size
    assert read(client_frame(BINARY, payload, length_bytes=length_bytes)) == [Message(BINARY, payload)]


def test_several_frames_in_one_read_come_out_in_order() -> None:
    data = client_frame(TEXT, b"one") + client_frame(PING, b"p") + client_frame(BINARY, b"two")
    assert read(data) == [Message(TEXT, b"one"), Ping(b"p"), Message(BINARY, b"two")]


def test_unmasked_client_frames_fail_with_1002() -> None:
    # §5.1: a server MUST close the connection upon receiving a frame that is not masked.
    assert failure(read(client_frame(TEXT, b"[]", masked=False))).code == 1002


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
def test_reserved_bits_fail_with_1002_when_no_extension_was_negotiated(rsv: int) -> None:
    assert failure(read(client_frame(TEXT, b"[]", rsv=rsv))).code == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_every_reserved_opcode_fails_with_1002(opcode: int) -> None:
    assert failure(read(client_frame(opcode, b""))).code == 1002


def test_a_reserved_opcode_fails_at_its_header_before_its_payload() -> None:
    assert failure(read(client_frame(0x3, b"x" * 50)[:2])).code == 1002


# --------------------------------------------------------------------------- fragmentation (§5.4)


def test_a_fragmented_message_is_reassembled() -> None:
    data = (client_frame(TEXT, b"[{", fin=False) + client_frame(CONTINUATION, b"", fin=False)
            + client_frame(CONTINUATION, b'"a":1', fin=False) + client_frame(CONTINUATION, b"}]"))
    assert read(data) == [Message(TEXT, b'[{"a":1}]')]


def test_control_frames_may_come_between_fragments() -> None:
    data = (client_frame(BINARY, b"ab", fin=False) + client_frame(PING, b"1") + client_frame(CONTINUATION, b"cd",
                                                                                              fin=False)
            + client_frame(PONG, b"2") + client_frame(CONTINUATION, b"ef"))
    assert read(data) == [Ping(b"1"), Pong(b"2"), Message(BINARY, b"abcdef")]


def test_a_close_between_fragments_ends_the_reading() -> None:
    reader = FrameReader(LIMIT)
    data = client_frame(TEXT, b"ab", fin=False) + client_frame(CLOSE, close_payload(1000))
    assert reader.receive_data(data) == [Close(1000, "")]
    assert reader.receive_data(client_frame(CONTINUATION, b"cd")) == []


def test_a_continuation_without_a_message_fails_with_1002() -> None:
    assert failure(read(client_frame(CONTINUATION, b"[]"))).code == 1002


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_a_new_message_inside_a_fragmented_one_fails_with_1002(opcode: int) -> None:
    events = read(client_frame(TEXT, b"[", fin=False) + client_frame(opcode, b"]"))
    assert failure(events).code == 1002


def test_after_a_fragmented_message_a_new_one_may_start() -> None:
    data = (client_frame(TEXT, b"a", fin=False) + client_frame(CONTINUATION, b"b")
            + client_frame(TEXT, b"c", fin=False) + client_frame(CONTINUATION, b"d"))
    assert read(data) == [Message(TEXT, b"ab"), Message(TEXT, b"cd")]


# --------------------------------------------------------------------------- control frames (§5.5)


def test_ping_and_pong_payloads_are_reported_unmasked() -> None:
    assert read(client_frame(PING, b"hello") + client_frame(PONG, b"")) == [Ping(b"hello"), Pong(b"")]


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_a_control_frame_of_125_bytes_is_read_and_of_126_fails_with_1002(opcode: int) -> None:
    payload = close_payload(1000, b"r" * 123) if opcode == CLOSE else b"p" * 125
    assert not isinstance(read(client_frame(opcode, payload))[-1], Failure)
    events = read(client_frame(opcode, payload + b"x")[:4])  # the header alone decides
    assert failure(events).code == 1002


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_a_fragmented_control_frame_fails_with_1002(opcode: int) -> None:
    assert failure(read(client_frame(opcode, b"", fin=False))).code == 1002


# --------------------------------------------------------------------------- close (§5.5.1, §7.4)


def test_a_close_without_a_body_has_no_code() -> None:
    assert read(client_frame(CLOSE, b"")) == [Close(None, "")]


def test_a_close_with_a_code_and_a_reason() -> None:
    assert read(client_frame(CLOSE, close_payload(1001, "au revoir, déjà".encode()))) == [
        Close(1001, "au revoir, déjà")]


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                                  3000, 3999, 4000, 4999])
def test_valid_close_codes_are_reported(code: int) -> None:
    assert valid_close_code(code)
    assert read(client_frame(CLOSE, close_payload(code))) == [Close(code, "")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_invalid_close_codes_fail_with_1002(code: int) -> None:
    assert not valid_close_code(code)
    assert failure(read(client_frame(CLOSE, close_payload(code)))).code == 1002


def test_a_one_byte_close_payload_fails_with_1002() -> None:
    assert failure(read(client_frame(CLOSE, b"\x03"))).code == 1002


@pytest.mark.parametrize("reason", [b"\xff", b"abc\xce", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_a_close_reason_that_is_not_utf8_fails_with_1007(reason: bytes) -> None:
    assert failure(read(client_frame(CLOSE, close_payload(1000, reason)))).code == 1007


def test_nothing_is_read_after_a_close() -> None:
    reader = FrameReader(LIMIT)
    assert reader.receive_data(client_frame(CLOSE, close_payload(1000)) + client_frame(TEXT, b"[]")) == [
        Close(1000, "")]
    assert reader.ended
    assert reader.receive_data(client_frame(TEXT, b"[]")) == []


# --------------------------------------------------------------------------- UTF-8 (§8.1)


def test_a_multibyte_character_split_across_fragments_is_valid() -> None:
    text = "é€𝄞".encode()  # 2, 3 and 4 bytes
    data = (client_frame(TEXT, text[:1], fin=False) + client_frame(CONTINUATION, text[1:4], fin=False)
            + client_frame(CONTINUATION, text[4:6], fin=False) + client_frame(CONTINUATION, text[6:]))
    assert read(data) == [Message(TEXT, text)]


@pytest.mark.parametrize("payload", [
    b"\xff", b'["\x80"]', b"\xc0\xaf",  # a stray byte, a lone continuation byte, an overlong "/"
    b"\xed\xa0\x80",  # a UTF-16 surrogate (U+D800)
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    "é".encode()[:1],  # truncated
])
def test_a_text_message_that_is_not_utf8_fails_with_1007(payload: bytes) -> None:
    assert failure(read(client_frame(TEXT, payload))).code == 1007


def test_a_fragmented_text_message_fails_at_the_first_fragment_that_is_not_utf8() -> None:
    reader = FrameReader(LIMIT)
    assert reader.receive_data(client_frame(TEXT, b"ok", fin=False)) == []
    events = reader.receive_data(client_frame(CONTINUATION, b"\xff", fin=False))  # the message is not over yet
    assert failure(events).code == 1007


def test_a_fragmented_text_message_ending_inside_a_character_fails_with_1007() -> None:
    data = client_frame(TEXT, b"ok", fin=False) + client_frame(CONTINUATION, "€".encode()[:2])
    assert failure(read(data)).code == 1007


def test_binary_messages_are_not_checked_for_utf8() -> None:
    assert read(client_frame(BINARY, b"\xff\xfe")) == [Message(BINARY, b"\xff\xfe")]


# --------------------------------------------------------------------------- limits


def test_a_message_of_exactly_max_message_size_is_read() -> None:
    assert read(client_frame(TEXT, b"x" * LIMIT)) == [Message(TEXT, b"x" * LIMIT)]


def test_a_frame_announcing_more_than_max_message_size_fails_with_1009_at_its_header() -> None:
    reader = FrameReader(LIMIT)
    events = reader.receive_data(client_frame(TEXT, b"x" * (LIMIT + 1))[:8])  # header and mask, no payload
    assert failure(events).code == 1009
    assert reader.buffered == 0


def test_a_huge_64_bit_length_fails_with_1009_before_anything_is_buffered() -> None:
    head = bytes([0x82, 0x80 | 127]) + (1 << 40).to_bytes(8, "big")
    assert failure(read(head)).code == 1009


def test_a_64_bit_length_with_its_most_significant_bit_set_fails_with_1002() -> None:
    head = bytes([0x82, 0x80 | 127]) + ((1 << 63) | 5).to_bytes(8, "big") + MASK + b"12345"
    assert failure(read(head)).code == 1002


def test_an_assembled_message_over_max_message_size_fails_with_1009() -> None:
    reader = FrameReader(100)
    assert reader.receive_data(client_frame(TEXT, b"x" * 60, fin=False)) == []
    events = reader.receive_data(client_frame(CONTINUATION, b"x" * 41)[:8])  # the header suffices
    assert failure(events).code == 1009


def test_fragments_up_to_the_cap_are_read_and_one_more_fails_with_1009() -> None:
    frames = [client_frame(TEXT, b"a", fin=False), client_frame(CONTINUATION, b"", fin=False),
              client_frame(CONTINUATION, b"", fin=False)]
    assert read(b"".join(frames) + client_frame(CONTINUATION, b"b"), max_fragments=4) == [Message(TEXT, b"ab")]
    events = read(b"".join(frames) + client_frame(CONTINUATION, b"", fin=False) + client_frame(CONTINUATION, b"b"),
                  max_fragments=4)
    assert failure(events).code == 1009


def test_40000_empty_continuation_frames_hit_the_fragment_cap() -> None:
    empty = client_frame(CONTINUATION, b"", fin=False)
    data = client_frame(TEXT, b"[", fin=False) + empty * 40_000 + client_frame(CONTINUATION, b"]")
    assert len(data) < 256 * 1024  # inside the default max_message_size: only the cap stops it
    reader = FrameReader(256 * 1024)
    events = reader.receive_data(data)
    assert failure(events).code == 1009 and "frames" in events[-1].reason
    assert reader.ended and reader.buffered == 0


def test_40000_empty_continuation_frames_under_a_higher_cap_keep_the_bookkeeping_constant() -> None:
    # Fed one frame per read: after each, nothing is buffered and the message has not grown.
    reader = FrameReader(256 * 1024, max_fragments=100_000)
    assert reader.receive_data(client_frame(TEXT, b"[", fin=False)) == []
    empty = client_frame(CONTINUATION, b"", fin=False)
    for _ in range(40_000):
        assert reader.receive_data(empty) == []
        assert reader.buffered == 0
    assert reader.receive_data(client_frame(CONTINUATION, b"]")) == [Message(TEXT, b"[]")]
    # In one read too.
    reader = FrameReader(256 * 1024, max_fragments=100_000)
    data = client_frame(TEXT, b"[", fin=False) + empty * 40_000 + client_frame(CONTINUATION, b"]")
    assert reader.receive_data(data) == [Message(TEXT, b"[]")]
    assert reader.buffered == 0


def test_the_default_fragment_cap_is_documented() -> None:
    assert FrameReader(LIMIT).max_fragments == MAX_FRAGMENTS


def test_an_incomplete_frame_is_the_only_thing_buffered() -> None:
    reader = FrameReader(LIMIT)
    data = client_frame(TEXT, b"one") + client_frame(TEXT, b"two")
    assert reader.receive_data(data[:-2]) == [Message(TEXT, b"one")]
    assert reader.buffered == len(client_frame(TEXT, b"two")) - 2
    assert reader.receive_data(data[-2:]) == [Message(TEXT, b"two")]
    assert reader.buffered == 0


def test_nothing_is_read_after_a_failure() -> None:
    reader = FrameReader(LIMIT)
    events = reader.receive_data(client_frame(TEXT, b"ok") + client_frame(TEXT, b"[]", masked=False)
                                 + client_frame(TEXT, b"late"))
    assert events[0] == Message(TEXT, b"ok") and failure(events).code == 1002
    assert reader.ended and reader.buffered == 0
    assert reader.receive_data(client_frame(TEXT, b"[]")) == []


# --------------------------------------------------------------------------- however the bytes are split

STREAM = b"".join([
    client_frame(TEXT, "[{\"data\":\"é\"}]".encode()),
    client_frame(TEXT, "€".encode()[:1], fin=False), client_frame(PING, b"mid"),
    client_frame(CONTINUATION, "€".encode()[1:] + b"x" * 200, fin=False),
    client_frame(CONTINUATION, b"", fin=False), client_frame(CONTINUATION, b"y" * 70),
    client_frame(BINARY, bytes(range(256)) * 300),  # a 64-bit length
    client_frame(PONG, b""),
    client_frame(CLOSE, close_payload(1000, b"done")),
])
STREAM_EVENTS = [
    Message(TEXT, "[{\"data\":\"é\"}]".encode()), Ping(b"mid"),
    Message(TEXT, "€".encode() + b"x" * 200 + b"y" * 70),
    Message(BINARY, bytes(range(256)) * 300), Pong(b""), Close(1000, "done"),
]


def read_in_pieces(data: bytes, cuts: list[int], limit: int = 1 << 20) -> list:
    reader = FrameReader(limit)
    events = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        events.extend(reader.receive_data(data[start:cut]))
        start = cut
    return events


def test_the_stream_at_once() -> None:
    assert read_in_pieces(STREAM, []) == STREAM_EVENTS


def test_the_stream_byte_by_byte() -> None:
    assert read_in_pieces(STREAM, list(range(len(STREAM)))) == STREAM_EVENTS


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_any_split_of_the_stream_gives_the_same_events(cuts: list[int]) -> None:
    assert read_in_pieces(STREAM, cuts) == STREAM_EVENTS


messages = st.lists(st.tuples(st.sampled_from([TEXT, BINARY]), st.binary(max_size=300) | st.text(max_size=100),
                              st.lists(st.integers(min_value=0, max_value=300), max_size=4)), max_size=6)


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=4000), max_size=20), st.binary(min_size=4, max_size=4))
def test_any_fragmentation_and_split_gives_the_messages_sent(sent, cuts, mask) -> None:
    data, expected = b"", []
    for opcode, body, fragment_cuts in sent:
        payload = body.encode() if isinstance(body, str) else body
        if opcode == TEXT and isinstance(body, bytes):
            opcode = BINARY  # arbitrary bytes are binary; text comes from str
        bounds = [0, *sorted({min(c, len(payload)) for c in fragment_cuts}), len(payload)]
        pieces = [payload[a:b] for a, b in itertools.pairwise(bounds)]
        for index, piece in enumerate(pieces):
            data += client_frame(opcode if index == 0 else CONTINUATION, piece, fin=index == len(pieces) - 1,
                                 mask=mask)
            if index == 0 and len(pieces) > 1:
                data += client_frame(PING, b"between", mask=mask)
                expected.append(Ping(b"between"))
        expected.append(Message(opcode, payload))
    assert read_in_pieces(data, [c for c in cuts if c <= len(data)]) == expected


# --------------------------------------------------------------------------- server frames


def parse_server_frame(data: bytes) -> tuple[int, int, bytes]:
    first, second = data[0], data[1]
    assert not second & 0x80, "a server frame is never masked"
    size, at = second & 0x7F, 2
    if size == 126:
        size, at = int.from_bytes(data[2:4], "big"), 4
    elif size == 127:
        size, at = int.from_bytes(data[2:10], "big"), 10
    assert len(data) == at + size
    return first & 0x80, first & 0x0F, data[at:]


@pytest.mark.parametrize(("size", "head"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_server_frames_use_the_minimal_length_form(size: int, head: int) -> None:
    data = frame(TEXT, b"x" * size)
    assert len(data) == head + size
    assert parse_server_frame(data) == (0x80, TEXT, b"x" * size)


def test_close_frames() -> None:
    assert parse_server_frame(close_frame()) == (0x80, CLOSE, b"")
    assert parse_server_frame(close_frame(1002, "bad")) == (0x80, CLOSE, b"\x03\xeabad")


def test_a_long_close_reason_is_cut_at_a_character_boundary() -> None:
    _, _, payload = parse_server_frame(close_frame(1011, "é" * 100))
    assert len(payload) <= 125
    assert payload[2:].decode() == "é" * 61
    assert read(client_frame(CLOSE, payload)) == [Close(1011, "é" * 61)]  # what we send, we would accept


@pytest.mark.parametrize("size", range(10))
def test_unmask_is_its_own_inverse(size: int) -> None:
    payload = bytes(range(1, size + 1))
    masked = unmask(payload, MASK)
    assert masked == bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    assert unmask(masked, MASK) == payload
