"""Malformed requests are logged as one WARNING line each, rate-limited, never as a traceback."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from cometd_broker.http.bad_requests import BURST, PERIOD, BadRequestLog, ServerLog, first_line

MALFORMED = [
    b"GET /cometd HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /cometd HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_logged_then_held_back_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    reports = BadRequestLog(logging.getLogger("test.bad"), clock)
    with caplog.at_level(logging.WARNING, "test.bad"):
        for _ in range(BURST + 25):
            reports.report("10.0.0.1", "Invalid header value char")
    assert len(caplog.records) == BURST
    assert all(r.levelno == logging.WARNING and "10.0.0.1" in r.getMessage() for r in caplog.records)
    caplog.clear()
    clock.now += PERIOD / BURST  # one line's worth of budget back
    with caplog.at_level(logging.WARNING, "test.bad"):
        reports.report("10.0.0.2", "Duplicate Content-Length")
    [line] = caplog.records
    assert "(25 more since the last line)" in line.getMessage()
    assert reports.total == BURST + 26


def test_parser_messages_keep_their_first_line() -> None:
    assert first_line("Invalid character in Content-Length:\n\n  b'Content-Length: abc'\n   ^") == \
        "Invalid character in Content-Length"
    assert first_line("") == "unparsable request"


def test_the_server_log_passes_other_records_through(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "aiohttp.server"):
        try:
            raise RuntimeError("a handler bug")
        except RuntimeError as exc:
            ServerLog(BadRequestLog()).exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None  # a server bug keeps its traceback


def _send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        return sock.recv(100)


@pytest.mark.parametrize("http_server", ["lean", "aiohttp"])
def test_malformed_requests_log_one_warning_each_and_no_traceback(broker_process, http_server: str) -> None:
    broker = broker_process("--allow-anonymous", "--http-server", http_server)
    for data in MALFORMED:
        assert _send(broker.port, data).split(b"\r\n")[0].endswith(b"400 Bad Request")
    deadline = time.monotonic() + 5
    while broker.log().count("malformed request") < len(MALFORMED) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = broker.log()
    lines = [line for line in log.splitlines() if "malformed request from 127.0.0.1 refused with 400" in line]
    assert len(lines) == len(MALFORMED), log
    assert all(" WARNING " in line for line in lines)
    assert "Traceback" not in log and " ERROR " not in log, log
    assert any("Duplicate Content-Length" in line for line in lines)
