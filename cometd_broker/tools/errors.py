"""Errors of the `events` commands: one line on stderr and exit code 2."""

from __future__ import annotations

import orjson


class ToolError(Exception):
    """Something the user can fix (a missing file, a bad time, a wrong token, an unreachable broker)."""


def http_error_text(status: int, body: bytes, *, excerpt: bool = False) -> str:
    """`HTTP <status>` with the admin API's JSON `error`, or (with `excerpt`) the start of any other body."""
    try:
        parsed = orjson.loads(body)
        if isinstance(parsed, dict) and "error" in parsed:
            return f"HTTP {status}: {parsed['error']}"
    except orjson.JSONDecodeError:
        pass
    return f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}" if excerpt else f"HTTP {status}"
