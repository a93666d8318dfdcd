"""The running server against its own OpenAPI document, with schemathesis (`st run`): every generated
request, valid or not, must get a documented status, content type, headers and body, and never a 5xx.

Bounded for CI: a fixed seed, deterministic generation, at most MAX_EXAMPLES cases per operation and phase,
no example database. The generated requests are logged in by tests/channels/openapi_hooks.py.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import schemathesis

from channels.auth import User, UserDirectory, hash_password
from channels.gws.openapi import OPENAPI_PATH

PASSWORD = "alice-pw"
AGENT_ID = "101"
MEDIA_TOKEN = "gateway-secret-token"
MAX_EXAMPLES = 25
SEED = 20261121
RUN_TIMEOUT = 300  # seconds: a hung run fails instead of blocking CI
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance")
HOOKS = Path(__file__).with_name("openapi_hooks.py")
TIMEOUT = 10.0


def users_file(path: Path) -> Path:
    # iterations=1: logins (and the gateway's sign-in) stay cheap however many requests are generated.
    users = UserDirectory([
        User("alice", hash_password(PASSWORD, iterations=1), frozenset({"agent", "supervisor"}), "Alice", "Agent",
             AGENT_ID),
        User("bob", hash_password("bob-pw", iterations=1), first_name="Bob", agent_id="102"),
    ])
    users.save(path)
    return path


class Desk:
    """Alice's desktop, to give the generated requests live interactions to work on."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()
        credentials = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        response = self.http.get(f"{base}/api/v2/me", headers={"Authorization": f"Basic {credentials}"},
                                 timeout=TIMEOUT)
        response.raise_for_status()
        self.http.headers["X-CSRF-TOKEN"] = response.headers["X-CSRF-TOKEN"]

    def post(self, path: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        response = self.http.post(self.base + path, json=body, headers=headers, timeout=TIMEOUT)
        reply = response.json()
        assert response.status_code == 200 and reply["statusCode"] == 0, reply
        return reply

    def inbound(self, medium: str, nickname: str) -> str:
        return self.post(f"/api/v2/media/{medium}/interactions", {"nickname": nickname, "text": "hello"},
                         Authorization=f"Bearer {MEDIA_TOKEN}")["id"]

    def wait_offered(self, collection: str, interaction_id: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            response = self.http.get(f"{self.base}/api/v2/me/{collection}/{interaction_id}", timeout=TIMEOUT)
            if response.status_code == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"{interaction_id} was not offered to alice")


def live_interactions(base: str) -> dict[str, str]:
    """An SMS and a chat offered to alice, and a chat she parked in her workbin."""
    desk = Desk(base)
    desk.post("/api/v2/me", {"operationName": "StartContactCenterSession", "channels": ["sms", "chat"]})
    for channel in ("sms", "chat"):
        desk.post(f"/api/v2/me/channels/{channel}", {"operationName": "Ready"})
    parked = desk.inbound("chat", "Parked")
    desk.wait_offered("chats", parked)
    desk.post(f"/api/v2/me/chats/{parked}", {"operationName": "Accept"})
    desk.post("/api/v2/me/workbins/alice-inprogress", {"operationName": "AddInteraction", "id": parked})
    sms, chat = desk.inbound("sms", "Sam"), desk.inbound("chat", "Cat")
    desk.wait_offered("smssessions", sms)
    desk.wait_offered("chats", chat)
    return {"sms": sms, "chat": chat, "parked": parked}


def config_file(path: Path, ids: dict[str, str]) -> Path:
    """Most generated ids are live ones (the rest random), so operations reach their real logic."""

    def bind(path_regex: str, name: str, dictionary: str) -> str:
        return (f'[[operations]]\ninclude-path-regex = "{path_regex}"\n'
                f'parameters = {{ "path.{name}" = {{ dictionary = "{dictionary}", probability = 0.8 }} }}\n')

    path.write_text(f"""
seed = {SEED}
workers = 1
color = false
hooks = "{HOOKS}"

[generation]
max-examples = {MAX_EXAMPLES}
deterministic = true
database = "none"

[phases.stateful]
enabled = false

[dictionaries.sms]
values = ["{ids['sms']}"]
[dictionaries.chat]
values = ["{ids['chat']}", "{ids['parked']}"]
[dictionaries.interaction]
values = ["{ids['sms']}", "{ids['chat']}", "{ids['parked']}"]
[dictionaries.workbin]
values = ["alice-inprogress", "alice-drafts", "Drafts"]
[dictionaries.user]
values = ["alice", "bob"]
[dictionaries.agent]
values = [{AGENT_ID}]

{bind("/smssessions/", "id", "sms")}
{bind("/chats/", "id", "chat")}
{bind("/interactions/", "id", "interaction")}
{bind("/workbins/", "id", "workbin")}
{bind("^/api/v2/users/", "id", "user")}
{bind("^/agentgateway/", "agentid", "agent")}
""")
    return path


def test_the_server_matches_its_openapi_document(tmp_path, broker_process) -> None:
    # Fuzzing sends wrong passwords from one address by the hundred: the login throttle would rightly lock
    # alice and 127.0.0.1 out (test_login_throttle.py covers it). 0 turns the lockout off.
    broker = broker_process("--users-file", str(users_file(tmp_path / "users.json")), "--media-token", MEDIA_TOKEN,
                            "--offer-timeout", "3600", "--login-max-failures", "0")
    base = f"http://127.0.0.1:{broker.port}"
    ids = live_interactions(base)
    env = {**os.environ, "OPENAPI_TEST_URL": base, "OPENAPI_TEST_USER": "alice", "OPENAPI_TEST_PASSWORD": PASSWORD,
           "OPENAPI_TEST_AGENT_ID": AGENT_ID, "OPENAPI_TEST_MEDIA_TOKEN": MEDIA_TOKEN, "NO_COLOR": "1"}
    command = [sys.executable, "-m", "schemathesis.cli", "--no-color",
               "--config-file", str(config_file(tmp_path / "schemathesis.toml", ids)), "run", f"{base}{OPENAPI_PATH}",
               "--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing",
               "--request-timeout", "15", "--output-truncate", "false", "--suppress-health-check", "all"]
    started = time.monotonic()
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    output = run.stdout + run.stderr
    print(output)  # the per-operation summary; on failure, every failing case with its curl reproduction
    assert run.returncode == 0, f"schemathesis found failures (exit {run.returncode}):\n{output}"
    counted = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counted and counted[1] == counted[2], output
    document = requests.get(base + OPENAPI_PATH, timeout=TIMEOUT).json()
    # schemathesis leaves out the operation that serves the document itself (test_openapi.py covers it).
    operations = sum(1 for path, item in document["paths"].items() for _ in item if path != OPENAPI_PATH)
    assert f"Selected: {operations}/{operations}\n" in output and f"Tested: {operations}\n" in output, \
        f"not every one of the {operations} operations was tested"
    assert int(counted[1]) >= 10 * operations, output
    print(f"schemathesis run: {time.monotonic() - started:.1f} s")
    assert broker.process.poll() is None, "the broker died during the run:\n" + broker.log()
    # aiohttp logs schemathesis's malformed-request probes itself; our code must have logged no error.
    assert not re.search(r"ERROR channels", broker.log()), broker.log()


def test_event_poll_replies_match_the_document(tmp_path, broker_process) -> None:
    """The poll the schemathesis run cannot afford to park (see openapi_hooks.py): an event, no event
    (a superseded poll), and a poll ended by a sign-out, each against the document."""
    broker = broker_process("--users-file", str(users_file(tmp_path / "users.json")))
    base = f"http://127.0.0.1:{broker.port}"
    schema = schemathesis.openapi.from_url(base + OPENAPI_PATH)
    gateway = base + "/agentgateway/resource"
    sign_in = requests.put(f"{gateway}/onlineagent/{AGENT_ID}", json={"password": PASSWORD}, timeout=TIMEOUT)
    schema["/agentgateway/resource/onlineagent/{agentid}"]["PUT"].validate_response(sign_in)
    guid = sign_in.json()["result"]["guid"]
    assert sign_in.headers["Set-GUID"] == guid
    headers = {"Guid": guid}
    conference = requests.post(f"{gateway}/agentconf/{AGENT_ID}/requestagentconf", headers=headers, timeout=TIMEOUT)
    schema["/agentgateway/resource/agentconf/{agentid}/requestagentconf"]["POST"].validate_response(conference)
    assert conference.json()["result"]["confId"] >= 1

    poll = schema["/agentgateway/resource/agentevent/{agentid}"]["GET"]
    events = []
    for _ in range(2):  # requestagentconf queued SelfJoinResult and RequestSuccess
        reply = requests.get(f"{gateway}/agentevent/{AGENT_ID}", headers=headers, timeout=TIMEOUT)
        poll.validate_response(reply)
        events.append(reply.json()["event"]["eventType"])
    assert events == ["AgentConf_SelfJoinResult", "AgentConf_RequestSuccess"]

    def park() -> requests.Response:
        return requests.get(f"{gateway}/agentevent/{AGENT_ID}", headers=headers, timeout=TIMEOUT)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(park)
        time.sleep(0.3)  # let it park; if it has not, the two polls only swap roles below
        second = pool.submit(park)
        time.sleep(0.3)
        logout = requests.delete(f"{gateway}/onlineagent/{AGENT_ID}/logout", headers=headers, timeout=TIMEOUT)
        replies = [first.result(timeout=TIMEOUT), second.result(timeout=TIMEOUT)]
    schema["/agentgateway/resource/onlineagent/{agentid}/logout"]["DELETE"].validate_response(logout)
    for reply in replies:
        poll.validate_response(reply)
    outcomes = sorted((reply.json()["retcode"], reply.json().get("event", "-")) for reply in replies)
    assert outcomes == [("0", None), ("100-006", "-")]  # superseded: no event; the other: signed out
