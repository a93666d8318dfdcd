"""The one error the `events` commands report: a single line on stderr and exit code 2."""


class ToolError(Exception):
    """Something the user can fix (a missing file, a bad time, a wrong token, an unreachable broker)."""
