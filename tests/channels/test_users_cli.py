"""`cometd-broker users add|list`, run through argparse as the console script does."""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from channels import auth, users_cli
from channels.auth import UserDirectory


@pytest.fixture(autouse=True)
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    # The production 200k PBKDF2 iterations would make every `add` take ~0.1 s.
    monkeypatch.setattr(auth, "hash_password", functools.partial(auth.hash_password, iterations=1000))


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="cometd-broker")
    users_cli.add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func is users_cli.run
    return users_cli.run(args)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("cometd-broker users: error: ")
    return err


def test_add_creates_a_private_file_and_list_shows_users_without_hashes(tmp_path, capsys):
    path = tmp_path / "users.json"
    assert cli("users", "add", "alice", "--password", "alice-pw", "--role", "agent", "--role", "supervisor",
               "--agent-id", "1001", "--first-name", "Alice", "--last-name", "Smith", "--file", str(path)) == 0
    assert capsys.readouterr().out == f"added user alice (agent, supervisor) to {path}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cli("users", "add", "bob", "--password", "bob-pw", "--file", str(path)) == 0
    capsys.readouterr()

    directory = UserDirectory.load(path)
    alice = directory.authenticate("alice", "alice-pw")
    assert alice is not None and alice.roles == {"agent", "supervisor"} and alice.agent_id == "1001"
    assert (alice.first_name, alice.last_name) == ("Alice", "Smith")
    assert directory.get("bob").roles == {"agent"} and directory.get("bob").agent_id is None

    assert cli("users", "list", "--file", str(path)) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "USER   ROLES             AGENT ID  NAME",
        "alice  agent,supervisor  1001      Alice Smith",
        "bob    agent             -",
    ]
    assert "pbkdf2" not in out and "pw" not in out


def test_password_from_stdin(tmp_path, monkeypatch, capsys):
    path = tmp_path / "users.json"
    monkeypatch.setattr("sys.stdin", io.StringIO("with spaces and $ign \n"))
    assert cli("users", "add", "carol", "--password-stdin", "--file", str(path)) == 0
    directory = UserDirectory.load(path)
    assert directory.authenticate("carol", "with spaces and $ign ") is not None  # only the newline is dropped
    assert directory.authenticate("carol", "with spaces and $ign") is None


def test_password_prompt_must_match(tmp_path, monkeypatch, capsys):
    path = tmp_path / "users.json"
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers = iter(["first", "second"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert cli("users", "add", "dave", "--file", str(path)) == 2
    assert "the passwords do not match" in one_line_error(capsys)
    assert not path.exists()

    answers = iter(["same", "same"])
    assert cli("users", "add", "dave", "--file", str(path)) == 0
    assert UserDirectory.load(path).authenticate("dave", "same") is not None


def test_no_password_without_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli("users", "add", "dave", "--file", str(tmp_path / "users.json")) == 2
    error = one_line_error(capsys)
    assert "standard input is not a terminal" in error and "--password-stdin" in error


def test_password_stdin_with_nothing_piped_in_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli("users", "add", "dave", "--password-stdin", "--file", str(tmp_path / "users.json")) == 2
    assert "no password on standard input" in one_line_error(capsys)


def test_the_readme_example_works_in_a_script(tmp_path):
    """The README's first contact-center commands, as a script runs them: no terminal to ask in."""
    script = (f"{shlex.quote(sys.executable)} -m cometd_broker users add sam --file users.json "
              "--role supervisor < /dev/null; echo \"exit $?\"\n"
              "printf '%s\\n' \"$PASSWORD\" | "
              f"{shlex.quote(sys.executable)} -m cometd_broker users add alice --file users.json "
              "--agent-id 101 --first-name Alice --password-stdin\n")
    env = {**os.environ, "PASSWORD": "alice-pw", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(["sh", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "exit 2" in result.stdout and "--password-stdin" in result.stderr
    assert "Traceback" not in result.stderr
    assert "added user alice (agent)" in result.stdout
    assert UserDirectory.load(tmp_path / "users.json").authenticate("alice", "alice-pw") is not None


@pytest.mark.parametrize(("argv", "message"), [
    (("alice", "--password", "x"), "user 'alice' already exists"),
    (("bob", "--password", "x", "--agent-id", "1001"), "agent id 1001 already belongs to user 'alice'"),
    (("bob", "--password", "x", "--agent-id", "99"), "agent id '99' must be a whole number 101..59999"),
    (("bad name", "--password", "x"), "user id 'bad name' must be 1-64 characters"),
    (("bob", "--password", ""), "password must not be empty"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_the_file(tmp_path, capsys, argv, message):
    path = tmp_path / "users.json"
    cli("users", "add", "alice", "--password", "a", "--agent-id", "1001", "--file", str(path))
    before = path.read_bytes()
    capsys.readouterr()
    assert cli("users", "add", *argv, "--file", str(path)) == 2
    assert message in one_line_error(capsys)
    assert path.read_bytes() == before


def test_corrupt_file_is_reported_and_kept(tmp_path, capsys):
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"users": [{"userId": "x"}]}))
    assert cli("users", "add", "bob", "--password", "pw", "--file", str(path)) == 2
    err = one_line_error(capsys)
    assert str(path) in err and "users[0] ('x'): 'passwordHash' must be a string" in err
    assert json.loads(path.read_text()) == {"users": [{"userId": "x"}]}
    assert cli("users", "list", "--file", str(path)) == 2
    assert str(path) in one_line_error(capsys)


def test_list_missing_file(tmp_path, capsys):
    path = tmp_path / "absent.json"
    assert cli("users", "list", "--file", str(path)) == 2
    assert f"{path}: no such file" in one_line_error(capsys)


def test_add_into_missing_directory(tmp_path, capsys):
    path = tmp_path / "no" / "users.json"
    assert cli("users", "add", "bob", "--password", "pw", "--file", str(path)) == 2
    assert f"{tmp_path / 'no'}: no such directory" in one_line_error(capsys)


@pytest.mark.parametrize("argv", [
    ("users", "add", "bob", "--password", "pw", "--role", "root", "--file", "f.json"),
    ("users", "add", "bob", "--password", "pw", "--password-stdin", "--file", "f.json"),
    ("users", "add", "bob", "--password", "pw"),
    ("users", "list"),
    ("users",),
])
def test_argparse_rejects_bad_usage_with_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        cli(*argv)
    assert caught.value.code == 2
