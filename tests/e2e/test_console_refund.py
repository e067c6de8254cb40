"""The console's Refund form in headless Chromium (as tests/e2e/test_console.py drives the console): an operator
refunds part of a CONFIRMED order through the form, cancels once at the confirmation, and the refund's outcome
appears in the saga's history. The form's server side is tested over HTTP in test_manual_refund.py."""

import asyncio
import urllib.parse
import uuid

import pytest
from harness import Stack, create_api_token, order_body, place_orders, seed
from test_console import browser, log_in, saga_url, shot, until  # noqa: F401 - browser is a fixture
from test_manual_refund import money_at_stripe

pytestmark = pytest.mark.e2e

from selenium import webdriver  # noqa: E402  (test_console skipped this module already without a browser)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402


@pytest.fixture(scope="module")
async def confirmed(stack: Stack) -> tuple[str, str]:
    """A CONFIRMED order of 8.00 USD and an operator's token."""
    tag = uuid.uuid4().hex[:10]
    await seed(stack, {f"sku-{tag}": (10, "4.00")})
    order_id = f"ORDER#{tag}-console-refund"
    outcomes = await place_orders(stack, [order_body(order_id, [(f"sku-{tag}", 2)])], 60)
    assert outcomes[order_id]["status"] == "CONFIRMED"
    return order_id, await create_api_token(stack.settings, "operator", f"console-refund-{tag}")


def events(driver: webdriver.Chrome) -> list[str]:
    return [li.get_attribute("data-event") for li in driver.find_elements(By.CSS_SELECTOR, "#timeline li")]


async def test_an_operator_refunds_part_of_an_order_through_the_form(
    stack: Stack,
    confirmed: tuple[str, str],
    browser: webdriver.Chrome,  # noqa: F811 - the imported fixture
) -> None:
    order_id, operator = confirmed

    def drive() -> None:
        log_in(browser, stack, operator, "/console/sagas/" + urllib.parse.quote(order_id, safe=""))
        assert "8.00 USD may be refunded" in browser.page_source
        browser.find_element(By.ID, "refund-amount").send_keys("3.25")
        browser.find_element(By.ID, "refund-reason").send_keys("one item arrived broken")
        shot(browser, "refund")
        browser.find_element(By.ID, "refund").click()
        alert = until(browser, ec.alert_is_present(), "the confirmation")
        assert alert.text == f"Refund 3.25 USD of {order_id} to the customer?"
        alert.dismiss()  # cancelled: nothing is posted
        assert browser.find_elements(By.ID, "notice") == [] and "notice" not in browser.current_url
        browser.find_element(By.ID, "refund").click()
        until(browser, ec.alert_is_present(), "the confirmation").accept()
        until(browser, ec.presence_of_element_located((By.ID, "notice")), "the refund's notice")

        def settled(driver: webdriver.Chrome) -> bool:
            driver.get(saga_url(stack, order_id))
            return "ManualRefundSucceeded" in events(driver)

        until(browser, settled, "the refund's outcome in the history", timeout=30)
        assert "ManualRefundRequested" in events(browser)
        assert browser.find_element(By.ID, "saga-status").text == "CONFIRMED"
        assert "4.75 USD may be refunded" in browser.page_source

    await asyncio.to_thread(drive)
    assert await money_at_stripe(stack, order_id) == ([325], 325)
