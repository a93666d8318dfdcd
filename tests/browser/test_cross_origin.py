"""Headless Chromium against a broker subprocess: a page of a listed origin uses it with credentials over
long-polling (a preflighted JSON POST) and websocket; a page of another origin can do neither.

The page is served by a small HTTP server on another port of loopback, reached as http://127.0.0.1:PORT
(listed: another origin of the same site, the case `SameSite=Lax` does not protect) and as
http://localhost:PORT (not listed). A page Playwright would answer itself (`page.route`) has no address,
and Chromium's local network access checks would refuse its requests to loopback for that alone.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import start_broker
from desktop_harness import CHROMIUM_FLAGS, require_browser

PROBE = """async (url) => {
  const out = {};
  const post = async (messages) => {
    const response = await fetch(url, {method: "POST", credentials: "include",
                                       headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify(messages)});
    return (await response.json())[0];
  };
  try {
    const shake = await post([{channel: "/meta/handshake", version: "1.0", id: "1",
                               supportedConnectionTypes: ["long-polling"]}]);
    out.handshake = shake.successful;
    const connect = await post([{channel: "/meta/connect", clientId: shake.clientId, id: "2",
                                 connectionType: "long-polling"}]);
    out.connect = connect.successful;
  } catch (error) {
    out.fetch_error = String(error);
  }
  out.websocket = await new Promise((resolve) => {
    const ws = new WebSocket(url.replace("http", "ws"));
    ws.onopen = () => ws.send(JSON.stringify([{channel: "/meta/handshake", version: "1.0", id: "3",
                                               supportedConnectionTypes: ["websocket"]}]));
    ws.onmessage = (message) => { resolve(JSON.parse(message.data)[0].successful ? "handshake" : "failed");
                                  ws.close(); };
    ws.onerror = () => resolve("error");
    setTimeout(() => resolve("timeout"), 5000);
  });
  return out;
}"""


class CrmPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>crm</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def crm_port():
    server = ThreadingHTTPServer(("127.0.0.1", 0), CrmPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def broker(crm_port):
    running = start_broker("--allow-anonymous", "--allowed-origins", f"http://127.0.0.1:{crm_port}")
    yield running
    running.stop()


def test_a_listed_origin_s_page_uses_the_broker_and_another_origin_s_cannot(broker, crm_port):
    chromium = require_browser()
    from playwright.sync_api import sync_playwright

    listed, foreign = f"http://127.0.0.1:{crm_port}", f"http://localhost:{crm_port}"
    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            for origin in (listed, foreign):
                page = browser.new_context().new_page()
                page.goto(origin + "/")
                results[origin] = page.evaluate(PROBE, broker.url)
        finally:
            browser.close()
    assert results[listed] == {"handshake": True, "connect": True, "websocket": "handshake"}
    refused = results[foreign]
    assert "fetch_error" in refused and "handshake" not in refused, refused  # its preflight is answered 403
    assert refused["websocket"] == "error", refused
