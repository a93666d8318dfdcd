"""The domain fails in its own words (errors.py); clients get the GWS statusCodes and HTTP statuses those
failures always had, from the envelope at the edge."""

from __future__ import annotations

import pytest
from aiohttp import web
from convo_helpers import make_engine

from channels.errors import ContactCenterError, InUse, InvalidParameter, InvalidState, Kind, MissingParameter, NotFound
from channels.gws.envelope import DOMAIN_STATUS, GwsError, Status, envelope_middleware
from channels.model import SMS

ANSWERS = [(MissingParameter, Status.MISSING_PARAMETER, 400), (InvalidParameter, Status.VALIDATION_ERROR, 400),
           (InvalidState, Status.INVALID_STATE, 400), (NotFound, Status.NOT_FOUND, 404), (InUse, Status.IN_USE, 400)]


def test_every_kind_of_domain_error_has_a_status_code() -> None:
    assert set(DOMAIN_STATUS) == set(Kind)
    assert {error.kind for error, _, _ in ANSWERS} == set(Kind)


@pytest.mark.parametrize(("error", "status", "http_status"), ANSWERS)
async def test_a_domain_error_is_answered_with_its_envelope(aiohttp_client, error: type[ContactCenterError],
                                                            status: Status, http_status: int) -> None:
    async def refuse(_: web.Request) -> web.Response:
        raise error("why it failed")

    app = web.Application(middlewares=[envelope_middleware])
    app.router.add_get("/refuse", refuse)
    client = await aiohttp_client(app)
    response = await client.get("/refuse")
    assert response.status == http_status
    assert await response.json() == {"statusCode": status.value, "statusMessage": "why it failed"}
    answer = GwsError.of(error("why it failed"))
    assert (answer.status, answer.http_status) == (status, http_status)


async def test_the_engine_names_each_valid_operation_it_runs() -> None:
    conv, routing, _ = make_engine()
    seen: list[str] = []
    conv.operations.on_operation = seen.append  # app.py points it at the metrics label
    await routing.set_ready("alice", "sms")
    ix = await conv.create_inbound(SMS, "PersonP", text="hello")
    await conv.operate("alice", SMS, ix.id, "Accept", {})
    with pytest.raises(InvalidParameter):
        await conv.operate("alice", SMS, ix.id, "Dance", {})
    assert seen == ["Accept"]
    await conv.close()
