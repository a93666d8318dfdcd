"""The agent desktop signed in with a JWT instead of a password: opened as /#token=<jwt> (as a portal that
signed the agent in would open it), it uses Bearer for REST and ext.authentication.token for CometD."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from desktop_harness import CHROMIUM_FLAGS, Customer, RestartableBroker, require_browser, start_broker

MEDIA_TOKEN = "media-gateway-token-for-the-desktop-test"
SECRET = "a-shared-secret-of-at-least-32-bytes!"
USERS = {"agent1": ("agent1-secret", "Alice")}
TIMEOUT_MS = 10_000


def token(sub: str, ttl: int = 600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + ttl}, SECRET, algorithm="HS256")


@pytest.fixture
def broker(tmp_path: Path):
    running = start_broker(tmp_path, USERS, MEDIA_TOKEN, ("--jwt-secret", SECRET, "--jwt-leeway", "0"))
    yield running
    running.stop()


def test_desktop_with_a_token_in_the_fragment(broker: RestartableBroker):
    chromium = require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_context().new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(f"{broker.base}/#token={token('agent1')}")
            expect(page.locator("#conn-state")).to_have_attribute("data-state", "connected")
            expect(page.locator("#agent-name")).to_contain_text("Alice")
            assert "token" not in page.url  # taken out of the address bar and the history
            assert page.context.cookies() == []  # no HTTP session: every request carries the token

            page.click('button.chan-toggle[data-channel="sms"]')  # a POST, without a CSRF token
            expect(page.locator('[data-channel-state="sms"]')).to_have_attribute("data-state", "Ready")
            sms = Customer(broker, MEDIA_TOKEN).start("PersonP", "Hello")  # the offer comes over CometD
            expect(page.locator(f'#work-list li[data-id="{sms}"]')).to_have_attribute("data-state", "Invited")

            expired = browser.new_context().new_page()
            expired.goto(f"{broker.base}/#token={token('agent1', ttl=-60)}")
            expect(expired.locator("#login-view")).to_be_visible()
            expect(expired.locator("#login-error")).to_have_text("token expired")
        finally:
            browser.close()
    assert not page_errors, page_errors
