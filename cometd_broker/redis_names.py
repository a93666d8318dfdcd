"""The names of a deployment's Redis keys and pub/sub channels: all start with its namespace.

Several deployments may share one Redis server: staging and production on databases 0 and 1, or
two tenants on one database. Databases separate keys, but not pub/sub: a channel is one channel for
every client of the server, whatever database it selected. So every key and channel of a deployment
starts with its namespace, `{prefix}:db{N}` (`--redis-prefix`, and the database N of the Redis URL):
`cometd:db1:fanout`, `cometd:db1:log:/chat/room`, `cometd:db1:route:<tag>`, `cometd:db1:cc:leader`.
Two deployments differ in their namespace as soon as their database or their prefix differs.

A prefix is a name, not a pattern: letters, digits, `_`, `-` and `.`. No `:`, so the names of one
deployment never start with another's namespace (prefix `a` on db 1 and prefix `a:db1` would
collide); no spaces, glob characters or braces, which mean something to `SCAN MATCH` and to Redis
Cluster's hash tags.
"""

from __future__ import annotations

import re

DEFAULT_PREFIX = "cometd"
MAX_PREFIX = 64
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def prefix_error(prefix: str) -> str | None:
    """Why `prefix` cannot start a deployment's Redis names, or None if it can."""
    if not prefix:
        return "redis_prefix must not be empty"
    if len(prefix) > MAX_PREFIX:
        return f"redis_prefix must be at most {MAX_PREFIX} characters, got {len(prefix)}"
    if not _PREFIX.fullmatch(prefix):
        return (f"redis_prefix must be letters, digits, '_', '-' or '.' (starting with a letter or digit), "
                f"got {prefix!r}")
    return None


def redis_database(url: str) -> int:
    """The database a client of `url` selects, as redis-py reads it (`/N`, or `?db=N`; 0 if none)."""
    from redis.connection import parse_url  # the redis package is needed only with Redis

    return int(parse_url(url).get("db") or 0)


def redis_namespace(url: str, prefix: str = DEFAULT_PREFIX) -> str:
    """`{prefix}:db{N}`: how every Redis key and pub/sub channel of the deployment on `url` starts.
    ValueError if `prefix` is not a valid prefix."""
    problem = prefix_error(prefix)
    if problem:
        raise ValueError(problem)
    return f"{prefix}:db{redis_database(url)}"


def redis_key(namespace: str, *parts: str) -> str:
    """A key of the deployment whose namespace is `namespace`: `{namespace}:{part}:{part}...`."""
    return ":".join((namespace, *parts))
