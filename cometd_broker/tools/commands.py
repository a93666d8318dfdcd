"""`cometd-broker events dump | tail | replay`: argument parsing and the three runs.

Errors the user can fix print one line and exit 2; Ctrl-C stops cleanly (files closed, the log
released) with exit 130. Progress goes to stderr, results to stdout (or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from typing import IO, Any
from urllib.parse import urlsplit
from urllib.request import pathname2url

import aiohttp
import orjson

from ..configfile import mask_url_password
from ..eventlog import EventLog, EventLogUnavailable, SqliteEventLog, is_redis_url
from ..redis_names import DEFAULT_PREFIX
from .errors import ToolError, http_error_text
from .filters import EventFilter, FilterError, from_params, record_line
from .progress import Progress
from .reader import count, scan
from .sinks import AdminSink, BayeuxSink, Sink

ADMIN_TOKEN_ENV = "COMETD_BROKER_ADMIN_TOKEN"  # the broker's own variable: one place to set it
REPLAY_BATCH = 100  # events per publish request when several are due at once (--speed max)
TAIL_WINDOW = 25.0  # seconds per tail request; the tool reconnects with the cursor it was given
MAX_LINE = 16 * 1024 * 1024  # a tail line longer than this is a broken server, not an event


def add_commands(subparsers: Any) -> None:
    events = subparsers.add_parser("events", help="dump, tail or replay recorded events (debugging)",
                                   description="Debugging tools over the event log and the admin API.")
    actions = events.add_subparsers(dest="events_command", required=True)

    dump = actions.add_parser("dump", help="write a range of recorded events as JSON lines",
                              description="Read a SQLite event log (also while a broker writes it), or a "
                                          "cluster's in Redis, and write one JSON object per event: "
                                          '{"stream","id","timestamp","time","message"} '
                                          "(timestamp: epoch seconds; time: the same in ISO 8601 UTC).")
    _log_argument(dump)
    _filter_arguments(dump)
    dump.add_argument("--limit", type=int, default=None, help="stop after N events")
    dump.add_argument("--output", "-o", default=None, help="write to FILE instead of stdout")
    dump.set_defaults(func=lambda args: _run(_dump(args)))

    tail = actions.add_parser("tail", help="follow new events of a running broker (admin API)",
                              description="Print new events as JSON lines as a running broker records them.")
    tail.add_argument("--url", required=True, help="the broker, e.g. http://127.0.0.1:8080")
    _token_argument(tail)
    _filter_arguments(tail, since_help="start from this time instead of now")
    tail.add_argument("--count", type=int, default=None, help="stop after N events")
    tail.add_argument("--duration", type=float, default=None, help="stop after SECONDS (default: until Ctrl-C)")
    tail.set_defaults(func=lambda args: _run(_tail(args)))

    replay = actions.add_parser("replay", help="re-publish a recorded range into a broker",
                                description="Re-publish recorded events, in order, into a broker through its "
                                            "admin API (--to-url), or as a Bayeux client (--subscriber-url), "
                                            "at the recorded pace or faster.")
    _log_argument(replay)
    _filter_arguments(replay)
    replay.add_argument("--limit", type=int, default=None, help="stop after N events")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-url", help="broker to re-publish into through /admin/publish (needs --admin-token)")
    target.add_argument("--subscriber-url", help="a Bayeux endpoint (http://host:port/cometd): publish as a "
                                                 "fresh client session; per-user events are skipped")
    _token_argument(replay)
    replay.add_argument("--bayeux-token", default=None, help="token for the Bayeux handshake (--subscriber-url)")
    replay.add_argument("--speed", default="1", help="1 = recorded pace, 10 = ten times faster, max = no waits")
    replay.add_argument("--max-gap", type=float, default=60.0,
                        help="longest wait between two events, in seconds after --speed (default 60)")
    replay.set_defaults(func=lambda args: _run(_replay(args)))


def _log_argument(parser: argparse.ArgumentParser) -> None:
    # Unset, these are resolved as `serve` resolves them (cli.py): environment, then --config's [broker].
    parser.add_argument("--event-log", default=None, metavar="PATH",
                        help="the broker's SQLite event log file, or its Redis URL (redis://host:6379/0); "
                             "default: as `serve` finds it: COMETD_BROKER_REDIS or COMETD_BROKER_EVENT_LOG, "
                             "then the --config file's [broker] redis / event-log, then cometd-broker-events.db")
    parser.add_argument("--redis-prefix", default=None,
                        help=f"with a Redis URL: the broker's --redis-prefix (default: COMETD_BROKER_REDIS_PREFIX, "
                             f"the config file's, then {DEFAULT_PREFIX})")
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="the broker's TOML configuration file, read for event-log, redis and redis-prefix "
                             "(env COMETD_BROKER_CONFIG)")


def _source(args: argparse.Namespace) -> str:
    return getattr(args, "event_log_source", "--event-log")


def _token_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin-token", default=None,
                        help=f"the broker's admin token (default: ${ADMIN_TOKEN_ENV}, which keeps it out of ps)")


def _filter_arguments(parser: argparse.ArgumentParser, since_help: str = "events at or after this time") -> None:
    group = parser.add_argument_group("filters (all optional, combined with AND)")
    group.add_argument("--stream", action="append", default=[], help="a stream name (repeatable): /chat/room or "
                                                                      "@alice/v2/me/chats")
    group.add_argument("--user", help="per-user streams of this user")
    group.add_argument("--channel", help="this channel or pattern (/v2/me/**), shared or per-user")
    group.add_argument("--interaction", help="events whose data mentions this interaction id anywhere")
    times = "epoch seconds, ISO 8601 (UTC unless a zone is given) or relative: --since=-10m, -2h, -30s"
    group.add_argument("--since", help=f"{since_help}: {times}")
    group.add_argument("--until", help=f"events before this time: {times}")
    group.add_argument("--after-id", type=int, default=None, help="only ids above N (meant with one --stream)")


def _filter(args: argparse.Namespace) -> EventFilter:
    return from_params(args.stream, args.user, args.channel, args.interaction, args.since, args.until,
                       args.after_id)


def _run(coro: Any) -> int:
    """Run a command; a ToolError is one line and exit 2, Ctrl-C exit 130."""
    try:
        asyncio.run(coro)
    except (ToolError, FilterError) as exc:
        print(f"cometd-broker events: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cometd-broker events: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`events dump | head`): stop quietly, as a Unix filter does. What is left
        # in stdout's buffer goes nowhere, so the interpreter's final flush cannot fail with a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    return 0


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ToolError(f"{name} must be >= 1, got {value}")


# ---------------------------------------------------------------------------- the log file


@contextlib.asynccontextmanager
async def open_log(path: str, redis_prefix: str = DEFAULT_PREFIX, source: str = "--event-log"
                   ) -> AsyncIterator[EventLog]:
    """Open an existing SQLite event log, or the Redis log of the deployment `redis_prefix` names; never
    create one, nor take a missing one for an empty log (a typo must not look like an empty log).
    `source` says where `path` came from (a flag, a variable, the config file, the default), for errors."""
    if is_redis_url(path):
        async with _open_redis_log(path, redis_prefix) as log:
            yield log
        return
    if path.strip() in ("memory:", ":memory:"):
        raise ToolError(f"event log {path!r} (from {source}) is kept in a broker's memory: there is no file to "
                        "read; give --event-log the broker's SQLite file or Redis URL")
    if not os.path.exists(path):
        raise ToolError(f"event log {path!r} not found (looked for the SQLite file {os.path.abspath(path)}, "
                        f"from {source})")
    if not os.path.isfile(path):
        raise ToolError(f"event log {path!r} is not a file ({os.path.abspath(path)}, from {source})")
    _check_is_event_log(path)
    try:
        log = SqliteEventLog(path)
    except sqlite3.DatabaseError as exc:
        raise ToolError(f"event log {path!r} is not a readable SQLite event log ({exc})") from None
    try:
        yield log
    finally:
        await log.close()


@contextlib.asynccontextmanager
async def _open_redis_log(url: str, redis_prefix: str) -> AsyncIterator[EventLog]:
    try:
        from ..eventlog.redis import RedisEventLog  # the redis package is needed only for a Redis log

        log = RedisEventLog(url, prefix=redis_prefix)
    except (ImportError, ValueError) as exc:
        raise ToolError(f"cannot read the event log at {mask_url_password(url)}: {exc}") from None
    try:
        try:
            found = await log.streams()
        except EventLogUnavailable as exc:
            raise ToolError(str(exc)) from None
        if not found:
            # The broker's keys are under its namespace: another prefix or database finds nothing.
            raise ToolError(f"no event log at {mask_url_password(url)} for --redis-prefix {redis_prefix} (no "
                            f"{log.prefix}:streams key): are the prefix and the URL's database the broker's?")
        yield log
    finally:
        await log.close()


def _check_is_event_log(path: str) -> None:
    """Refuse another SQLite file (the contact-center state, say): opening it as a log would add tables."""
    if os.path.getsize(path) == 0:
        return  # an empty file is an empty log
    try:
        conn = sqlite3.connect(f"file:{pathname2url(os.path.abspath(path))}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise ToolError(f"event log {path!r} is not a readable SQLite event log ({exc})") from None
    if found is None:
        raise ToolError(f"{path!r} is a SQLite file but not an event log (it has no events table)")


# ---------------------------------------------------------------------------- dump


async def _dump(args: argparse.Namespace) -> None:
    filt = _filter(args)
    _check_limit("--limit", args.limit)
    async with open_log(args.event_log, args.redis_prefix, _source(args)) as log:
        with _output(args.output) as out:
            progress = Progress("dumped")
            try:
                async with contextlib.aclosing(scan(log, filt)) as events:
                    async for event, message in events:
                        out.write(record_line(event, message))
                        progress.update()
                        if progress.done == args.limit:
                            break
            except sqlite3.DatabaseError as exc:
                raise ToolError(f"cannot read event log {args.event_log!r}: {exc}") from None
            finally:
                out.flush()
                progress.finish()


@contextlib.contextmanager
def _output(path: str | None) -> Any:
    if path is None:
        yield sys.stdout.buffer
        return
    try:
        handle: IO[bytes] = open(path, "wb")  # noqa: SIM115 (closed below, after a clean or interrupted run)
    except OSError as exc:
        raise ToolError(f"cannot write {path!r}: {exc.strerror}") from None
    try:
        yield handle
    finally:
        handle.close()


# ---------------------------------------------------------------------------- tail


def _base_url(url: str, option: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ToolError(f"{option} must be an http(s) URL like http://127.0.0.1:8080, got {url!r}")
    return url.rstrip("/")


def _token(args: argparse.Namespace) -> str:
    token = args.admin_token or os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise ToolError(f"an admin token is required: --admin-token or ${ADMIN_TOKEN_ENV}")
    return token


def _tail_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    params = [("stream", s) for s in args.stream]
    for name in ("user", "channel", "interaction", "since", "until"):
        if getattr(args, name) is not None:
            params.append((name, getattr(args, name)))
    if args.after_id is not None:
        params.append(("after", str(args.after_id)))
    return params


async def _tail(args: argparse.Namespace) -> None:
    _filter(args)  # bad filters fail here with one line, before any request
    _check_limit("--count", args.count)
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise ToolError(f"--duration must be > 0 seconds, got {args.duration}")
    url = _base_url(args.url, "--url") + "/admin/events/tail"
    headers = {"Authorization": f"Bearer {_token(args)}"}
    deadline = time.monotonic() + args.duration if args.duration is not None else math.inf
    printed = 0
    announced = False
    cursor: str | None = None
    out = sys.stdout.buffer
    async with aiohttp.ClientSession(headers=headers) as http:
        while (left := deadline - time.monotonic()) > 0:
            params = _tail_params(args) if cursor is None else [
                (k, v) for k, v in _tail_params(args) if k != "since"] + [("cursor", cursor)]
            params.append(("timeout", f"{min(TAIL_WINDOW, left):.3f}"))
            timeout = aiohttp.ClientTimeout(total=TAIL_WINDOW + 15, sock_connect=10)
            try:
                async with http.get(url, params=params, timeout=timeout) as response:
                    if response.status != 200:
                        body = await response.read()
                        raise ToolError(f"tail from {url} failed: {http_error_text(response.status, body)}")
                    if not announced:  # once: the broker answered, and events follow as they are published
                        announced = True
                        print(f"following {url} (Ctrl-C stops)", file=sys.stderr, flush=True)
                    async for line in _lines(response):
                        record = orjson.loads(line)
                        if "next" in record:
                            cursor = record["next"]
                        if "stream" not in record:
                            continue  # heartbeat or end-of-window line
                        out.write(line + b"\n")
                        out.flush()
                        printed += 1
                        if printed == args.count:
                            return
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ToolError(f"cannot tail {url}: {exc or type(exc).__name__}") from None


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
        if len(buffer) > MAX_LINE:
            raise ToolError(f"the broker sent a line longer than {MAX_LINE} bytes")


# ---------------------------------------------------------------------------- replay


def _speed(text: str) -> float:
    if text.strip().lower() == "max":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ToolError(f"--speed must be a number > 0 (1 = recorded pace) or max, got {text!r}")
    return value


async def _replay(args: argparse.Namespace) -> None:
    filt = _filter(args)
    speed = _speed(args.speed)
    _check_limit("--limit", args.limit)
    if not (math.isfinite(args.max_gap) and args.max_gap >= 0):
        raise ToolError(f"--max-gap must be >= 0 seconds, got {args.max_gap}")
    sink: Sink
    if args.to_url:
        sink = AdminSink(_base_url(args.to_url, "--to-url"), _token(args))
    else:
        sink = BayeuxSink(_base_url(args.subscriber_url, "--subscriber-url"), args.bayeux_token)
    try:
        async with open_log(args.event_log, args.redis_prefix, _source(args)) as log:
            total = await count(log, filt)
            if args.limit is not None:
                total = min(total, args.limit)
            progress = Progress("replayed", total)
            try:
                await _feed(log, filt, sink, speed, args.max_gap, total, progress)
            finally:
                skipped = getattr(sink, "skipped", 0)
                progress.finish(f"{skipped} per-user events skipped" if skipped else "")
    finally:
        await sink.close()


async def _feed(log: EventLog, filt: EventFilter, sink: Sink, speed: float, max_gap: float, total: int,
                progress: Progress) -> None:
    """Send events in order; each leaves when its recorded offset (divided by speed) is reached."""
    started = time.monotonic()
    offset = 0.0  # seconds after `started` when the current event is due
    previous: float | None = None
    batch: list[tuple[str, dict[str, Any]]] = []

    async def flush() -> None:
        if batch:
            await sink.send(batch)
            progress.update(len(batch))
            batch.clear()

    sent = 0
    async with contextlib.aclosing(scan(log, filt)) as events:
        async for event, message in events:
            if sent == total:
                break
            sent += 1
            if not isinstance(message, dict) or not isinstance(message.get("channel"), str):
                continue  # an undecodable payload cannot be published again
            if previous is not None and speed != math.inf:
                offset += min((event.timestamp - previous) / speed, max_gap)
            previous = event.timestamp
            wait = started + offset - time.monotonic()
            if wait > 0:
                await flush()  # what is due now leaves before the pause
                await asyncio.sleep(wait)
            batch.append((event.stream, message))
            if len(batch) >= REPLAY_BATCH:
                await flush()
    await flush()
