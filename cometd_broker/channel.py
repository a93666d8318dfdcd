"""Channel names, the Bayeux wildcard rules and the subscription index. Pure, no I/O.

A channel is `/seg/seg/...`; the last segment of a pattern may be `*` (exactly
one more segment) or `**` (one or more). Wildcards anywhere else, empty
segments and characters outside the spec's token set are invalid.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

# The spec's token characters (alphanum and `-_!~()$@`) plus `.+=%:` which
# real deployments put in ids (e-mail-like user names, dotted names).
_SEGMENT = re.compile(r"[A-Za-z0-9\-_!~()$@.+=%:]+\Z")

EXACT, ONE, MANY = "exact", "one", "many"


@lru_cache(maxsize=8192)  # checked on every publish and subscribe; the same names come back
def channel_error(name: str) -> str | None:
    """Why `name` is not a valid channel or pattern, or None when it is valid."""
    if not name.startswith("/"):
        return "a channel must start with /"
    if name == "/":
        return "a channel needs at least one segment"
    segments = name[1:].split("/")
    last = len(segments) - 1
    for position, segment in enumerate(segments):
        if segment == "":
            return "empty segment"
        if segment in ("*", "**"):
            if position != last:
                return "wildcards are only allowed as the last segment"
            continue
        if not _SEGMENT.match(segment):
            return f"segment {segment!r} has characters outside [A-Za-z0-9-_!~()$@.+=%:]"
    return None


def is_valid(name: str) -> bool:
    return channel_error(name) is None


def is_meta(name: str) -> bool:
    return name == "/meta" or name.startswith("/meta/")


def is_service(name: str) -> bool:
    return name == "/service" or name.startswith("/service/")


def is_wildcard(name: str) -> bool:
    return name.endswith("/*") or name.endswith("/**")


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed channel or pattern: its fixed leading segments and what may follow."""

    base: tuple[str, ...]
    kind: str  # EXACT, ONE or MANY

    @staticmethod
    def parse(name: str) -> Pattern:
        """Parse a name already known to be valid (see `channel_error`)."""
        return _parse_pattern(name)

    def _lengths(self) -> tuple[int, float]:
        """The inclusive range of segment counts of the channels this pattern matches."""
        n = len(self.base)
        if self.kind == EXACT:
            return n, n
        if self.kind == ONE:
            return n + 1, n + 1
        return n + 1, float("inf")

    def matches(self, channel: str) -> bool:
        """Whether this pattern matches the (non-wildcard) channel."""
        return Pattern.parse(channel).within(self)

    def overlaps(self, other: Pattern) -> bool:
        """Whether some channel is matched by both patterns."""
        shorter = min(len(self.base), len(other.base))
        if self.base[:shorter] != other.base[:shorter]:
            return False
        low_a, high_a = self._lengths()
        low_b, high_b = other._lengths()
        return max(low_a, low_b) <= min(high_a, high_b)

    def within(self, other: Pattern) -> bool:
        """Whether every channel this pattern matches is matched by `other` too.

        Written as `channel.within(pattern)` it is plain matching.
        """
        if len(other.base) > len(self.base) or self.base[: len(other.base)] != other.base:
            return False
        low_a, high_a = self._lengths()
        low_b, high_b = other._lengths()
        return low_b <= low_a and high_a <= high_b


def matches(pattern: str, channel: str) -> bool:
    """Whether the valid pattern `pattern` matches the valid channel `channel`."""
    return Pattern.parse(channel).within(Pattern.parse(pattern))


S = TypeVar("S", bound=Hashable)



@lru_cache(maxsize=8192)  # publish authorization parses every channel; Patterns are immutable
def _parse_pattern(name: str) -> Pattern:
    segments = tuple(name[1:].split("/"))
    if segments[-1] == "*":
        return Pattern(segments[:-1], ONE)
    if segments[-1] == "**":
        return Pattern(segments[:-1], MANY)
    return Pattern(segments, EXACT)


class SubscriptionIndex(Generic[S]):
    """Subscribers by channel pattern, matched in time proportional to the channel's depth.

    Exact subscriptions are looked up by name, `/a/*` by the channel's parent
    and `/a/**` by each proper prefix of the channel, so the cost of `match`
    does not depend on how many subscribers or patterns the index holds.
    """

    __slots__ = ("_exact", "_one", "_many")

    def __init__(self) -> None:
        self._exact: dict[str, set[S]] = {}
        self._one: dict[str, set[S]] = {}
        self._many: dict[str, set[S]] = {}

    def _table(self, pattern: str) -> tuple[dict[str, set[S]], str]:
        if pattern.endswith("/**"):
            return self._many, pattern[:-3]
        if pattern.endswith("/*"):
            return self._one, pattern[:-2]
        return self._exact, pattern

    def add(self, pattern: str, subscriber: S) -> bool:
        """Subscribe; returns False if the subscriber already had this pattern."""
        table, key = self._table(pattern)
        members = table.get(key)
        if members is None:
            table[key] = {subscriber}
            return True
        if subscriber in members:
            return False
        members.add(subscriber)
        return True

    def remove(self, pattern: str, subscriber: S) -> bool:
        """Unsubscribe; returns False if the subscriber did not have this pattern."""
        table, key = self._table(pattern)
        members = table.get(key)
        if members is None or subscriber not in members:
            return False
        members.discard(subscriber)
        if not members:
            del table[key]
        return True

    def match(self, channel: str) -> set[S]:
        """Every subscriber whose pattern matches `channel`, each once (a new set)."""
        found: list[set[S]] = []
        exact = self._exact.get(channel)
        if exact:
            found.append(exact)
        cut = channel.rfind("/")
        one = self._one.get(channel[:cut])
        if one:
            found.append(one)
        many = self._many
        if many:
            # Every "/" starts a proper prefix: "" (for /**), "/a", "/a/b" ...
            slash = 0
            while slash >= 0:
                members = many.get(channel[:slash])
                if members:
                    found.append(members)
                slash = channel.find("/", slash + 1)
        if not found:
            return set()
        result = set(found[0])
        for members in found[1:]:
            result |= members
        return result

    def patterns(self) -> Iterator[tuple[str, frozenset[S]]]:
        """Every (pattern, subscribers) pair, for admin views and tests."""
        for key, members in self._exact.items():
            yield key, frozenset(members)
        for key, members in self._one.items():
            yield key + "/*", frozenset(members)
        for key, members in self._many.items():
            yield key + "/**", frozenset(members)

    def __len__(self) -> int:
        return sum(len(m) for table in (self._exact, self._one, self._many) for m in table.values())
