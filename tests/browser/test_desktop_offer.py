"""The agent desktop as an agent judges it (issue 16 §4), in headless Chromium at 1280x800.

An offer shows a countdown to its timeout and the customer's first message before Accept, beeps, sends a
browser notification and flashes the tab title until it is answered; channel states read as words, never
as reason codes; an action while the broker is down says the server was unreachable and the action was
not done. The screenshots it takes are the README's: `DESKTOP_DOCS_SCREENSHOTS=docs` writes them there
(`docs/desktop-offer.png`, `docs/desktop-conversation.png`, `docs/desktop-broker-down.png`); otherwise
they go to a temporary folder whose path the test prints.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from desktop_harness import (
    CHROMIUM_FLAGS,
    REPO,
    Customer,
    RestartableBroker,
    require_browser,
    screenshot_folder,
    start_broker,
)

MEDIA_TOKEN = "media-gateway-token-for-the-offer-test"
USERS = {"agent1": ("agent1-secret", "Alice")}
TIMEOUT_MS = 15_000

# Records every Notification the page constructs (and still lets the real one be made).
RECORD_NOTIFICATIONS = """
(() => {
  const Real = window.Notification;
  window.__notifications = [];
  if (!Real) return;
  class Recording extends Real {
    constructor(title, options) {
      window.__notifications.push({title, body: options && options.body});
      super(title, options);
    }
  }
  Object.defineProperty(Recording, "permission", {get: () => Real.permission});
  Recording.requestPermission = (...args) => Real.requestPermission(...args);
  window.Notification = Recording;
})();
"""


@pytest.fixture
def shots() -> Path:
    configured = os.environ.get("DESKTOP_DOCS_SCREENSHOTS")
    return screenshot_folder(str(REPO / configured) if configured else None, "agent-desktop-offer-")


@pytest.fixture
def broker(tmp_path: Path):
    running = start_broker(tmp_path, USERS, MEDIA_TOKEN)
    yield running
    running.stop()


def test_offer_alerts_readable_states_and_an_unreachable_broker(broker: RestartableBroker, shots: Path):
    chromium = require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    sms = Customer(broker, MEDIA_TOKEN, "sms")
    chat = Customer(broker, MEDIA_TOKEN, "chat")
    page_errors: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800}, permissions=["notifications"])
            context.add_init_script(RECORD_NOTIFICATIONS)
            page = context.new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(broker.base + "/")
            expect(page).to_have_title("Agent desktop")
            page.fill("#login-user", "agent1")
            page.fill("#login-password", USERS["agent1"][0])
            page.click("#login-submit")
            expect(page.locator("#conn-state")).to_have_attribute("data-state", "connected")

            # --- channel states in words: the session starts NotReady with reason LoggedIn, never shown -----
            sms_state = page.locator('[data-channel-state="sms"]')
            expect(sms_state).to_have_text("Not ready")
            expect(page.locator("#agent-state")).to_have_text("Not ready")
            # each channel's capacity, as GET /api/v2/me?subresources=* gives it (--capacity, default 1)
            expect(page.locator('[data-channel-capacity="sms"]')).to_have_text("up to 1 at a time")
            page.click('button.chan-toggle[data-channel="sms"]')
            expect(sms_state).to_have_text("Ready")
            page.click('button.chan-toggle[data-channel="sms"]')
            expect(sms_state).to_have_text("Not ready — Break")
            page.click('button.chan-toggle[data-channel="sms"]')
            expect(sms_state).to_have_text("Ready")
            page.click('button.chan-toggle[data-channel="chat"]')
            expect(page.locator('[data-channel-state="chat"]')).to_have_text("Ready")
            assert "LoggedIn" not in page.locator("#channels").inner_text()

            # --- an offer: countdown, the first message before Accept, title, notification, beep -------------
            first = "Hello, my parcel is late. Order 1234, it was due Monday"
            offered = sms.start("PersonP", first)
            expect(page.locator(f'#work-list li[data-id="{offered}"]')).to_have_attribute("data-state", "Invited")
            panel = page.locator("#offer-panel")
            expect(panel).to_be_visible()
            expect(page.locator("#offer-heading")).to_have_text("New SMS from PersonP")
            countdown = page.locator("#offer-countdown")
            expect(countdown).to_have_text(re.compile(r"^Expires in [12]:\d\d$"))  # --offer-timeout 120
            before = countdown.inner_text()
            expect(countdown).not_to_have_text(before)  # it ticks
            expect(page.locator(f'#work-list li[data-id="{offered}"] .state')).to_have_text(
                re.compile(r"^Offered · [12]:\d\d$"))
            expect(page.locator("#offer-preview-text")).to_have_text(first)
            expect(page.locator("#offer-preview-from")).to_have_text("PersonP")
            expect(page.locator("#transcript .msg")).to_have_count(0)  # the conversation itself: after Accept
            expect(page).to_have_title(re.compile(r"^● New SMS — Agent desktop$"))
            page.wait_for_function("window.__notifications.length === 1")
            notes = page.evaluate("window.__notifications")
            assert notes == [{"title": "New SMS from PersonP", "body": first}], notes
            assert page.evaluate("window.desktop.alerts.beeps") == 1
            page.screenshot(path=str(shots / "desktop-offer.png"))

            # --- accepted: the title is plain again, the offer panel gone, the conversation shown ------------
            page.click('#actions button[data-op="Accept"]')
            expect(page.locator(f'#work-list li[data-id="{offered}"]')).to_have_attribute("data-state", "Chatting")
            expect(panel).to_be_hidden()
            expect(page).to_have_title("Agent desktop")
            page.wait_for_timeout(1200)  # a flash would have turned the title again by now
            assert page.title() == "Agent desktop"
            expect(page.locator("#transcript .msg.customer .text")).to_have_text([first])
            page.fill("#composer-text", "Sorry about that, PersonP: let me check order 1234")
            page.click("#send")
            sms.wait_for(lambda t: any(m.get("text", "").startswith("Sorry about that") for m in t), "the reply")
            sms.say("Thank you!")
            expect(page.locator("#transcript .msg.customer .text").last).to_have_text("Thank you!")
            page.screenshot(path=str(shots / "desktop-conversation.png"))

            # --- the broker goes down while a chat is offered: Accept says it was not done --------------------
            chatted = chat.start("Jordan", "Can I change my delivery address?")
            page.click(f'#work-list li[data-id="{chatted}"]')
            expect(page.locator("#offer-preview-text")).to_have_text("Can I change my delivery address?")
            broker.stop()
            expect(page.locator("#conn-state")).to_have_attribute("data-state", "reconnecting")
            page.click('#actions button[data-op="Accept"]')
            message = ("Could not reach the server — Accept was not done. "
                       "Check your connection and try again.")
            expect(page.locator("#banner")).to_have_text(message)
            expect(page.locator("#banner")).to_be_visible()
            assert "Failed to fetch" not in page.locator("#desktop-view").inner_text()
            page.screenshot(path=str(shots / "desktop-broker-down.png"))
            page.click('button.chan-toggle[data-channel="sms"]')
            expect(page.locator("#banner")).to_have_text(
                "Could not reach the server — Go Not Ready was not done. Check your connection and try again.")
        finally:
            browser.close()
    assert not page_errors, page_errors
