"""End to end: the agent desktop page in headless Chromium, two agents and a simulated SMS customer,
through a broker crash (SIGKILL) and restart in the middle of the conversation.

What it proves, as a user would see it: the offer arrives and is accepted; messages and typing go both
ways; a consultant joins; while the broker is down the page says so, and once it is back the page
resumes by itself (logs in again, goes Ready again, replays what it missed) with every message shown
exactly once and in order; the interaction is transferred, dispositioned and completed, and both agents'
interaction lists say so. Screenshots go to an artifacts folder whose path the test prints.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from desktop_harness import (
    CHROMIUM_FLAGS,
    Customer,
    RestartableBroker,
    require_browser,
    screenshot_folder,
    start_broker,
)

MEDIA_TOKEN = "media-gateway-token-for-the-desktop-test"
USERS = {"agent1": ("agent1-secret", "Alice"), "agent2": ("agent2-secret", "Bob")}
TIMEOUT_MS = 20_000  # a restart includes the CometD client's back-off; everything else takes < 2 s


@pytest.fixture
def artifacts() -> Path:
    return screenshot_folder(os.environ.get("DESKTOP_ARTIFACTS"), "agent-desktop-artifacts-")


@pytest.fixture
def broker(tmp_path: Path):
    running = start_broker(tmp_path, USERS, MEDIA_TOKEN)
    yield running
    running.stop()


def test_sms_conversation_with_two_agents_survives_a_broker_crash(broker: RestartableBroker, artifacts: Path):
    chromium = require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    customer = Customer(broker, MEDIA_TOKEN)
    page_errors: list[str] = []

    def shoot(page, name: str) -> None:
        page.screenshot(path=str(artifacts / f"{name}.png"))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            pages = {}
            for user in USERS:
                page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                page.on("pageerror", lambda error, user=user: page_errors.append(f"{user}: {error}"))
                pages[user] = page
            alice, bob = pages["agent1"], pages["agent2"]

            # --- log in, go Ready for SMS (agent1 first: the longest-idle agent gets the offer) -------------
            for user, page in pages.items():
                page.goto(broker.base + "/")
                page.fill("#login-user", user)
                page.fill("#login-password", USERS[user][0])
                page.click("#login-submit")
                expect(page.locator("#conn-state")).to_have_attribute("data-state", "connected")
                expect(page.locator("#agent-name")).to_contain_text(USERS[user][1])
            for page in (alice, bob):
                page.click('button.chan-toggle[data-channel="sms"]')
                expect(page.locator('[data-channel-state="sms"]')).to_have_attribute("data-state", "Ready")
                expect(page.locator("#agent-state")).to_have_text("Ready")

            # --- the customer's SMS is offered to agent1, who accepts --------------------------------------
            sms = customer.start("PersonP", "Hello, my parcel is late")
            item = alice.locator(f'#work-list li[data-id="{sms}"]')
            expect(item).to_have_attribute("data-state", "Invited")
            expect(alice.locator("#conv-state")).to_have_text("Offered")
            expect(alice.locator('#actions button[data-op="Accept"]')).to_be_enabled()
            expect(alice.locator('#actions button[data-op="Complete"]')).to_be_disabled()
            expect(bob.locator(f'#work-list li[data-id="{sms}"]')).to_have_count(0)
            shoot(alice, "01-offered")
            alice.click('#actions button[data-op="Accept"]')
            expect(item).to_have_attribute("data-state", "Chatting")
            expect(alice.locator("#transcript .msg.customer .text")).to_have_text(["Hello, my parcel is late"])
            expect(alice.locator('#actions button[data-op="Complete"]')).to_be_enabled()
            expect(alice.locator('#actions button[data-op="Accept"]')).to_be_disabled()

            # --- typing and messages both ways -------------------------------------------------------------
            customer.typing(True)
            expect(alice.locator("#typing")).to_have_text("PersonP is typing…")
            customer.say("Order 1234, it was due Monday")
            expect(alice.locator("#typing")).to_have_text("")
            alice.locator("#composer-text").press_sequentially("Let me check that for you")
            customer.wait_for(lambda t: any(m["type"] == "TypingStarted" and m["from"]["nickname"] == "Alice"
                                            for m in t), "agent1's typing notification")
            alice.locator("#composer-text").press("Enter")
            customer.wait_for(lambda t: any(m.get("text") == "Let me check that for you" for m in t),
                              "agent1's reply")
            expect(alice.locator("#composer-text")).to_have_value("")

            # --- agent1 consults agent2, who joins and writes to the agents only ---------------------------
            alice.fill("#target", "agent2")
            alice.click('#actions button[data-op="Consult"]')
            offered = bob.locator(f'#work-list li[data-id="{sms}"]')
            expect(offered).to_have_attribute("data-state", "Invited")
            bob.click('#actions button[data-op="Accept"]')
            expect(offered).to_have_attribute("data-state", "Chatting")
            # The consultant gets the whole conversation so far on joining.
            expect(bob.locator("#transcript .msg.customer .text")).to_have_text(
                ["Hello, my parcel is late", "Order 1234, it was due Monday"])
            expect(bob.locator("#agents-only")).to_be_checked()  # a consultant cannot write to the customer
            bob.fill("#composer-text", "Carrier shows it at the depot")
            bob.click("#send")
            expect(alice.locator("#transcript .msg.internal .text")).to_have_text(["Carrier shows it at the depot"])
            shoot(alice, "02-conversation")

            # --- the broker crashes mid-conversation and comes back with the same files --------------------
            broker.kill()
            for page in (alice, bob):
                expect(page.locator("#conn-state")).to_have_attribute("data-state", "reconnecting")
            shoot(alice, "03-reconnecting")
            broker.start()
            # The customer writes at once, before the desktops are back: the event log keeps it for them.
            customer.say("Are you still there?")
            for page in (alice, bob):
                expect(page.locator("#conn-state")).to_have_attribute("data-state", "resumed")
                expect(page.locator("#conn-state")).to_have_text("Connected · resumed")
                # The desktop logged in again and restored the agent's readiness by itself.
                expect(page.locator('[data-channel-state="sms"]')).to_have_attribute("data-state", "Ready")
            expect(alice.locator("#transcript .msg.customer .text").last).to_have_text("Are you still there?")
            expect(bob.locator("#transcript .msg.customer .text").last).to_have_text("Are you still there?")
            alice.fill("#composer-text", "Yes, sorry for the wait: it leaves the depot today")
            alice.click("#send")
            customer.wait_for(lambda t: any(m.get("text", "").startswith("Yes, sorry") for m in t), "the reply after")
            shoot(alice, "04-resumed")

            # --- a reload resumes from the tab's saved state and event ids, still exactly once ---------------
            bob.reload()
            expect(bob.locator("#conn-state")).to_have_attribute("data-state", "connected")
            customer.say("Thanks!")
            bob.click(f'#work-list li[data-id="{sms}"]')
            expect(bob.locator("#transcript .msg.customer .text")).to_have_text(
                ["Hello, my parcel is late", "Order 1234, it was due Monday", "Are you still there?", "Thanks!"])
            assert bob.evaluate("window.desktop.connection.stats.handshakes") == 1  # a new page, a new client

            # --- transfer to the consultant, who sets a disposition and completes --------------------------
            alice.fill("#target", "agent2")
            alice.click('#actions button[data-op="Transfer"]')
            expect(alice.locator(f'#interactions li[data-id="{sms}"]')).to_have_attribute("data-state", "Completed")
            expect(alice.locator(f'#work-list li[data-id="{sms}"]')).to_have_count(0)
            expect(bob.locator('#actions button[data-op="SetDisposition"]')).to_be_enabled()
            expect(bob.locator("#agents-only")).not_to_be_checked()  # the owner now: may write to the customer
            bob.fill("#composer-text", "Hi PersonP, Bob here: it is on its way today")
            bob.click("#send")
            customer.wait_for(lambda t: any(m.get("text", "").startswith("Hi PersonP, Bob") for m in t),
                              "agent2's message")
            bob.select_option("#disposition", "Resolved")
            bob.click('#actions button[data-op="SetDisposition"]')
            expect(bob.locator("#conv-meta")).to_contain_text("disposition Resolved")
            shoot(bob, "05-disposition")
            bob.click('#actions button[data-op="Complete"]')
            bob_row = bob.locator(f'#interactions li[data-id="{sms}"]')
            expect(bob_row).to_have_attribute("data-state", "Completed")
            expect(bob_row.locator(".disposition")).to_have_text("Resolved")
            expect(bob.locator("#work-count")).to_have_text("0")
            shoot(bob, "06-completed")

            # --- every message exactly once, in order, on both desktops and for the customer ---------------
            customer_sees = [m["text"] for m in customer.transcript() if m["type"] == "Text"]
            assert customer_sees == [
                "Hello, my parcel is late", "Order 1234, it was due Monday", "Let me check that for you",
                "Are you still there?", "Yes, sorry for the wait: it leaves the depot today", "Thanks!",
                "Hi PersonP, Bob here: it is on its way today"]
            agents_see = [*customer_sees[:3], "Carrier shows it at the depot", *customer_sees[3:]]
            bob.click(f'#interactions li[data-id="{sms}"]')
            expect(bob.locator("#transcript .msg:not(.system) .text")).to_have_text(agents_see)
            alice.click(f'#interactions li[data-id="{sms}"]')
            expect(alice.locator("#transcript .msg:not(.system) .text")).to_have_text(agents_see[:-1])
            for page in (alice, bob):
                indexes = [int(i) for i in page.locator("#transcript .msg").evaluate_all(
                    "items => items.map(item => item.dataset.index)")]
                assert indexes == sorted(set(indexes)), indexes
                assert page.evaluate("window.desktop.connection.stats.gaps") == 0
            assert alice.evaluate("window.desktop.connection.stats.handshakes") == 2  # re-handshook after the crash
        finally:
            browser.close()
    assert not page_errors, page_errors
    assert "Traceback" not in broker.logs(), broker.logs()
