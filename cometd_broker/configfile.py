"""The TOML configuration file: which options it may set, reading it strictly, and printing the
effective configuration with each value's source.

The file has one table per owner of options: `[broker]` for the BrokerConfig options and one
table per plugin, named after its entry point (`[contact-center]`). Keys are option names with
dashes or underscores (`event-log` or `event_log`). Anything else is an error naming the file,
the table and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from .config import ENV_PREFIX, options

BROKER_TABLE = "broker"
CONFIG_ENV = ENV_PREFIX + "CONFIG"  # the file's path when --config is not given
MASK = "****"
_KINDS = {"bool": bool, "int": int, "float": float, "str": str}


class ConfigFileError(ValueError):
    """The file cannot be used; the message names the file (and the table and key when it is one)."""


@dataclass(frozen=True)
class Option:
    """One settable option, wherever it is declared (BrokerConfig or a plugin's flags)."""

    table: str  # "broker" or a plugin's entry point name
    name: str  # python name: event_log, users_file
    kind: type  # bool, int, float or str
    secret: bool = False

    @property
    def key(self) -> str:
        """How the file and `cometd-broker config` spell it (as the flag, without --)."""
        return self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


@dataclass(frozen=True)
class Setting:
    option: Option
    value: Any  # None: unset
    source: str  # default, file, env or flag


def broker_options() -> list[Option]:
    return [Option(BROKER_TABLE, f.name, _KINDS[f.type] if isinstance(f.type, str) else f.type,
                   secret=bool(f.metadata.get("secret")))
            for f in options()]


def normalize(name: str) -> str:
    return name.replace("-", "_")


def read(path: str, known: Sequence[Option]) -> dict[str, dict[str, Any]]:
    """table -> {option name -> value} from the file at `path`, every key and type checked."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    tables: dict[str, dict[str, Option]] = {}
    for option in known:
        tables.setdefault(normalize(option.table), {})[option.name] = option
    result: dict[str, dict[str, Any]] = {}
    for table_name, table in document.items():
        owned = tables.get(normalize(table_name))
        if owned is None:
            if not isinstance(table, dict):
                raise ConfigFileError(f"{path}: key {table_name!r} must be inside a table such as [{BROKER_TABLE}]")
            raise ConfigFileError(f"{path}: unknown table [{table_name}]{_suggest(table_name, _names(tables))}; "
                                  f"tables are {', '.join(f'[{t}]' for t in _names(tables))}")
        if not isinstance(table, dict):
            raise ConfigFileError(f"{path}: {table_name} must be a table ([{table_name}]), not a value")
        option_table = next(o.table for o in owned.values())
        values = result.setdefault(option_table, {})
        for key, value in table.items():
            option = owned.get(normalize(key))
            if option is None:
                raise ConfigFileError(f"{path}: unknown key {key!r} in [{table_name}]"
                                      f"{_suggest(key, [o.key for o in owned.values()])}")
            if option.name in values:
                raise ConfigFileError(f"{path}: [{table_name}] sets {option.key} twice")
            values[option.name] = _checked(path, table_name, key, option, value)
    return result


def _names(tables: Mapping[str, dict[str, Option]]) -> list[str]:
    return sorted({o.table for owned in tables.values() for o in owned.values()})


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word.replace("_", "-"), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _checked(path: str, table: str, key: str, option: Option, value: Any) -> Any:
    """The value as the option's type; TOML is typed, so only an integer may stand for a float."""
    kind = option.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
    raise ConfigFileError(f"{path}: [{table}] {key} must be {expected}, got {_toml_type(value)} {value!r}")


def _toml_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
                       (list, "array"), (dict, "table")):
        if isinstance(value, kind):
            return name
    return type(value).__name__  # dates and times


# ----------------------------------------------------------------- printing the effective configuration

def shown(setting: Setting) -> Any:
    """The value as `cometd-broker config` prints it: secrets and URL passwords (redis://:pw@host)
    masked, `@path` references kept."""
    value, option = setting.value, setting.option
    if value is None or value == "" or not isinstance(value, str):
        return value
    if option.secret:
        return value if value.startswith("@") else MASK  # a path to a file of secrets is not a secret
    return mask_url_password(value) if "://" in value else value


def mask_url_password(url: str) -> str:
    """redis://user:secret@host:6379/0 -> redis://user:****@host:6379/0."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL after all (an invalid port, say): show nothing of it
        return MASK
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def render_toml(settings: Sequence[Setting], file: str | None) -> str:
    """A TOML file that reproduces the configuration (secrets aside), each value's source as a comment."""
    lines = ["# cometd-broker effective configuration",
             "# precedence: flag > environment variable > config file > default",
             f"# config file: {file or 'none'}"]
    table = None
    for setting in settings:
        option = setting.option
        if option.table != table:
            table = option.table
            lines += ["", f"[{table}]"]
        source = setting.source if setting.source != "env" else f"env {option.env}"
        if setting.value is None:
            lines.append(f"# {option.key} is not set  # {source}")
        else:
            lines.append(f"{option.key} = {_toml_value(shown(setting))}  # {source}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return orjson.dumps(str(value)).decode()  # a JSON string is a valid TOML basic string


def render_json(settings: Sequence[Setting], file: str | None) -> str:
    """{"file": path, "options": {table: {key: {"value", "source", "env"}}}}"""
    tables: dict[str, dict[str, Any]] = {}
    for setting in settings:
        option = setting.option
        tables.setdefault(option.table, {})[option.key] = {
            "value": shown(setting), "source": setting.source, "env": option.env}
    return orjson.dumps({"file": file, "options": tables}, option=orjson.OPT_INDENT_2).decode() + "\n"


def broker_settings(config: Any, sources: Mapping[str, str]) -> list[Setting]:
    """The BrokerConfig's values as settings, in the options table's order."""
    return [Setting(option, getattr(config, option.name), sources[option.name]) for option in broker_options()]

