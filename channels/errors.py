"""The contact-center domain's failures: what went wrong, in the domain's words, with nothing changed.

The domain (conversations, routing, workbins) raises these; the HTTP edge (gws/envelope.py) answers each kind
with the GWS statusCode and HTTP status of the same failure, so the domain knows nothing of envelopes.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar


class Kind(Enum):
    MISSING_PARAMETER = "missing parameter"
    INVALID_PARAMETER = "invalid parameter"  # of the wrong type, malformed, or naming nothing usable
    INVALID_STATE = "invalid state"  # not allowed in the state the resource is in now
    NOT_FOUND = "not found"
    IN_USE = "in use"  # the user or resource already takes part


class ContactCenterError(Exception):
    """A request the domain refused; `message` says why, for the client."""

    kind: ClassVar[Kind]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MissingParameter(ContactCenterError):
    kind = Kind.MISSING_PARAMETER


class InvalidParameter(ContactCenterError):
    kind = Kind.INVALID_PARAMETER


class InvalidState(ContactCenterError):
    kind = Kind.INVALID_STATE


class NotFound(ContactCenterError):
    kind = Kind.NOT_FOUND


class InUse(ContactCenterError):
    kind = Kind.IN_USE
