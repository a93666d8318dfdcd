"""`cometd-broker serve` (and `events ...`): run the broker with options from flags and environment variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from . import __version__
from .app import BROKER, create_app
from .config import ENV_PREFIX, BrokerConfig, load, options
from .serving import serve_app
from .tools.commands import add_commands as add_event_commands

# Applications built on the broker (the contact-center API) register here, so the core never
# imports them: an entry point in this group names an object with `add_arguments(parser)`,
# `install(app, broker, args)` and, optionally, `add_commands(subparsers)` whose parsers
# set `func` (called with the parsed args, returning the exit code).
PLUGIN_GROUP = "cometd_broker.apps"


def plugins() -> list[Any]:
    found = []
    for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        found.append(entry.load())
    return found


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    defaults = BrokerConfig()
    for f in options():
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        default = f.metadata.get("cli_default", getattr(defaults, f.name))
        text = f"{f.metadata['doc']} (env {env}; default: {default!r})"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action="store_true", default=None, help=text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type) if isinstance(f.type, str) else f.type
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cometd-broker", description="Bayeux/CometD push broker")
    parser.add_argument("--version", action="version", version=f"cometd-broker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the Bayeux endpoint",
                                description="Serve the Bayeux endpoint. Every option can also be set with "
                                            f"an environment variable {ENV_PREFIX}<OPTION>; flags win.")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument("--worker-of", help=argparse.SUPPRESS)  # set by `--workers N` for its workers
    _add_option_flags(serve)
    add_event_commands(commands)
    for plugin in plugins():
        plugin.add_arguments(serve)
        if hasattr(plugin, "add_commands"):
            plugin.add_commands(commands)
    return parser


def _use_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {f.name: getattr(args, f.name) for f in options()}
    try:
        config = load(**overrides)
    except (ValueError, OSError) as exc:
        print(f"cometd-broker: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if config.workers > 1:
        return _supervise(args, config)
    app = create_app(config)
    for plugin in plugins():
        try:
            plugin.install(app, app[BROKER], args)
        except (ValueError, OSError) as exc:
            print(f"cometd-broker: invalid configuration: {exc}", file=sys.stderr)
            return 2
    loop_name = "uvloop" if _use_uvloop() else "asyncio"
    auth = "anonymous allowed" if config.allow_anonymous else "authentication required"
    url = f"http://{config.host}:{config.port}{config.mount}"

    def announce(_: str) -> None:
        print(f"cometd-broker {__version__} listening on {url} "
              f"(transports: {', '.join(config.transport_list)}; {auth}; {loop_name})", flush=True)

    lean = config.http_server == "lean"
    worker_of = getattr(args, "worker_of", None)
    if worker_of:  # one of `--workers N`: share the port; the supervisor announces, once, for all
        from .workers import report_ready

        asyncio.run(serve_app(app, config.host, config.port, lean=lean, reuse_port=True,
                              ready=lambda: report_ready(worker_of)))
        return 0
    asyncio.run(serve_app(app, config.host, config.port, lean=lean, ready=lambda: announce("")))
    return 0


def _supervise(args: argparse.Namespace, config: BrokerConfig) -> int:
    """`--workers N`: run N copies of this command on one port and supervise them (see workers.py)."""
    from .workers import Supervisor

    auth = "anonymous allowed" if config.allow_anonymous else "authentication required"
    listening = (f"cometd-broker {__version__} listening on http://{config.host}:{config.port}{config.mount} "
                 f"(transports: {', '.join(config.transport_list)}; {auth}; {config.workers} workers; "
                 f"cluster on {config.redis})")
    return Supervisor(config.workers, args.argv, listening).run()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `serve --workers N` starts its workers with the same arguments
    if args.command == "serve":
        return serve(args)
    return args.func(args)  # `events ...` and plugins' commands set func
