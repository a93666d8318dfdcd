"""The OpenAPI 3.0 document of the contact-center REST API, served at `GET /api/v2/openapi.json`.

The document is built from the code's own tables (operation registries, states, capabilities, statusCodes,
Huawei retcodes and limits), so a new operation or state shows up in it without anyone copying lists.
What the code cannot say (which body parameters an operation reads) is in `_CONVERSATION_PARAMS` and its
siblings; building the document fails when an operation of a registry has no entry there, so the two
cannot drift apart silently.

It describes the server it is served by: the media-gateway paths only when a media token is configured,
and the CSRF header as required only when CSRF protection is on. The Bayeux endpoints
(`/cometd`, `/api/v2/notifications`) and `/admin` are not REST resources of this API and are left out.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from cometd_broker import __version__

from .. import conversation, model, workbins
from ..auth import CSRF_HEADER, ROLES, HttpSessions
from ..huawei import agentgateway
from ..routing import ROUTED_CHANNELS
from . import agent, interactions, media
from .envelope import _HTTP_STATUS, Status

OPENAPI_PATH = "/api/v2/openapi.json"
OPENAPI_VERSION = "3.0.3"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], required: tuple[str, ...] = (), *, closed: bool = True,
         description: str | None = None) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def _enum(values: Any, kind: str = "string") -> Schema:
    return {"type": kind, "enum": list(dict.fromkeys(values))}


_STR: Schema = {"type": "string"}
_BOOL: Schema = {"type": "boolean"}
_USER_DATA: Schema = {"type": "object", "additionalProperties": True,
                      "description": "key-value pairs attached to the interaction"}


# --- the GWS envelope ------------------------------------------------------------------------------------

def _error_codes() -> dict[int, list[int]]:
    """HTTP status -> the statusCodes a failure with that status carries (envelope.py decides the pairing)."""
    codes: dict[int, list[int]] = {}
    for status, http in _HTTP_STATUS.items():
        codes.setdefault(http, []).append(status.value)
    codes[503] = [Status.INTERNAL_ERROR.value]  # the notification service (Redis) is unreachable
    codes[429] = [Status.NOT_AUTHENTICATED.value]  # a Basic login while its user or address is locked out
    codes[403].append(Status.FORBIDDEN.value)  # a missing or wrong X-CSRF-TOKEN
    successes = {Status.OK, Status.PARTIAL_SUCCESS}
    codes[400] = [s.value for s in Status if s not in _HTTP_STATUS and s not in successes]
    return {http: sorted(values) for http, values in sorted(codes.items())}


_ERROR_DESCRIPTIONS = {
    400: "missing parameter (1), not valid in the current state (2), validation error (10), "
         "already exists (18) or in use (19); nothing was changed",
    401: "not authenticated (20)",
    403: "forbidden: missing or invalid CSRF token (3), or no permission (5)",
    404: "not found (6): unknown resource, or one the caller may not see",
    429: "not authenticated (20): too many failed logins of this user or from this address; "
         "retry after Retry-After seconds",
    500: "internal error (4): the request was not applied",
    503: "internal error (4): the notification service is unavailable (clustered broker, Redis unreachable)",
}


def _envelope_schemas() -> dict[str, Schema]:
    schemas: dict[str, Schema] = {
        "StatusCode": {**_enum([s.value for s in Status], "integer"),
                       "description": "GWS statusCode: " + ", ".join(f"{s.value} {s.name}" for s in Status)},
        "Ok": _obj({"statusCode": _enum([Status.OK.value], "integer")}, ("statusCode",)),
        "Accepted": _obj({"statusCode": _enum([Status.OK.value], "integer"),
                          "referenceId": {"type": "integer", "minimum": 1,
                                          "description": "carried by the notifications this operation causes"}},
                         ("statusCode", "referenceId"),
                         description="an asynchronous operation was accepted; its outcome arrives as notifications"),
    }
    for http, codes in _error_codes().items():
        schemas[f"Error{http}"] = _obj({"statusCode": _enum(codes, "integer"), "statusMessage": _STR},
                                       ("statusCode", "statusMessage"), description=_ERROR_DESCRIPTIONS[http])
    return schemas


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error_responses(*, agent_auth: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for http in _error_codes():
        response: dict[str, Any] = {"description": _ERROR_DESCRIPTIONS[http], "content": _json(_ref(f"Error{http}"))}
        if http == 401 and agent_auth:
            response["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"},
                                                        "description": 'Basic realm="GWS"'}}
        if http == 429:
            response["headers"] = {"Retry-After": {"required": True, "schema": {"type": "string"},
                                                   "description": "seconds until the lockout ends"}}
        responses[str(http)] = response
    if not agent_auth:
        responses.pop("403")  # the media gateway has no CSRF token and no roles
        responses.pop("429")  # nor a login to throttle: its bearer token is one configured secret
    return responses


# --- resources -------------------------------------------------------------------------------------------

def _conversation_capabilities() -> list[str]:
    names: list[str] = []
    for caps in (model.INVITED_CAPS, model.CHATTING_CAPS, model.AGENTS_ONLY_CAPS, model.CONSULT_CAPS,
                 model.LEFT_CHAT_CAPS):
        names.extend(caps)
    return list(dict.fromkeys(names))


def _resource_schemas() -> dict[str, Schema]:
    leg_states = [s.value for s in model.LegState]
    conversation_fields = {
        "id": _STR, "state": _enum(leg_states),
        "capabilities": {"type": "array", "items": _enum(_conversation_capabilities()),
                         "description": "the operations the caller may perform now"},
        "participants": {"type": "array", "items": _ref("Participant")},
        "uri": _STR, "userData": _USER_DATA,
        "offer": _obj({
            "expiresAt": {"type": "string", "example": "2014-01-02T14:23:48.109+0000"},
            "expiresAtMs": {"type": "integer", "description": "epoch milliseconds"},
            "timeout": {"type": "number", "description": "the offer timeout in seconds (--offer-timeout)"},
            "preview": _obj({"nickname": _STR, "text": _STR, "timestamp": _STR}, ("nickname", "text", "timestamp"),
                            description="the customer's first message")},
            ("expiresAt", "expiresAtMs", "timeout"),
            description="while Invited only (an extension of GWS): when the offer times out, and a preview")}
    generic_caps = {"type": "array", "items": _enum(interactions.ENGINE_OPERATION)}
    agent_interaction = {"id": _STR, "mediaType": _enum(model.MEDIA), "state": _enum(leg_states),
                         "capabilities": generic_caps, "participants": {"type": "array", "items": _ref("Participant")},
                         "uri": _STR, "userData": _USER_DATA}
    workbin_fields = {"id": _STR, "workbinName": _enum(workbins.DEFAULT_WORKBINS), "displayName": _STR,
                      "type": _enum(["Agent"]), "uri": _STR}
    user_state = _obj({"state": _enum(["Ready", "NotReady"]), "displayName": _STR, "id": _STR, "reason": _STR},
                      ("state", "displayName", "id"))
    return {
        "Participant": _obj({"nickname": _STR, "type": _enum(["Agent", "Customer"]), "participantId": _STR},
                            ("nickname", "type", "participantId")),
        "Message": _obj({
            "index": {"type": "integer", "minimum": 1, "description": "gap-free position in the message log"},
            "type": _enum([t.value for t in model.MessageType]), "from": _ref("Participant"),
            "visibility": _enum([v.value for v in model.Visibility]),
            "timestamp": {"type": "string", "example": "2014-01-02T14:23:18.109+0000"},
            "timestampSeconds": {"type": "integer", "description": "epoch milliseconds (GWS's name for it)"},
            "text": _STR, "noticeText": _STR, "url": _STR},
            ("index", "type", "from", "visibility", "timestamp", "timestampSeconds")),
        "Conversation": _obj(conversation_fields, ("id", "state", "capabilities", "participants", "uri"),
                             description="a chat or SMS session as the calling agent sees it"),
        "ConversationFields": _obj(conversation_fields, description="the fields asked for with fields=a,b"),
        "AgentInteraction": _obj(agent_interaction, ("id", "mediaType", "state", "capabilities", "participants", "uri"),
                                 description="an interaction as the calling agent sees it"),
        "WorkbinItem": _obj({**agent_interaction, "state": _enum([workbins.IN_WORKBIN]),
                             "capabilities": {"type": "array", "maxItems": 0, "items": _STR},
                             "participants": {"type": "array", "maxItems": 0, "items": _ref("Participant")},
                             "workbinId": _STR},
                            ("id", "mediaType", "state", "capabilities", "participants", "uri", "workbinId"),
                            description="an interaction parked in a workbin: nobody works on it"),
        "CenterInteraction": _obj({
            "id": _STR, "mediaType": _enum(model.MEDIA),
            "state": _enum([model.LegState.CHATTING.value, model.LegState.LEFT_CHAT.value,
                            model.LegState.INVITED.value, "Queued", "Completed", workbins.IN_WORKBIN]),
            "queue": _STR, "participants": {"type": "array", "items": _ref("Participant")},
            "agents": {"type": "array", "items": _obj({"userId": _STR, "state": _enum(leg_states),
                                                       "role": _enum([r.value for r in model.Role])},
                                                      ("userId", "state", "role"))},
            "uri": _STR, "workbinId": _STR, "userData": _USER_DATA},
            ("id", "mediaType", "state", "queue", "participants", "agents", "uri"),
            description="an interaction as a whole, as an admin or supervisor sees it"),
        "InteractionSummary": _obj({
            "id": _STR, "mediaType": _enum(model.MEDIA),
            "state": _enum([model.LegState.CHATTING.value, model.LegState.LEFT_CHAT.value,
                            model.LegState.INVITED.value, "Queued", "Completed"]),
            "uri": _STR}, ("id", "mediaType", "state", "uri"),
            description="an active interaction the calling agent takes no part in: only that it exists"),
        "Workbin": _obj(workbin_fields, tuple(workbin_fields)),
        "WorkbinContent": _obj({**workbin_fields, "interactions": {"type": "array", "items": _ref("WorkbinItem")}},
                               (*workbin_fields, "interactions")),
        "User": _obj({"id": _STR, "userName": _STR, "firstName": _STR, "lastName": _STR,
                      "roles": {"type": "array", "items": _enum(sorted(ROLES))}, "uri": _STR, "path": _STR,
                      "employeeId": {"type": "string", "description": "the Huawei agent id (workNo)"},
                      "channels": {"type": "array", "items": _obj({
                          "channel": _enum(ROUTED_CHANNELS), "userState": user_state,
                          "capacity": {"type": "integer", "minimum": 0,
                                       "description": "interactions routing gives the agent at once on this "
                                                      "channel (--capacity); not in GWS"}},
                          ("channel", "userState", "capacity"))},
                      "devices": {"type": "array", "maxItems": 0, "items": {"type": "object"}}},
                     ("id", "userName", "firstName", "lastName", "roles", "uri", "path")),
    }


def _ok_with(properties: dict[str, Schema], required: tuple[str, ...] | None = None) -> Schema:
    fields = {"statusCode": _enum([Status.OK.value], "integer"), **properties}
    return _obj(fields, ("statusCode", *(properties if required is None else required)))


def _listing(key: str, item: Schema) -> Schema:
    """Plain GET gives `uris`; `fields=*` (or a field list) the resources themselves."""
    return {"oneOf": [_ok_with({"uris": {"type": "array", "items": _STR}}),
                      _ok_with({key: {"type": "array", "items": item}})]}


# --- operation bodies ------------------------------------------------------------------------------------

_TARGET = {"targetUri": {"type": "string", "description": "…/users/{id}, …/contacts/{id} or …/queues/{name}"},
           "userUri": {"type": "string", "description": "another name for targetUri (the SMS Invite page's sample "
                                                        "uses it); give one of the two"},
           "targetPath": {"type": "string", "description": "/users/{id}, /contacts/{id} or /queues/{name}"}}
_NONE: tuple[dict[str, Schema], tuple[str, ...]] = ({}, ())

# operationName -> (parameters, required) for the chat and SMS operations (conversation.OPERATIONS).
_CONVERSATION_PARAMS: dict[str, tuple[dict[str, Schema], tuple[str, ...]]] = {
    "Accept": ({"nickname": _STR, "saveLAR": _BOOL}, ()),
    "Reject": _NONE,
    "Invite": (_TARGET, ()),
    "Consult": (_TARGET, ()),
    "Transfer": ({**_TARGET, "queueName": _STR, "text": _STR}, ()),
    "Leave": ({"text": _STR}, ()),
    "Complete": ({"queueName": _STR, "saveLAR": _BOOL, "text": _STR}, ()),
    "SendMessage": ({"text": _STR}, ("text",)),
    "SendStartTypingNotification": _NONE,
    "SendStopTypingNotification": _NONE,
    "SendUrl": ({"url": {"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s/]+[^\\s]*$",
                         "maxLength": conversation.MAX_URL_LENGTH,
                         "description": "absolute http(s) URL pushed to the customer (PushUrl message)"}}, ("url",)),
    "SendCustomNotice": ({"noticeText": _STR}, ("noticeText",)),
    "SendToAgents": ({"text": _STR}, ("text",)),
    "SendStartTypingToAgentsNotification": _NONE,
    "SendStopTypingToAgentsNotification": _NONE,
    "SendCustomNoticeToAgents": ({"noticeText": _STR}, ("noticeText",)),
    "SetInFocus": _NONE,
    "SetDisposition": ({"disposition": _STR, "dispositionKey": {"type": "string", "minLength": 1}}, ("disposition",)),
    "AttachUserData": ({"userData": _USER_DATA}, ("userData",)),
    "UpdateUserData": ({"userData": _USER_DATA}, ("userData",)),
    "DeleteUserData": ({"keys": {"type": "array", "items": _STR}}, ("keys",)),
    "RemoveParticipantFromConference": (_TARGET, ()),
}

# The generic interactions API (interactions.OPERATIONS).
_INTERACTION_PARAMS: dict[str, tuple[dict[str, Schema], tuple[str, ...]]] = {
    "Accept": ({"nickname": _STR, "saveLAR": _BOOL}, ()),
    "Reject": _NONE,
    "Complete": ({"saveLAR": _BOOL, "text": _STR}, ()),
    "PlaceInQueue": ({"queueName": _STR}, ("queueName",)),
    "PlaceInWorkbin": ({"workbin": {"type": "string", "description": "workbin id or workbinName"}}, ("workbin",)),
    "UpdateUserData": ({"userData": _USER_DATA}, ("userData",)),
    "AttachUserData": ({"userData": _USER_DATA}, ("userData",)),
    "DeleteUserData": ({"keys": {"type": "array", "items": _STR}, "userData": _USER_DATA}, ()),
    "SingleStepTransfer": ({"userId": _STR}, ("userId",)),
    "Transfer": ({"userId": _STR}, ("userId",)),
    "Cancel": _NONE,
    "GetWorkbinContent": ({"workbin": {"type": "string", "description": "workbin id or workbinName"}},
                          ("workbin",)),
}

_WORKBIN_PARAMS: dict[str, tuple[dict[str, Schema], tuple[str, ...]]] = {
    "AddInteraction": ({"id": {"type": "string", "description": "the interaction id"}}, ("id",)),
    "Pull": ({"id": {"type": "string", "description": "the interaction id"}}, ("id",)),
    "Subscribe": _NONE,
    "Unsubscribe": _NONE,
}

_ME_PARAMS: dict[str, tuple[dict[str, Schema], tuple[str, ...]]] = {
    "StartContactCenterSession": ({"channels": {"type": "array", "minItems": 1, "items": _STR,
                                                "description": "routed channels: " + ", ".join(ROUTED_CHANNELS)}},
                                  ("channels",)),
    "EndContactCenterSession": _NONE,
}

_CHANNEL_PARAMS: dict[str, tuple[dict[str, Schema], tuple[str, ...]]] = {
    "Ready": _NONE,
    "NotReady": ({"reason": _STR}, ()),
}


def _operation_schemas(prefix: str, names: tuple[str, ...],
                       params: dict[str, tuple[dict[str, Schema], tuple[str, ...]]]) -> dict[str, Schema]:
    """One component per operationName of a registry; a missing `params` entry is a build error."""
    missing = [name for name in names if name not in params]
    extra = [name for name in params if name not in names]
    if missing or extra:
        raise RuntimeError(f"OpenAPI {prefix} operations out of date: undocumented {missing}, unknown {extra}")
    schemas = {}
    for name in names:
        properties, required = params[name]
        schemas[f"{prefix}{name}"] = _obj({"operationName": _enum([name]), **properties},
                                          ("operationName", *required), closed=False)
    return schemas


def _operation_body(prefix: str, names: tuple[str, ...]) -> dict[str, Any]:
    refs = {name: f"#/components/schemas/{prefix}{name}" for name in names}
    schema = {"oneOf": [{"$ref": ref} for ref in refs.values()],
              "discriminator": {"propertyName": "operationName", "mapping": refs}}
    return {"required": True, "content": _json(schema)}


def _body(schema: Schema, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": _json(schema)}


# --- the Huawei agent gateway ----------------------------------------------------------------------------

_RETCODES = {
    agentgateway.SUCCESS: "success",
    agentgateway.INVALID_PARAMETER: "invalid parameter (also a wrong agent id or password at sign-in)",
    agentgateway.GUID_ERROR: "the Guid header is missing or is not the agent's sign-in Guid",
    agentgateway.ALREADY_SIGNED_IN: "the agent is already signed in",
    agentgateway.NOT_SIGNED_IN: "the agent is not signed in",
    agentgateway.OPERATION_FAILED: "internal error: the request was not applied",
    agentgateway.NOT_CHAIRPERSON: "the agent is not the chairperson of an active conference",
    agentgateway.PARTICIPANT_CONFLICT: "a participant is already (or not) in the conference, or it is full",
}


def _gateway_schemas() -> dict[str, Schema]:
    retcode = {**_enum(_RETCODES), "description": "; ".join(f"{k}: {v}" for k, v in _RETCODES.items())}
    address = {"addressType": {**_enum(agentgateway.ADDRESS_TYPES),
                               "description": "; ".join(f"{k}: {v}" for k, v in agentgateway.ADDRESS_TYPES.items())},
               "address": {"type": "string", "minLength": 1, "maxLength": agentgateway.MAX_ADDRESS}}
    device = {"type": "integer", "minimum": 0, "maximum": agentgateway.MAX_DEVICE_VALUE}

    def lenient_int(allowed: tuple[int, ...]) -> Schema:
        return {"oneOf": [_enum(allowed, "integer"), _enum([str(a) for a in allowed])]}

    lenient_bool = {"oneOf": [_BOOL, _enum(["true", "false"])], "default": True}
    return {
        "GatewayReply": _obj({"message": _STR, "retcode": retcode, "result": {"type": "object"}},
                             ("message", "retcode", "result"),
                             description="every answer is HTTP 200: clients branch on retcode"),
        "GatewayEventReply": _obj({"message": _STR, "retcode": _enum([agentgateway.SUCCESS]),
                                   "event": {**_obj({"eventType": _STR, "workNo": _STR, "content": {"type": "object"}},
                                                    ("eventType", "workNo", "content")), "nullable": True}},
                                  ("message", "retcode", "event"),
                                  description="the agent's oldest event, or null when none came in time"),
        "SignIn": _obj({
            "password": {"type": "string", "maxLength": agentgateway.MAX_PASSWORD},
            "phonenum": {"type": "string", "maxLength": agentgateway.MAX_PHONE},
            "autoanswer": lenient_bool, "autoenteridle": lenient_bool, "releasephone": lenient_bool,
            "agenttype": lenient_int(agentgateway.AGENT_TYPES), "status": lenient_int(agentgateway.SIGN_IN_STATUSES)},
            ("password",), closed=False),
        "BatchAdd": _obj({
            "addresses": {"type": "array", "minItems": 1, "maxItems": agentgateway.MAX_ADD_ADDRESSES,
                          "items": _obj({**address, "deviceCallType": device, "deviceType": device},
                                        ("addressType", "address"), closed=False)},
            "beepTone": _BOOL, "playMode": {"type": "integer", "default": agentgateway.PLAY_ANNOUNCEMENT_FILE},
            "voicePath": {"type": "string", "maxLength": agentgateway.MAX_VOICE_PATH,
                          "description": "required when beepTone is true"},
            "caller": {"type": "string", "maxLength": agentgateway.MAX_CALLER}},
            ("addresses",), closed=False),
        "BatchRemove": _obj({
            "addresses": {"type": "array", "minItems": 1, "maxItems": agentgateway.MAX_REMOVE_ADDRESSES,
                          "items": _obj(address, ("addressType", "address"), closed=False)}},
            ("addresses",), closed=False),
    }


# --- paths -----------------------------------------------------------------------------------------------

def _id_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


_AGENT_ID = {"name": "agentid", "in": "path", "required": True,
             "schema": {"type": "integer", "minimum": agentgateway.MIN_AGENT_ID, "maximum": agentgateway.MAX_AGENT_ID},
             "description": "the agent's workNo", "example": agentgateway.MIN_AGENT_ID}
_FIELDS = {"name": "fields", "in": "query", "required": False, "schema": _enum(["*"]),
           "description": "`*` for the full resources instead of their uris"}


class _Builder:
    def __init__(self, *, csrf: bool, media: bool) -> None:
        self.csrf = csrf
        self.media = media
        self.paths: dict[str, dict[str, Any]] = {}

    def add(self, path: str, method: str, operation: dict[str, Any]) -> None:
        self.paths.setdefault(path, {})[method] = operation

    def agent_op(self, path: str, method: str, summary: str, ok: Schema, *, tag: str,
                 parameters: list[dict[str, Any]] = (), body: dict[str, Any] | None = None) -> None:
        """An operation of the agent API: Basic or the session cookie; POST/PUT also the CSRF token."""
        changes = method != "get"
        if changes and self.csrf:
            security = [{"sessionCookie": [], "csrfToken": []}]
        else:
            security = [{"basicAuth": []}, {"sessionCookie": []}]
        success: dict[str, Any] = {"description": "success", "content": _json(ok)}
        if not changes and self.csrf:
            success["headers"] = {
                CSRF_HEADER: {"required": True, "schema": {"type": "string"},
                              "description": "the session's CSRF token: send it back on POST/PUT/DELETE"},
                "X-CSRF-HEADER": {"required": True, "schema": _enum([CSRF_HEADER]),
                                  "description": "the name of the header the token goes in"}}
        operation: dict[str, Any] = {
            "tags": [tag], "summary": summary, "operationId": _operation_id(method, path), "security": security,
            "responses": {"200": success, **_error_responses(agent_auth=True)}}
        if parameters:
            operation["parameters"] = list(parameters)
        if body is not None:
            operation["requestBody"] = body
        self.add(path, method, operation)

    def build(self) -> None:
        self._spec()
        self._me()
        for kind in (model.SMS, model.CHAT):
            self._conversations(kind)
        self._interactions()
        self._workbins()
        if self.media:
            self._media()
        self._gateway()

    def _spec(self) -> None:
        self.add(OPENAPI_PATH, "get", {
            "tags": ["meta"], "summary": "this document", "operationId": "getOpenApi", "security": [],
            "responses": {"200": {"description": "the OpenAPI document", "content": _json({"type": "object"})}}})

    def _me(self) -> None:
        partial = {"type": "array", "items": _obj({"channel": _STR, "statusCode": {"type": "integer"},
                                                   "statusMessage": _STR}, ("channel", "statusCode"))}
        subresources = {"name": "subresources", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "`*` adds the agent's channels and devices"}
        self.agent_op("/api/v2/me", "get", "the logged-in user", _ok_with({"user": _ref("User")}), tag="me",
                      parameters=[subresources])
        self.agent_op("/api/v2/me", "post", "start or end the contact-center session",
                      {"oneOf": [_ref("Ok"), _obj({"statusCode": _enum([Status.PARTIAL_SUCCESS.value], "integer"),
                                                   "channels": partial}, ("statusCode", "channels"),
                                                  description="some channels failed: a status per channel")]},
                      tag="me", body=_operation_body("Me", agent.ME_OPERATIONS))
        self.agent_op("/api/v2/users/{id}", "get", "a user at its uri: oneself (as /api/v2/me), or anyone for "
                      "an admin or supervisor", _ok_with({"user": _ref("User")}), tag="me",
                      parameters=[_id_param("id", "the user id"), subresources])
        self.agent_op("/api/v2/me/channels/{channel}", "post", "Ready or NotReady on one channel", _ref("Ok"),
                      tag="me", body=_operation_body("Channel", agent.CHANNEL_OPERATIONS),
                      parameters=[{"name": "channel", "in": "path", "required": True,
                                   "schema": _enum(ROUTED_CHANNELS), "description": "a routed channel"}])

    def _conversations(self, kind: model.MediaKind) -> None:
        base = f"/api/v2/me/{kind.collection}"
        tag = kind.collection
        ident = _id_param("id", f"the {kind.resource_key} (interaction) id")
        self.agent_op(base, "get", f"the agent's active {kind.collection}",
                      {"oneOf": [_ok_with({"uris": {"type": "array", "items": _STR}}),
                                 _ok_with({kind.collection: {"type": "array", "items": _ref("ConversationFields")}})]},
                      tag=tag, parameters=[{**_FIELDS, "schema": {"type": "string", "pattern": r"[^,\s]"},
                                            "description": "`*` for the full resources, or a comma-separated "
                                                           "list of field names"}])
        self.agent_op(base + "/{id}", "get", f"one {kind.resource_key}",
                      _ok_with({kind.resource_key: _ref("Conversation")}), tag=tag, parameters=[ident])
        self.agent_op(base + "/{id}", "post", f"an operation on a {kind.resource_key}", _ref("Accepted"), tag=tag,
                      parameters=[ident], body=_operation_body("Conversation", conversation.OPERATIONS))
        # The resource's uri (notifications and listings hand it out): the same as under /me.
        uri = f"/api/v2/{kind.collection}/{{id}}"
        self.agent_op(uri, "get", f"one {kind.resource_key} at its uri: as GET {base}/{{id}}",
                      _ok_with({kind.resource_key: _ref("Conversation")}), tag=tag, parameters=[ident])
        self.agent_op(uri, "post", f"an operation on a {kind.resource_key} at its uri: as POST {base}/{{id}}",
                      _ref("Accepted"), tag=tag, parameters=[ident],
                      body=_operation_body("Conversation", conversation.OPERATIONS))

    def _interactions(self) -> None:
        ident = _id_param("id", "the interaction id")
        self.agent_op("/api/v2/me/interactions", "get", "the agent's active interactions",
                      _listing("interactions", _ref("AgentInteraction")), tag="interactions", parameters=[_FIELDS])
        self.agent_op("/api/v2/me/interactions/{id}", "post", "an operation on an interaction", _ref("Accepted"),
                      tag="interactions", parameters=[ident],
                      body=_operation_body("Interaction", interactions.OPERATIONS))
        self.agent_op("/api/v2/interactions", "get", "every open interaction, whole, for an admin or supervisor; "
                      "every active one for an agent: its own as it sees them, the others as summaries (403 for "
                      "an agent with --interactions-list-supervisors-only)",
                      _listing("interactions", {"oneOf": [_ref("CenterInteraction"), _ref("AgentInteraction"),
                                                          _ref("InteractionSummary")]}),
                      tag="interactions", parameters=[_FIELDS])
        self.agent_op("/api/v2/interactions/{id}", "get", "one interaction: the caller's view, the whole for "
                      "an admin or supervisor, a summary for another agent while it is active",
                      _ok_with({"interaction": {"oneOf": [_ref("AgentInteraction"), _ref("WorkbinItem"),
                                                          _ref("CenterInteraction"), _ref("InteractionSummary")]}}),
                      tag="interactions", parameters=[ident])
        self.agent_op("/api/v2/interactions/{id}", "put", "merge user data into the interaction", _ref("Accepted"),
                      tag="interactions", parameters=[ident],
                      body=_body(_obj({"userData": _USER_DATA}, ("userData",),
                                      description="only userData can be updated")))

    def _workbins(self) -> None:
        ident = _id_param("id", "the workbin id (or workbinName)")
        self.agent_op("/api/v2/me/workbins", "get", "the agent's workbins", _listing("workbins", _ref("Workbin")),
                      tag="workbins", parameters=[_FIELDS])
        self.agent_op("/api/v2/me/workbins/{id}", "get", "one workbin with its interactions",
                      _ok_with({"workbin": _ref("WorkbinContent")}), tag="workbins", parameters=[ident])
        self.agent_op("/api/v2/me/workbins/{id}", "post", "an operation on a workbin", _ref("Accepted"),
                      tag="workbins", parameters=[ident], body=_operation_body("Workbin", workbins.OPERATIONS))

    def _media(self) -> None:
        base = media.BASE
        kind = {"name": "media", "in": "path", "required": True, "schema": _enum(model.MEDIA),
                "description": "the medium"}
        ident = _id_param("id", "the interaction id")

        def op(path: str, method: str, summary: str, ok: Schema, body: Schema | None = None,
               parameters: tuple[dict[str, Any], ...] = (kind, ident)) -> None:
            operation: dict[str, Any] = {
                "tags": ["media gateway"], "summary": summary, "operationId": _operation_id(method, path),
                "security": [{"mediaToken": []}], "parameters": list(parameters),
                "responses": {"200": {"description": "success", "content": _json(ok)},
                              **_error_responses(agent_auth=False)}}
            if body is not None:
                operation["requestBody"] = _body(body)
            self.add(path, method, operation)

        op(base, "post", "a customer starts a chat or SMS: it waits in a queue for an agent",
           _ok_with({"id": _STR, "uri": _STR}),
           _obj({"nickname": {"type": "string", "minLength": 1, "pattern": r"\S", "description": "not blank"},
                 "text": _STR, "queue": {"type": "string", "default": "default"},
                 "contactId": {"type": "string", "description": "whom last-agent routing remembers"}},
                ("nickname",), closed=False), parameters=(kind,))
        op(base + "/{id}/messages", "post", "the customer says something", _ref("Ok"),
           _obj({"text": _STR}, ("text",), closed=False))
        op(base + "/{id}/typing", "post", "the customer started or stopped typing", _ref("Ok"),
           _obj({"state": _enum(media.TYPING_STATES)}, ("state",), closed=False))
        op(base + "/{id}/end", "post", "the customer left", _ref("Ok"))
        op(base + "/{id}/transcript", "get", "what the customer sees: the messages with visibility All",
           _ok_with({"messages": {"type": "array", "items": _ref("Message")}}))

    def _gateway(self) -> None:
        prefix = agentgateway.PREFIX

        def op(path: str, method: str, summary: str, *, reply: str = "GatewayReply", body: Schema | None = None,
               body_required: bool = True, signed_in: bool = True, headers: dict[str, Any] | None = None) -> None:
            success: dict[str, Any] = {"description": "every answer, success or not (see retcode)",
                                       "content": _json(_ref(reply))}
            if headers:
                success["headers"] = headers
            operation: dict[str, Any] = {
                "tags": ["agent gateway"], "summary": summary, "operationId": _operation_id(method, path),
                "security": [{"guid": []}] if signed_in else [], "parameters": [_AGENT_ID],
                "responses": {"200": success}}
            if body is not None:
                operation["requestBody"] = _body(body, required=body_required)
            self.add(path, method, operation)

        op(prefix + "/onlineagent/{agentid}", "put", "sign in: result.guid is the Guid of later requests",
           body=_ref("SignIn"), signed_in=False,
           headers={"Set-GUID": {"required": False, "schema": {"type": "string"},
                                 "description": "the new Guid (on success)"}})
        op(prefix + "/onlineagent/{agentid}/logout", "delete", "sign out")
        op(prefix + "/agentevent/{agentid}", "get", "the oldest event, waiting up to 10 s for one",
           reply="GatewayEventReplyOrError")
        conf = prefix + "/agentconf/{agentid}"
        op(conf + "/requestagentconf", "post", "start a conference chaired by the agent",
           body={"type": "object"}, body_required=False)
        op(conf + "/batchaddparticipant", "post", "invite phone numbers or agents, all or none", body=_ref("BatchAdd"))
        op(conf + "/batchremoveparticipant", "post", "remove participants, all or none", body=_ref("BatchRemove"))


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.replace("/api/v2", "").replace(agentgateway.PREFIX, "gateway").split("/")]
    return method + "".join(w[:1].upper() + w[1:] for w in words if w)


def build_document(*, csrf: bool = True, media: bool = True) -> dict[str, Any]:
    """The OpenAPI document of the API as this server serves it."""
    builder = _Builder(csrf=csrf, media=media)
    builder.build()
    schemas = {**_envelope_schemas(), **_resource_schemas(), **_gateway_schemas(),
               **_operation_schemas("Me", agent.ME_OPERATIONS, _ME_PARAMS),
               **_operation_schemas("Channel", agent.CHANNEL_OPERATIONS, _CHANNEL_PARAMS),
               **_operation_schemas("Conversation", conversation.OPERATIONS, _CONVERSATION_PARAMS),
               **_operation_schemas("Interaction", interactions.OPERATIONS, _INTERACTION_PARAMS),
               **_operation_schemas("Workbin", workbins.OPERATIONS, _WORKBIN_PARAMS)}
    schemas["GatewayEventReplyOrError"] = {"oneOf": [_ref("GatewayEventReply"), _ref("GatewayReply")]}
    security_schemes: dict[str, Any] = {
        "basicAuth": {"type": "http", "scheme": "basic",
                      "description": "logs in: the reply sets the JSESSIONID cookie (and, on GET, the CSRF token)"},
        "sessionCookie": {"type": "apiKey", "in": "cookie", "name": HttpSessions.COOKIE},
        "csrfToken": {"type": "apiKey", "in": "header", "name": CSRF_HEADER,
                      "description": "the X-CSRF-TOKEN value of any GET reply of the same session"},
        "guid": {"type": "apiKey", "in": "header", "name": "Guid",
                 "description": "result.guid of the agent's sign-in"},
    }
    if media:
        security_schemes["mediaToken"] = {"type": "http", "scheme": "bearer",
                                          "description": "the media gateway's token (--media-token)"}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Contact-center REST API (GWS v2 agent API, Huawei agent gateway)", "version": __version__,
                 "description": "Every GWS reply is the envelope {statusCode, statusMessage?}; asynchronous "
                                "operations answer {statusCode: 0, referenceId} and their outcome arrives as "
                                "CometD notifications on /api/v2/notifications (channels /v2/me/...)."},
        "paths": builder.paths,
        "components": {"schemas": schemas, "securitySchemes": security_schemes},
    }


def add_routes(app: web.Application, *, csrf: bool, media: bool) -> None:
    """Serve the document (built once) at OPENAPI_PATH; the caller exempts the path from authentication."""
    body = orjson.dumps(build_document(csrf=csrf, media=media))

    async def openapi_json(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(OPENAPI_PATH, openapi_json)
