"""What the agent gateway's domain refuses: one exception per rule, carrying the words for the agent.

The conference model (gateway_conferences.py) and the sign-in sessions (gateway_sessions.py) raise these;
the HTTP edge (huawei/agentgateway.py) gives each kind its Huawei retcode and puts the message in its envelope.
A refused operation has changed nothing.
"""

from __future__ import annotations


class GatewayRefusal(Exception):
    """An agent-gateway operation refused; `message` says why, in words a desktop can show."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotSignedIn(GatewayRefusal):
    """The agent has no live sign-in session (never signed in, signed out, or idle too long)."""


class AlreadySignedIn(GatewayRefusal):
    """The agent is signed in already: one session per agent."""


class NotChairperson(GatewayRefusal):
    """The agent does not chair an active conference."""


class ParticipantConflict(GatewayRefusal):
    """A party is already in a conference (or not in this one), or the conference would be too full."""
