"""`cometd-broker serve`, `config` (and `events ...`): run the broker with options from flags,
environment variables and a TOML file, or print the configuration that would result."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from . import configfile
from .app import BROKER, create_app
from .config import ENV_PREFIX, BrokerConfig, options, resolve
from .configfile import CONFIG_ENV, Option, Setting
from .eventlog import is_redis_url
from .logs import configure as configure_logging
from .metrics import share_worker_metrics
from .serving import ListenError, serve_app
from .tls import TlsError, server_context
from .tools.commands import add_commands as add_event_commands
from .version import __version__

log = logging.getLogger("cometd_broker.cli")

# Applications built on the broker (the contact-center API) register here, so the core never
# imports them: an entry point in this group names an object with `add_arguments(parser)`,
# `install(app, broker, args)` and, optionally, `add_commands(subparsers)` whose parsers
# set `func` (called with the parsed args, returning the exit code). A plugin's option with
# destination NAME is also read from the environment variable COMETD_BROKER_<NAME> (the plugin
# does that in its flag's default) and from the config file's table named after the entry point.
PLUGIN_GROUP = "cometd_broker.apps"
_SECRET_WORDS = ("token", "password", "secret")
_NOT_GIVEN = object()  # marks options absent from the command line (see _given_on_command_line)


def named_plugins() -> list[tuple[str, Any]]:
    return [(entry.name, entry.load()) for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name)]


def plugins() -> list[Any]:
    return [plugin for _, plugin in named_plugins()]


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


def _plugin_option(table: str, action: argparse.Action) -> Option:
    """A flag a plugin added, as a settable option of its config-file table."""
    if action.nargs == 0:  # store_true / store_false
        kind: type = bool
    elif action.type in (int, float):
        kind = action.type
    else:
        kind = str
    return Option(table, action.dest, kind, secret=any(word in action.dest for word in _SECRET_WORDS))


def _add_serve_options(parser: argparse.ArgumentParser, named: list[tuple[str, Any]]) -> list[Option]:
    """The options shared by `serve` and `config`; returns the plugins' options."""
    parser.add_argument("--config", metavar="PATH", default=None,
                        help=f"TOML configuration file ([broker] and one table per plugin; env {CONFIG_ENV}); "
                             "flags and environment variables win over it")
    _add_option_flags(parser)
    found = []
    for table, plugin in named:
        before = len(parser._actions)
        plugin.add_arguments(parser)
        for action in parser._actions[before:]:
            found.append(_plugin_option(table, action))
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cometd-broker", description="Bayeux/CometD push broker")
    parser.add_argument("--version", action="version", version=f"cometd-broker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    named = named_plugins()
    serve = commands.add_parser("serve", help="serve the Bayeux endpoint",
                                description="Serve the Bayeux endpoint. Every option can also be set with "
                                            f"an environment variable {ENV_PREFIX}<OPTION> or in the file of "
                                            "--config; flags win over variables, variables over the file.")
    serve.add_argument("--worker-of", help=argparse.SUPPRESS)  # set by `--workers N` for its workers
    serve.add_argument("--worker-metrics-dir", help=argparse.SUPPRESS)  # ditto: where they share /metrics
    serve.set_defaults(plugin_options=_add_serve_options(serve, named))
    show = commands.add_parser("config", help="print the effective configuration and where each value comes from",
                               description="Print the configuration `serve` would run with, given the same "
                                           "flags, environment and --config file, as TOML with each value's "
                                           "source (default, file, env, flag) as a comment. Secrets are masked.")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show.set_defaults(plugin_options=_add_serve_options(show, named))
    add_event_commands(commands)
    for _, plugin in named:
        if hasattr(plugin, "add_commands"):
            plugin.add_commands(commands)
    return parser


def _given_on_command_line(argv: Sequence[str], command: str, names: set[str]) -> set[str]:
    """Which of `names` the command line sets. A plugin's flag defaults to its environment variable,
    so the parsed value alone cannot tell a flag from the environment: parse again with every
    default replaced by a marker."""
    parser = build_parser()
    subcommand = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    for action in subcommand._actions:
        if action.dest in names:
            action.default = _NOT_GIVEN
    args = parser.parse_args(argv)
    return {name for name in names if getattr(args, name, _NOT_GIVEN) is not _NOT_GIVEN}


@dataclass
class Effective:
    """The resolved configuration of `serve` / `config`."""

    config: BrokerConfig
    settings: list[Setting]
    file: str | None


def resolve_args(args: argparse.Namespace, argv: Sequence[str]) -> Effective:
    """Flags > environment > config file > defaults, for the broker's and every plugin's options.

    Plugin options taken from the file are written into `args`, where the plugin reads them."""
    path = args.config or os.environ.get(CONFIG_ENV) or None
    plugin_options: list[Option] = args.plugin_options
    known = configfile.broker_options() + plugin_options
    from_file = configfile.read(path, known) if path else {}
    flags = {f.name: getattr(args, f.name) for f in options()}
    config, sources = resolve(os.environ, file=from_file.get(configfile.BROKER_TABLE), flags=flags, cli=True)
    settings = configfile.broker_settings(config, sources)
    given = _given_on_command_line(argv, args.command, {o.name for o in plugin_options})
    for option in plugin_options:
        file_values = from_file.get(option.table, {})
        if option.name in given:
            source = "flag"
        elif option.env in os.environ:
            source = "env"
        elif option.name in file_values:
            setattr(args, option.name, file_values[option.name])
            source = "file"
        else:
            source = "default"
        settings.append(Setting(option, getattr(args, option.name), source))
    return Effective(config, settings, path)


def _use_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def show_config(args: argparse.Namespace, effective: Effective) -> int:
    render = configfile.render_json if args.json else configfile.render_toml
    sys.stdout.write(render(effective.settings, effective.file))
    return 0


def serve(args: argparse.Namespace, config: BrokerConfig) -> int:
    configure_logging(config.log_level, config.log_format)
    try:  # once, before anything starts: a bad file stops here, with one line (the supervisor's workers too)
        ssl_context = server_context(config.tls_cert, config.tls_key) if config.tls else None
    except TlsError as exc:
        print(f"cometd-broker: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if config.workers > 1:
        log.info("%s", storage_line(args, config))
        return _supervise(args, config)
    try:  # a missing optional package (redis) or an unusable event log: one line, not a traceback
        app = create_app(config)
        for plugin in plugins():
            plugin.install(app, app[BROKER], args)
    except (ValueError, OSError, ImportError) as exc:
        print(f"cometd-broker: invalid configuration: {exc}", file=sys.stderr)
        return 2
    loop_name = "uvloop" if _use_uvloop() else "asyncio"
    auth = "anonymous allowed" if config.allow_anonymous else "authentication required"
    url = f"{config.scheme}://{config.host}:{config.port}{config.mount}"

    def announce(_: str) -> None:
        line = (f"cometd-broker {__version__} listening on {url} "
                f"(transports: {', '.join(config.transport_list)}; {auth}; {loop_name})")
        if config.log_format == "json":
            log.info("%s", line)  # a JSON log stays one JSON object per line
        else:
            print(line, flush=True)

    lean = config.http_server == "lean"
    worker_of = getattr(args, "worker_of", None)
    if worker_of:  # one of `--workers N`: share the port; the supervisor announces, once, for all
        from .workers import report_ready, worker_index

        index = worker_index(worker_of)
        if args.worker_metrics_dir:
            share_worker_metrics(app, args.worker_metrics_dir, index)

        return _run_server(serve_app(app, config.host, config.port, lean=lean, reuse_port=True,
                                     ready=lambda: report_ready(worker_of), name=f"worker {index}",
                                     ssl_context=ssl_context))
    log.info("%s", storage_line(args, config))
    return _run_server(serve_app(app, config.host, config.port, lean=lean, ready=lambda: announce(""),
                                 ssl_context=ssl_context))


def _run_server(server: Any) -> int:
    """Run `serve_app`; a port that cannot be bound (in use, not permitted) is one line and exit 2."""
    try:
        asyncio.run(server)
    except ListenError as exc:
        print(f"cometd-broker: {exc}", file=sys.stderr)
        return 2
    return 0


def describe_event_log(url: str) -> str:
    """Where an event log is, as a start-up line says it: an absolute path, a Redis URL or memory."""
    if url in ("memory:", "memory://"):
        return "in memory (lost on exit)"
    if is_redis_url(url):
        return f"in Redis at {configfile.mask_url_password(url)}"
    scheme, sep, rest = url.partition(":")
    if sep and scheme == "sqlite":  # sqlite:///abs, sqlite:rel (see open_event_log)
        url = rest[2:] if rest.startswith("//") else rest
    return os.path.abspath(url)


def storage_line(args: argparse.Namespace, config: BrokerConfig) -> str:
    """One line naming every store the server keeps data in (relative defaults land in the working
    directory, so a run started from another folder would silently start empty)."""
    parts = [f"event log {describe_event_log(config.event_log_url)}"]
    for plugin in plugins():
        describe = getattr(plugin, "describe_storage", None)
        text = describe(args, config) if describe is not None else None
        if text:
            parts.append(text)
    return "data: " + "; ".join(parts)


def _supervise(args: argparse.Namespace, config: BrokerConfig) -> int:
    """`--workers N`: run N copies of this command on one port and supervise them (see workers.py)."""
    from .workers import Supervisor

    auth = "anonymous allowed" if config.allow_anonymous else "authentication required"
    url = f"{config.scheme}://{config.host}:{config.port}{config.mount}"
    listening = (f"cometd-broker {__version__} listening on {url} "
                 f"(transports: {', '.join(config.transport_list)}; {auth}; {config.workers} workers; "
                 f"cluster on {config.redis})")
    return Supervisor(config.workers, args.argv, listening, stop_timeout=config.stop_timeout).run()


def _event_log_setting(name: str, flag: Any, file_values: dict[str, Any], path: str | None) -> tuple[Any, str]:
    """One option's value as `serve` would take it (flag > environment > file > default), and its source."""
    if flag is not None:
        return flag, "--" + name.replace("_", "-")
    env = ENV_PREFIX + name.upper()
    if os.environ.get(env):
        return os.environ[env], env
    if name in file_values:
        return file_values[name], f"{path} [broker] {name.replace('_', '-')}"
    field = next(f for f in options() if f.name == name)
    return field.metadata.get("cli_default", field.default), "the default"


def resolve_event_log(args: argparse.Namespace) -> None:
    """`events dump|replay`: find the event log and Redis prefix as `serve` does, so the tools read the
    log the broker writes without repeating its configuration. Sets `args.event_log`, `args.redis_prefix`
    and `args.event_log_source` (where the log's location came from, for error messages)."""
    path = args.config or os.environ.get(CONFIG_ENV) or None
    file_values: dict[str, Any] = {}
    if path:
        parser = argparse.ArgumentParser(add_help=False)
        known = configfile.broker_options() + _add_serve_options(parser, named_plugins())
        file_values = configfile.read(path, known).get(configfile.BROKER_TABLE, {})
    args.redis_prefix, _ = _event_log_setting("redis_prefix", args.redis_prefix, file_values, path)
    if args.event_log is None:
        redis, redis_source = _event_log_setting("redis", None, file_values, path)
        if redis:  # a cluster keeps its event log in its Redis, whatever event-log says
            args.event_log, args.event_log_source = redis, redis_source
            return
    args.event_log, args.event_log_source = _event_log_setting("event_log", args.event_log, file_values, path)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `serve --workers N` starts its workers with the same arguments
    if args.command in ("serve", "config"):
        try:
            effective = resolve_args(args, argv)
        except (ValueError, OSError) as exc:
            print(f"cometd-broker: invalid configuration: {exc}", file=sys.stderr)
            return 2
        if args.command == "config":
            return show_config(args, effective)
        return serve(args, effective.config)
    if args.command == "events" and hasattr(args, "event_log"):
        try:
            resolve_event_log(args)
        except (ValueError, OSError) as exc:
            print(f"cometd-broker events: invalid configuration: {exc}", file=sys.stderr)
            return 2
    return args.func(args)  # `events ...` and plugins' commands set func
