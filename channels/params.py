"""Reading an operation's parameters out of a JSON object, failing with domain errors.

The engine's operations take their parameters as the JSON object a client sent (GWS operations are
`{"operationName": ..., ...}`), so the same reader serves the domain and the HTTP edge (gws/envelope.py
re-exports it); its messages are the ones clients see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import InvalidParameter, MissingParameter


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


def _names(kinds: tuple[type, ...]) -> str:
    words = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "an object",
             list: "an array"}
    return " or ".join(words.get(k, k.__name__) for k in kinds)
