"""Reading an operation's parameters out of a JSON object, failing with domain errors.

The engine's operations take their parameters as the JSON object a client sent (GWS operations are
`{"operationName": ..., ...}`), so the same reader serves the domain and the HTTP edge (gws/envelope.py
re-exports it); its messages are the ones clients see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidParameter, MissingParameter

MAX_URL_LENGTH = 2048  # characters of a URL an agent pushes to the customer (SendUrl)


def param(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True,
          default: Any = None) -> Any:
    """A typed parameter: MissingParameter when missing, InvalidParameter when of the wrong type."""
    if name not in body or body[name] is None:
        if required:
            raise MissingParameter(f"missing parameter '{name}'")
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidParameter(f"parameter '{name}' must be {_names(kinds)}")
    if not isinstance(value, kinds):
        raise InvalidParameter(f"parameter '{name}' must be {_names(kinds)}")
    return value


def unknown_operation(operation: str, valid: Sequence[str], *, on: str | None = None) -> InvalidParameter:
    """The error for an operationName that is not one of `valid`, naming the valid ones."""
    names = ", ".join(valid)
    return InvalidParameter(f"unknown operationName {operation!r}; valid: {names}" if on is None
                            else f"unknown operationName {operation!r} on {on}: use one of {names}")


def pushable_url(url: str) -> str:
    """SendUrl's `url`: the customer's client opens it, so only an absolute http(s) URL (never javascript:,
    data: or a relative path), of a bounded length."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        valid = False
    if not valid or len(url) > MAX_URL_LENGTH or any(c.isspace() for c in url):
        raise InvalidParameter(f"parameter 'url' must be an absolute http or https URL of at most "
                               f"{MAX_URL_LENGTH} characters without spaces, got {url[:80]!r}")
    return url


def _names(kinds: tuple[type, ...]) -> str:
    words = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "an object",
             list: "an array"}
    return " or ".join(words.get(k, k.__name__) for k in kinds)
