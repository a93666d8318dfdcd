"""Schemathesis hooks of test_openapi_schemathesis.py: authenticate generated requests as real clients do.

Loaded by `st run` (config `hooks`), never by pytest (no `test_` prefix). The broker and its credentials
come from OPENAPI_TEST_* environment variables set by the test.

- Agent API: log in once with Basic (GET /api/v2/me), then send the JSESSIONID cookie and the CSRF token,
  as a desktop does. EndContactCenterSession ends that HTTP session; the next request gets 401, which makes
  schemathesis fetch a new login (its default `retry_on=[401]`).
- Media gateway: the bearer token.
- Huawei agent gateway: the Guid of one signed-in agent, signed in again after a generated sign-out.
  Not for the event poll: with a valid Guid and no event queued it parks for 10 s, which would make every
  such example cost 10 s; test_openapi_schemathesis.py checks the poll's replies directly instead.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import requests
import schemathesis

BASE = os.environ["OPENAPI_TEST_URL"]
USER = os.environ["OPENAPI_TEST_USER"]
PASSWORD = os.environ["OPENAPI_TEST_PASSWORD"]
AGENT_ID = os.environ["OPENAPI_TEST_AGENT_ID"]
MEDIA_TOKEN = os.environ["OPENAPI_TEST_MEDIA_TOKEN"]
TIMEOUT = 10.0


@schemathesis.auth().apply_to(path_regex=r"^/api/v2/(me|interactions|users|chats|smssessions)(/|$)")
class AgentLogin:
    def get(self, case: Any, context: Any) -> dict[str, str]:
        credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        response = requests.get(f"{BASE}/api/v2/me", headers={"Authorization": f"Basic {credentials}"},
                                timeout=TIMEOUT)
        response.raise_for_status()
        return {"session": response.cookies["JSESSIONID"], "csrf": response.headers["X-CSRF-TOKEN"]}

    def set(self, case: Any, data: dict[str, str], context: Any) -> None:
        case.cookies = {**(case.cookies or {}), "JSESSIONID": data["session"]}
        case.headers = {**(case.headers or {}), "X-CSRF-TOKEN": data["csrf"]}
        case.headers.pop("Authorization", None)  # the session, not a generated Basic header, is the login


@schemathesis.auth().apply_to(path_regex=r"^/api/v2/media/")
class MediaToken:
    def get(self, case: Any, context: Any) -> str:
        return MEDIA_TOKEN

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


_gateway: dict[str, str | None] = {"guid": None}


def _sign_in() -> str:
    response = requests.put(f"{BASE}/agentgateway/resource/onlineagent/{AGENT_ID}", json={"password": PASSWORD},
                            timeout=TIMEOUT)
    reply = response.json()
    if reply["retcode"] != "0":
        raise RuntimeError(f"agent {AGENT_ID} could not sign in: {reply}")
    return reply["result"]["guid"]


# No schemathesis cache (refresh_interval=None): a sign-out is seen by `after_call`, not by a status code.
@schemathesis.auth(refresh_interval=None).apply_to(path_regex=r"^/agentgateway/").skip_for(
    path_regex=r"/agentevent/|/onlineagent/\{agentid\}$")
class GatewayGuid:
    def get(self, case: Any, context: Any) -> str:
        if _gateway["guid"] is None:
            _gateway["guid"] = _sign_in()
        return _gateway["guid"]

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Guid": data}


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """Forget the Guid once our agent is signed out (a generated logout, or idle sign-out)."""
    if not case.operation.path.startswith("/agentgateway/"):
        return
    if str((case.path_parameters or {}).get("agentid")) != AGENT_ID:
        return
    try:
        retcode = response.json().get("retcode")
    except ValueError:
        return
    logged_out = case.operation.path.endswith("/logout") and retcode == "0"
    if logged_out or retcode == "100-006":
        _gateway["guid"] = None
