"""Unit and property tests for cometd_broker.channel: names, wildcards, Pattern algebra, SubscriptionIndex.

The oracle for every property is an independent segment-by-segment matcher
(`ref_matches`) over a bounded universe of channels built from a three-letter
segment alphabet.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cometd_broker.channel import (
    EXACT,
    MANY,
    ONE,
    Pattern,
    SubscriptionIndex,
    channel_error,
    is_meta,
    is_service,
    is_valid,
    is_wildcard,
    matches,
)

SEGMENTS = ("a", "b", "c")


def ref_matches(pattern: str, channel: str) -> bool:
    """Bayeux globbing straight from the spec text (reference 1.5), independent of channel.py."""
    p = pattern[1:].split("/")
    c = channel[1:].split("/")
    if p[-1] == "**":
        return len(c) >= len(p) and c[: len(p) - 1] == p[:-1]
    if p[-1] == "*":
        return len(c) == len(p) and c[:-1] == p[:-1]
    return p == c


def universe(max_depth: int) -> list[str]:
    return ["/" + "/".join(parts) for depth in range(1, max_depth + 1)
            for parts in itertools.product(SEGMENTS, repeat=depth)]


# Channels up to depth 5. Generated patterns have at most 3 fixed segments before a wildcard
# (or 4 segments when exact), so:
# - two patterns that overlap share a witness of length max(lowest lengths) <= 4 made of the
#   longer base plus alphabet segments: the universe holds it, so overlaps() can be checked
#   for equality, not just one implication;
# - when a is not within b, a counterexample exists of length <= 5 (a different alphabet
#   segment inside b's base, or one segment more/less than b's range allows): within() can be
#   checked for equality too.
UNIVERSE = universe(5)
UNIVERSE_4 = universe(4)

segments = st.sampled_from(SEGMENTS)
channels = st.lists(segments, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


def _with_wildcard(parts: list[str], wildcard: str) -> str:
    return "/" + "/".join([*parts, wildcard])


patterns = st.one_of(
    channels,
    st.lists(segments, max_size=3).map(lambda parts: _with_wildcard(parts, "*")),
    st.lists(segments, max_size=3).map(lambda parts: _with_wildcard(parts, "**")),
)
subscribers = st.integers(0, 5)


# --------------------------------------------------------------------------- names


class TestChannelError:
    @pytest.mark.parametrize("name", ["/a", "/foo/bar", "/foo/*", "/foo/**", "/*", "/**", "/meta/connect",
                                      "/service/echo", "/v2/me/interactions", "/a-b_c!~()$@", "/user.name+x=1%20:y",
                                      "/A/Z/09"])
    def test_valid(self, name):
        assert channel_error(name) is None
        assert is_valid(name)

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            ("/**/foo", "wildcards are only allowed as the last segment"),
            ("/foo/*/bar", "wildcards are only allowed as the last segment"),
            ("/foo/**/bar", "wildcards are only allowed as the last segment"),
            ("/*/*", "wildcards are only allowed as the last segment"),
            ("/a//b", "empty segment"),
            ("/a/", "empty segment"),
            ("//", "empty segment"),
            ("/", "a channel needs at least one segment"),
            ("foo", "a channel must start with /"),
            ("foo/bar", "a channel must start with /"),
            ("", "a channel must start with /"),
        ],
    )
    def test_invalid_with_reason(self, name, reason):
        assert channel_error(name) == reason
        assert not is_valid(name)

    @pytest.mark.parametrize("name", ["/a b", "/a/b#c", "/a,b", "/a?b", "/a/b\n", "/é", "/a\tb", "/a/***",
                                      "/a*", "/a/b*", "/a/{id}", "/a\\b", "/a/\"x\""])
    def test_bad_characters(self, name):
        problem = channel_error(name)
        assert problem is not None
        assert "characters outside" in problem

    def test_kinds(self):
        assert is_meta("/meta/connect") and is_meta("/meta")
        assert not is_meta("/metadata") and not is_meta("/a/meta")
        assert is_service("/service/x") and is_service("/service")
        assert not is_service("/services/x")
        assert is_wildcard("/a/*") and is_wildcard("/a/**") and is_wildcard("/**")
        assert not is_wildcard("/a") and not is_wildcard("/a*")


class TestPatternParse:
    def test_parse(self):
        assert Pattern.parse("/a/b") == Pattern(("a", "b"), EXACT)
        assert Pattern.parse("/a/*") == Pattern(("a",), ONE)
        assert Pattern.parse("/a/**") == Pattern(("a",), MANY)
        assert Pattern.parse("/**") == Pattern((), MANY)
        assert Pattern.parse("/*") == Pattern((), ONE)


# --------------------------------------------------------------------------- matching


class TestMatches:
    @pytest.mark.parametrize(
        ("pattern", "channel", "expected"),
        [
            ("/foo/*", "/foo/bar", True),
            ("/foo/*", "/foo", False),
            ("/foo/*", "/foo/bar/boo", False),
            ("/foo/*", "/fo/bar", False),
            ("/foo/*", "/foox/bar", False),
            ("/foo/**", "/foo/bar", True),
            ("/foo/**", "/foo/bar/boo", True),
            ("/foo/**", "/foo/bar/boo/x/y/z", True),
            ("/foo/**", "/foo", False),
            ("/foo/**", "/bar/foo", False),
            ("/foo/**", "/foox/bar", False),
            ("/**", "/a", True),
            ("/**", "/a/b/c/d/e/f", True),
            ("/**", "/meta/connect", True),
            ("/*", "/a", True),
            ("/*", "/a/b", False),
            ("/foo/bar", "/foo/bar", True),
            ("/foo/bar", "/foo/baz", False),
            ("/foo/bar", "/foo", False),
            ("/foo", "/foo/bar", False),
            ("/a/b/*", "/a/b/c", True),
            ("/a/b/*", "/a/c/c", False),
        ],
    )
    def test_examples(self, pattern, channel, expected):
        assert matches(pattern, channel) is expected
        assert ref_matches(pattern, channel) is expected  # the oracle agrees with the spec examples too

    @pytest.mark.parametrize(
        ("pattern", "channel", "expected"),
        [("/foo/*", "/foo/bar", True), ("/foo/*", "/foo", False), ("/foo/**", "/foo/bar/boo", True),
         ("/foo/**", "/foo", False), ("/**", "/a", True), ("/foo/bar", "/foo/bar", True), ("/foo", "/foo/bar", False)],
    )
    def test_pattern_method_examples(self, pattern, channel, expected):
        # Pattern.matches(channel) must agree with the module-level matches(pattern, channel).
        assert Pattern.parse(pattern).matches(channel) is expected

    @settings(max_examples=300, deadline=None)
    @given(patterns, channels)
    def test_matches_equals_reference(self, pattern, channel):
        assert matches(pattern, channel) == ref_matches(pattern, channel)

    @settings(max_examples=300, deadline=None)
    @given(patterns, channels)
    def test_matches_is_channel_within_pattern(self, pattern, channel):
        assert matches(pattern, channel) == Pattern.parse(channel).within(Pattern.parse(pattern))

    @settings(max_examples=300, deadline=None)
    @given(patterns, channels)
    def test_pattern_method_equals_reference(self, pattern, channel):
        assert Pattern.parse(pattern).matches(channel) == ref_matches(pattern, channel)


# --------------------------------------------------------------------------- Pattern algebra


def matched(pattern: str, within: list[str] = UNIVERSE) -> frozenset[str]:
    return frozenset(c for c in within if ref_matches(pattern, c))


class TestOverlapsWithin:
    @pytest.mark.parametrize(
        ("a", "b", "expected"),
        [
            ("/a/*", "/a/**", True),
            ("/a/*", "/a/b/**", False),
            ("/a/b/*", "/a/**", True),
            ("/a/b", "/a/*", True),
            ("/a/b", "/a/b/**", False),
            ("/a/b/c", "/a/*", False),
            ("/a/**", "/b/**", False),
            ("/**", "/x/y/z", True),
            ("/a/*", "/b/*", False),
            ("/a", "/a", True),
            ("/a", "/b", False),
            ("/*", "/a/b/**", False),
            ("/**", "/**", True),
        ],
    )
    def test_overlaps_examples(self, a, b, expected):
        assert Pattern.parse(a).overlaps(Pattern.parse(b)) is expected
        assert Pattern.parse(b).overlaps(Pattern.parse(a)) is expected

    @pytest.mark.parametrize(
        ("a", "b", "expected"),
        [
            ("/a/b", "/a/*", True),
            ("/a/b", "/a/**", True),
            ("/a/*", "/a/**", True),
            ("/a/**", "/a/*", False),
            ("/a/*", "/a/b", False),
            ("/a/b/**", "/a/**", True),
            ("/a/**", "/a/b/**", False),
            ("/a/b/*", "/a/*", False),
            ("/x/**", "/**", True),
            ("/**", "/x/**", False),
            ("/*", "/**", True),
            ("/a", "/a", True),
            ("/a", "/a/**", False),
        ],
    )
    def test_within_examples(self, a, b, expected):
        assert Pattern.parse(a).within(Pattern.parse(b)) is expected

    @settings(max_examples=300, deadline=None)
    @given(patterns, patterns)
    def test_overlaps_iff_a_common_channel_exists(self, a, b):
        common = matched(a) & matched(b)
        assert Pattern.parse(a).overlaps(Pattern.parse(b)) == bool(common)
        # Symmetric, and the bounded witness lives at depth <= 4 as argued above.
        assert Pattern.parse(b).overlaps(Pattern.parse(a)) == bool(common)
        assert bool(common) == bool(matched(a, UNIVERSE_4) & matched(b, UNIVERSE_4))

    @settings(max_examples=300, deadline=None)
    @given(patterns, patterns)
    def test_within_iff_every_channel_of_a_is_matched_by_b(self, a, b):
        inside = Pattern.parse(a).within(Pattern.parse(b))
        assert inside == (matched(a) <= matched(b))
        if inside:
            assert Pattern.parse(a).overlaps(Pattern.parse(b))

    @settings(max_examples=200, deadline=None)
    @given(patterns)
    def test_within_is_reflexive(self, a):
        assert Pattern.parse(a).within(Pattern.parse(a))
        assert Pattern.parse(a).overlaps(Pattern.parse(a))
        assert Pattern.parse(a).within(Pattern.parse("/**"))

    @settings(max_examples=200, deadline=None)
    @given(patterns, patterns, patterns)
    def test_within_is_transitive(self, a, b, c):
        pa, pb, pc = Pattern.parse(a), Pattern.parse(b), Pattern.parse(c)
        if pa.within(pb) and pb.within(pc):
            assert pa.within(pc)


# --------------------------------------------------------------------------- SubscriptionIndex


class TestSubscriptionIndex:
    def test_empty(self):
        index: SubscriptionIndex[str] = SubscriptionIndex()
        assert index.match("/a") == set()
        assert len(index) == 0
        assert list(index.patterns()) == []

    def test_exact_one_many(self):
        index: SubscriptionIndex[str] = SubscriptionIndex()
        index.add("/foo/bar", "exact")
        index.add("/foo/*", "one")
        index.add("/foo/**", "many")
        index.add("/**", "all")
        index.add("/*", "top")
        assert index.match("/foo/bar") == {"exact", "one", "many", "all"}
        assert index.match("/foo/baz") == {"one", "many", "all"}
        assert index.match("/foo/bar/baz") == {"many", "all"}
        assert index.match("/foo") == {"all", "top"}
        assert index.match("/other/x") == {"all"}
        assert index.match("/foox/bar") == {"all"}

    def test_dedup_when_several_patterns_of_one_subscriber_match(self):
        index: SubscriptionIndex[str] = SubscriptionIndex()
        for pattern in ("/a/b", "/a/*", "/a/**", "/**"):
            assert index.add(pattern, "s1")
        index.add("/a/*", "s2")
        assert index.match("/a/b") == {"s1", "s2"}
        assert len(index) == 5

    def test_add_twice_returns_false(self):
        index: SubscriptionIndex[str] = SubscriptionIndex()
        assert index.add("/a/*", "s") is True
        assert index.add("/a/*", "s") is False
        assert len(index) == 1

    def test_match_returns_a_new_set(self):
        index: SubscriptionIndex[str] = SubscriptionIndex()
        index.add("/a", "s")
        found = index.match("/a")
        found.add("intruder")
        found.clear()
        assert index.match("/a") == {"s"}
        assert len(index) == 1

    def test_remove_cleans_up(self):
        index: SubscriptionIndex[str] = SubscriptionIndex()
        pairs = [("/a", "s1"), ("/a", "s2"), ("/a/*", "s1"), ("/a/**", "s1"), ("/**", "s2"), ("/*", "s3")]
        for pattern, subscriber in pairs:
            index.add(pattern, subscriber)
        assert len(index) == 6
        for count, (pattern, subscriber) in enumerate(pairs, start=1):
            assert index.remove(pattern, subscriber) is True
            assert index.remove(pattern, subscriber) is False
            assert len(index) == 6 - count
        assert list(index.patterns()) == []
        assert index.match("/a") == set()
        assert index.match("/a/b") == set()
        # No empty buckets left behind.
        assert index._exact == {} and index._one == {} and index._many == {}

    def test_remove_unknown(self):
        index: SubscriptionIndex[str] = SubscriptionIndex()
        index.add("/a", "s1")
        assert index.remove("/a", "s2") is False
        assert index.remove("/b", "s1") is False
        assert index.remove("/a/*", "s1") is False
        assert index.match("/a") == {"s1"}

    def test_patterns(self):
        index: SubscriptionIndex[str] = SubscriptionIndex()
        index.add("/a", "s1")
        index.add("/a", "s2")
        index.add("/a/*", "s1")
        index.add("/**", "s3")
        assert sorted(index.patterns()) == sorted([("/a", frozenset({"s1", "s2"})), ("/a/*", frozenset({"s1"})),
                                                   ("/**", frozenset({"s3"}))])

    @settings(max_examples=250, deadline=None)
    @given(st.lists(st.tuples(patterns, subscribers), max_size=25))
    def test_match_equals_brute_force(self, subs):
        index: SubscriptionIndex[int] = SubscriptionIndex()
        for pattern, subscriber in subs:
            index.add(pattern, subscriber)
        pairs = set(subs)
        assert len(index) == len(pairs)
        for channel in UNIVERSE:
            expected = {s for (p, s) in pairs if ref_matches(p, channel)}
            assert index.match(channel) == expected, channel

    @settings(max_examples=250, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), patterns, subscribers), max_size=40))
    def test_add_remove_sequences_against_a_model(self, operations):
        index: SubscriptionIndex[int] = SubscriptionIndex()
        model: set[tuple[str, int]] = set()
        for adding, pattern, subscriber in operations:
            if adding:
                assert index.add(pattern, subscriber) == ((pattern, subscriber) not in model)
                model.add((pattern, subscriber))
            else:
                assert index.remove(pattern, subscriber) == ((pattern, subscriber) in model)
                model.discard((pattern, subscriber))
        assert len(index) == len(model)
        assert {(p, s) for p, members in index.patterns() for s in members} == model
        assert all(members for _, members in index.patterns())
        for channel in UNIVERSE_4:
            assert index.match(channel) == {s for (p, s) in model if matches(p, channel)}


class CountingDict(dict):
    """A dict that records every key looked up and every full scan."""

    def __init__(self, *args):
        super().__init__(*args)
        self.touched: list[object] = []

    def get(self, key, default=None):
        self.touched.append(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.touched.append(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.touched.append(key)
        return super().__contains__(key)

    def _scan(self, what):
        self.touched.append(("<scan>", what, len(self)))

    def __iter__(self):
        self._scan("iter")
        return super().__iter__()

    def keys(self):
        self._scan("keys")
        return super().keys()

    def values(self):
        self._scan("values")
        return super().values()

    def items(self):
        self._scan("items")
        return super().items()


class TestMatchCostIsIndependentOfSubscribers:
    @staticmethod
    def touched_keys(unrelated: int) -> tuple[list[object], set[str]]:
        index: SubscriptionIndex[str] = SubscriptionIndex()
        for i in range(unrelated):
            index.add(f"/unrelated/{i}", f"u{i}")
            index.add(f"/other{i}/*", f"o{i}")
            index.add(f"/many{i}/x/**", f"m{i}")
            index.add("/a/b/c/d", f"x{i}")  # a crowded but non-matching exact channel
        index.add("/a/b/c", "exact")
        index.add("/a/b/*", "one")
        index.add("/a/**", "many")
        index._exact = CountingDict(index._exact)
        index._one = CountingDict(index._one)
        index._many = CountingDict(index._many)
        found = index.match("/a/b/c")
        touched = index._exact.touched + index._one.touched + index._many.touched
        return touched, found

    def test_same_keys_touched_for_10_and_10000_subscribers(self):
        small, found_small = self.touched_keys(10)
        large, found_large = self.touched_keys(10_000)
        assert found_small == found_large == {"exact", "one", "many"}
        assert small == large
        assert not any(isinstance(key, tuple) and key[0] == "<scan>" for key in large), "match() scanned a table"
        # Exact name, parent for `*`, and each proper prefix ("", "/a", "/a/b") for `**`.
        assert len(large) <= 1 + 1 + 3
