"""GET /api/v2/openapi.json: a valid OpenAPI document, public, and in step with the routes the app serves."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from channels import conversation, workbins
from channels.app import NOTIFICATIONS, ContactCenterConfig, install_contact_center
from channels.auth import User, UserDirectory, hash_password
from channels.gws import agent, interactions, openapi
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def make_app(**config):
    users = UserDirectory([User("alice", hash_password("alice-pw", iterations=1), agent_id="101")])
    app = create_app(BrokerConfig())
    before = {(route.method, route.resource.canonical) for route in app.router.routes()}
    install_contact_center(app, app[BROKER], ContactCenterConfig(**config), users=users)
    return app, before


def plugin_routes(app, before) -> set[tuple[str, str]]:
    """(METHOD, path) of every route the contact-center plugin added, except the Bayeux mount at
    /api/v2/notifications (not REST) and the HEAD routes aiohttp adds beside each GET."""
    routes = set()
    for route in app.router.routes():
        key = (route.method, route.resource.canonical)
        path = route.resource.canonical
        if key in before or route.method == "HEAD" or path == NOTIFICATIONS or path.startswith(NOTIFICATIONS + "/"):
            continue
        routes.add(key)
    return routes


def spec_routes(document) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item if method in METHODS}


@pytest.mark.parametrize(("media_token", "csrf"), [("gateway-secret", True), (None, False)])
async def test_every_route_is_in_the_document_and_nothing_else(aiohttp_client, media_token, csrf) -> None:
    app, before = make_app(media_token=media_token, csrf=csrf)
    client = await aiohttp_client(app)
    async with client.get(openapi.OPENAPI_PATH) as response:
        document = await response.json()
    validate(document)
    registered = plugin_routes(app, before)
    assert any(path.startswith("/agentgateway/") for _, path in registered)  # the walk sees every family
    assert (media_token is not None) == any(path.startswith("/api/v2/media/") for _, path in registered)
    assert registered - spec_routes(document) == set(), "routes without an entry in the OpenAPI document"
    assert spec_routes(document) - registered == set(), "documented operations the server does not serve"


async def test_served_without_authentication_as_a_valid_openapi_document(aiohttp_client) -> None:
    app, _ = make_app(media_token="gateway-secret")
    client = await aiohttp_client(app)
    async with client.get(openapi.OPENAPI_PATH) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert "Set-Cookie" not in response.headers  # no login happened
        document = await response.json()
    validate(document)  # raises OpenAPIValidationError naming what is wrong
    assert document["openapi"].startswith("3.0")
    schemes = document["components"]["securitySchemes"]
    assert schemes["basicAuth"] == {**schemes["basicAuth"], "type": "http", "scheme": "basic"}
    assert schemes["sessionCookie"] == {"type": "apiKey", "in": "cookie", "name": "JSESSIONID"}
    assert schemes["csrfToken"]["name"] == "X-CSRF-TOKEN" and schemes["csrfToken"]["in"] == "header"
    assert schemes["mediaToken"]["scheme"] == "bearer"
    assert schemes["guid"] == {**schemes["guid"], "type": "apiKey", "in": "header", "name": "Guid"}


async def test_a_protected_neighbour_still_needs_a_login(aiohttp_client) -> None:
    """Exempting the document must not exempt anything else under /api/v2."""
    app, _ = make_app()
    client = await aiohttp_client(app)
    async with client.get("/api/v2/me") as response:
        assert response.status == 401
        assert (await response.json())["statusCode"] == 20


def operation_names(document, prefix: str) -> list[str]:
    """The operationName of each request-body component `<prefix><operationName>`, in document order."""
    schemas = document["components"]["schemas"]
    names = [name[len(prefix):] for name, schema in schemas.items()
             if name.startswith(prefix) and "operationName" in schema.get("properties", {})]
    for name in names:
        assert schemas[prefix + name]["properties"]["operationName"]["enum"] == [name]
    return names


def test_operation_names_come_from_the_registries() -> None:
    document = openapi.build_document()
    assert operation_names(document, "Conversation") == list(conversation.OPERATIONS)
    assert operation_names(document, "Interaction") == list(interactions.OPERATIONS)
    assert operation_names(document, "Workbin") == list(workbins.OPERATIONS)
    assert operation_names(document, "Me") == list(agent.ME_OPERATIONS)
    assert operation_names(document, "Channel") == list(agent.CHANNEL_OPERATIONS)
    body = document["paths"]["/api/v2/me/chats/{id}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"]["propertyName"] == "operationName"
    assert set(body["discriminator"]["mapping"]) == set(conversation.OPERATIONS)


def test_a_new_operation_without_documented_parameters_fails_the_build(monkeypatch) -> None:
    monkeypatch.setattr(conversation, "OPERATIONS", (*conversation.OPERATIONS, "Hold"))
    with pytest.raises(RuntimeError, match=r"undocumented \['Hold'\]"):
        openapi.build_document()


def test_csrf_setting_decides_the_security_of_state_changing_operations() -> None:
    with_csrf = openapi.build_document(csrf=True)["paths"]
    without = openapi.build_document(csrf=False)["paths"]
    assert with_csrf["/api/v2/me"]["post"]["security"] == [{"sessionCookie": [], "csrfToken": []}]
    assert without["/api/v2/me"]["post"]["security"] == [{"basicAuth": []}, {"sessionCookie": []}]
    assert with_csrf["/api/v2/me"]["get"]["responses"]["200"]["headers"]["X-CSRF-TOKEN"]["required"] is True
    assert "headers" not in without["/api/v2/me"]["get"]["responses"]["200"]


def test_error_responses_pair_http_status_with_status_code() -> None:
    schemas = openapi.build_document()["components"]["schemas"]
    codes = {http: schemas[f"Error{http}"]["properties"]["statusCode"]["enum"] for http in (400, 401, 403, 404)}
    assert codes == {400: [1, 2, 3, 10, 18, 19], 401: [20], 403: [3, 5], 404: [6]}
