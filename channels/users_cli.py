"""`cometd-broker users add|list`: manage the users file of the GWS REST API and CometD handshake."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from .auth import ROLES, UserDirectory

PROG = "cometd-broker users"


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Add `users` (with `add` and `list`) to a parser's sub-commands."""
    users = subparsers.add_parser("users", help="add or list the users who may log in",
                                  description="Manage the users file (JSON, mode 0600).")
    commands = users.add_subparsers(dest="users_command", required=True)

    add = commands.add_parser("add", help="add a user, creating the file if missing")
    add.add_argument("name", help="login name: 1-64 characters of A-Z a-z 0-9 . _ @ -")
    source = add.add_mutually_exclusive_group()
    source.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    source.add_argument("--password", help="the password (visible to other local users; prefer --password-stdin)")
    add.add_argument("--role", action="append", dest="roles", choices=sorted(ROLES),
                     help="a role; repeat for several (default: agent)")
    add.add_argument("--agent-id", help="Huawei agent gateway workNo, 101..59999")
    add.add_argument("--first-name", default="")
    add.add_argument("--last-name", default="")
    add.add_argument("--file", required=True, type=Path, help="the users file")

    listing = commands.add_parser("list", help="list users (never their password hashes)")
    listing.add_argument("--file", required=True, type=Path, help="the users file")

    users.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `users add` or `users list`; 0 on success, 2 on bad input, 1 if the file cannot be written."""
    try:
        if args.users_command == "add":
            return _add(args)
        return _list(args)
    except ValueError as exc:
        return _fail(str(exc), 2)
    except FileNotFoundError as exc:
        return _fail(f"{exc.filename}: no such file", 2)
    except OSError as exc:
        return _fail(f"{exc.filename or args.file}: {exc.strerror or exc}", 1)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _add(args: argparse.Namespace) -> int:
    if not args.file.parent.is_dir():
        raise ValueError(f"{args.file.parent}: no such directory")
    directory = UserDirectory.load(args.file) if args.file.exists() else UserDirectory()
    password = _read_password(args)
    user = directory.add(args.name, password, roles=args.roles or ("agent",), first_name=args.first_name,
                         last_name=args.last_name, agent_id=args.agent_id)
    directory.save(args.file)
    print(f"added user {user.user_id} ({', '.join(sorted(user.roles))}) to {args.file}")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return args.password
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ValueError("no password on standard input (--password-stdin reads its first line)")
        return password
    if not sys.stdin.isatty():
        # A script or a pipe cannot answer a prompt: say how to give the password without one.
        raise ValueError("no password: standard input is not a terminal, so it cannot be asked for; pipe it in "
                         "with --password-stdin (printf '%s\\n' \"$PASSWORD\" | cometd-broker users add NAME "
                         "--file FILE --password-stdin)")
    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Repeat password: "):
        raise ValueError("the passwords do not match")
    return password


def _list(args: argparse.Namespace) -> int:
    directory = UserDirectory.load(args.file)
    rows = [("USER", "ROLES", "AGENT ID", "NAME")]
    rows += [(u.user_id, ",".join(sorted(u.roles)), u.agent_id or "-", f"{u.first_name} {u.last_name}".strip())
             for u in directory]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3]]).rstrip())
    return 0
