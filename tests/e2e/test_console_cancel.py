"""The console's Cancel button (orchestrator/console/cancel_form.py) in headless Chromium against the running
stack: an operator cancels a CONFIRMED order, lands on its cancellation saga's page and sees it end
CANCELLED_BY_CUSTOMER; a viewer has no button. Skipped without the browser, as tests/e2e/test_console.py."""

import asyncio
import urllib.parse
import uuid

import pytest
from harness import Stack, create_api_token, db, order_body, place_orders, seed
from test_console import WAIT, By, browser, ec, log_in, until  # noqa: F401  (browser: the module's fixture)

from orchestrator.cancellation import saga_key

pytestmark = pytest.mark.e2e


async def confirmed_order(stack: Stack) -> str:
    tag = uuid.uuid4().hex[:10]
    await seed(stack, {f"sku-{tag}": (5, "3.00")})
    order_id = f"ORDER#{tag}-console-cancel"
    outcomes = await place_orders(stack, [order_body(order_id, [(f"sku-{tag}", 2)])])
    assert outcomes[order_id]["status"] == "CONFIRMED"
    return order_id


def page_path(order_id: str) -> str:
    return "/console/sagas/" + urllib.parse.quote(order_id, safe="")


async def test_an_operator_cancels_a_confirmed_order_with_the_button(stack: Stack, browser) -> None:  # noqa: F811
    order_id = await confirmed_order(stack)
    tag = uuid.uuid4().hex[:8]
    viewer = await create_api_token(stack.settings, "viewer", f"console-cancel-viewer-{tag}")
    operator = await create_api_token(stack.settings, "operator", f"console-cancel-op-{tag}")

    def drive() -> None:
        log_in(browser, stack, viewer, page_path(order_id))
        assert browser.find_elements(By.ID, "cancel") == []  # a viewer has no button
        log_in(browser, stack, operator, page_path(order_id))
        browser.find_element(By.ID, "cancel-reason").send_keys("customer called")
        browser.find_element(By.ID, "cancel").click()
        until(browser, ec.alert_is_present(), "the confirmation").accept()
        until(browser, ec.url_contains(urllib.parse.quote(saga_key(order_id), safe="")), "the cancellation's page")
        until(
            browser,
            lambda d: d.find_element(By.ID, "saga-status").text == "CANCELLED_BY_CUSTOMER",
            "the cancellation to end",
            timeout=WAIT * 3,
        )
        assert "CancelRequested" in [
            li.get_attribute("data-event") for li in browser.find_elements(By.CSS_SELECTOR, "#timeline li")
        ]
        browser.get(stack.api_url + page_path(order_id))
        link = until(browser, ec.presence_of_element_located((By.ID, "cancellation-link")), "the link")
        assert link.text == "CANCELLED_BY_CUSTOMER" and browser.find_elements(By.ID, "cancel") == []

    await asyncio.to_thread(drive)
    conn = await db(stack.settings, "orders")
    try:
        assert await conn.fetchval("SELECT reason FROM order_void WHERE order_id = $1", order_id) == "customer called"
    finally:
        await conn.close()
