"""The official CometD JavaScript client over TLS: `https:` long-polling and `wss:` websocket against a broker
serving `--tls-cert`/`--tls-key` itself, on both HTTP paths. Node trusts the test's self-signed certificate
through NODE_EXTRA_CA_CERTS, with its usual checks (the certificate names 127.0.0.1), nothing disabled.

Scripts: tests/interop/node/cometd_client.mjs (see test_cometd_js.py for the plain-HTTP runs).
"""

from __future__ import annotations

import pytest
from tls_helpers import TlsFiles, make_self_signed

pytest_plugins = ["node_harness"]  # the Node-client fixtures (tests/interop/node_harness.py)

SCRIPT = "cometd_client.mjs"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("http_server", ["lean", "aiohttp"])
@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
async def test_roundtrip_over_tls(broker_process, node_client, monkeypatch, tls, http_server, transport):
    broker = broker_process("--allow-anonymous", "--http-server", http_server,
                            "--tls-cert", tls.cert, "--tls-key", tls.key)
    url = broker.url.replace("http://", "https://", 1)  # the client derives wss: from it for websocket
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", tls.cert)  # node reads it at start: the client's own trust store
    # Long-polls with a Content-Length, as browsers send them, take the lean path when it is on.
    client = await node_client(SCRIPT, url=url, scenario="roundtrip", transport=transport, count=20,
                               channel="/interop/tls", content_length="true")
    await client.expect_success()

    [handshake] = client.of("handshake")
    assert handshake["successful"] is True and handshake["transport"] == transport
    assert [a["seq"] for a in client.of("publish_ack", successful=True)] == list(range(20))
    assert [m["data"] for m in client.of("message")] == [{"seq": i, "text": f"message {i}"} for i in range(20)]
    assert client.of("disconnect", successful=True)
    assert f"listening on https://127.0.0.1:{broker.port}/cometd" in broker.log()
    assert "Traceback" not in broker.log()


async def test_a_client_without_the_certificate_in_its_trust_store_cannot_handshake(broker_process, node_client,
                                                                                    monkeypatch, tls):
    broker = broker_process("--allow-anonymous", "--tls-cert", tls.cert, "--tls-key", tls.key)
    monkeypatch.delenv("NODE_EXTRA_CA_CERTS", raising=False)
    client = await node_client(SCRIPT, url=broker.url.replace("http://", "https://", 1), scenario="handshake",
                               transport="long-polling", expect="success", deadline_ms=3000)
    assert await client.exit_code() != 0
    assert not client.of("handshake", successful=True)
    reasons = {e["failure"]["reason"] for e in client.of("handshake") if "failure" in e}
    assert reasons == {"self-signed certificate"}, client.describe()
