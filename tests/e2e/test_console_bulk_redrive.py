"""The console's bulk redrive in a real headless Chromium: from the list filtered to two FAILED_CRITICAL sagas an
operator sees the count, gets the dry run's list (nothing changed), cancels once at the confirmation, then
confirms; both sagas are redriven, audited as a bulk redrive, and end FAILED_COMPENSATED. A viewer sees no
button, and a viewer's post is refused. The saga page's Cancel form stops a RUNNING saga."""

import asyncio
import json
import urllib.parse
import urllib.request
import uuid
from typing import Any

import aio_pika
import pytest
from harness import Stack, create_api_token, eventually, order_body, place_orders, publish_raw, seed, waiting_intent
from test_console import api_get, browser, log_in, saga_status, shot, until  # noqa: F401 (browser: a fixture)

pytestmark = pytest.mark.e2e

from selenium import webdriver  # noqa: E402  (test_console skipped the module already where there is no browser)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402


async def test_an_operator_redrives_what_the_list_shows_after_its_dry_run(
    stack: Stack,
    browser: webdriver.Chrome,  # noqa: F811  (test_console's fixture)
) -> None:
    tag = uuid.uuid4().hex[:10]
    sku = f"sku-{tag}"
    await seed(stack, {sku: (20, "4.00")})
    critical = [f"ORDER#{tag}-k{i}-critical" for i in range(2)]
    confirmed = f"ORDER#{tag}-c1"
    outcomes = await place_orders(stack, [order_body(order_id, [(sku, 1)]) for order_id in [*critical, confirmed]])
    assert [outcomes[i]["status"] for i in critical] == ["FAILED_CRITICAL", "FAILED_CRITICAL"]
    viewer = await create_api_token(stack.settings, "viewer", f"bulk-console-viewer-{tag}")
    operator_name = f"bulk-console-op-{tag}"
    operator = await create_api_token(stack.settings, "operator", operator_name)
    listing = "/console/?" + urllib.parse.urlencode([("q", tag)])

    def as_viewer() -> int:
        log_in(browser, stack, viewer, listing)
        until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.saga")) == 3, "the three sagas")
        assert browser.find_elements(By.ID, "bulk-dry-run") == [], "a viewer sees no bulk redrive"
        return browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/console/redrive', {method: 'POST', credentials: 'same-origin', body: new URLSearchParams("
            "{q: arguments[0], dryRun: '0'})}).then(r => done(r.status));",
            tag,
        )

    assert await asyncio.to_thread(as_viewer) == 403

    def as_operator() -> list[str]:
        log_in(browser, stack, operator, listing)
        button = until(browser, ec.presence_of_element_located((By.ID, "bulk-dry-run-button")), "the bulk button")
        assert "Redrive the 2 " in button.text, button.text  # the count before anything else
        button.click()
        until(browser, ec.presence_of_element_located((By.ID, "bulk-summary")), "the dry run")
        assert browser.find_element(By.ID, "bulk-summary").text.startswith("2 ")
        ids = [li.get_attribute("data-order-id") for li in browser.find_elements(By.CSS_SELECTOR, "#bulk-ids li")]
        assert sorted(ids) == sorted(critical)
        browser.find_element(By.ID, "bulk-reason").send_keys("PSP back")
        shot(browser, "bulk-redrive")
        browser.find_element(By.ID, "bulk-redrive").click()
        alert = until(browser, ec.alert_is_present(), "the confirmation")
        assert alert.text == "Redrive these 2 sagas from the step that failed?"
        alert.dismiss()  # cancelled: nothing is posted
        assert browser.find_elements(By.ID, "bulk-done") == []
        return ids

    await asyncio.to_thread(as_operator)
    for order_id in critical:  # the dry run and the cancelled confirmation changed nothing
        assert await saga_status(stack, order_id, viewer) == "FAILED_CRITICAL"

    def confirm() -> list[str]:
        browser.find_element(By.ID, "bulk-redrive").click()
        until(browser, ec.alert_is_present(), "the confirmation").accept()
        done = until(browser, ec.presence_of_element_located((By.ID, "bulk-done")), "the bulk redrive's result")
        assert done.text.startswith("Redriven 2 of the 2 "), done.text
        return [li.get_attribute("data-order-id") for li in browser.find_elements(By.CSS_SELECTOR, "#bulk-done-ids li")]

    assert sorted(await asyncio.to_thread(confirm)) == sorted(critical)

    async def compensated(order_id: str) -> dict[str, Any] | None:
        path = "/api/v1/sagas/" + urllib.parse.quote(order_id, safe="")
        _, saga = await asyncio.to_thread(api_get, stack, path, {"Authorization": f"Bearer {viewer}"})
        return saga if saga["status"] == "FAILED_COMPENSATED" else None

    for order_id in critical:
        saga = await eventually(lambda o=order_id: compensated(o), timeout=90, what=f"{order_id} redriven")
        (audit,) = [h for h in saga["history"] if h["event"] == "RedriveRequested"]
        assert audit["detail"]["bulk"] is True and audit["detail"]["reason"] == "PSP back"
        assert audit["detail"]["by"]["token"] == operator_name
    assert await saga_status(stack, confirmed, viewer) == "CONFIRMED"


async def test_an_operator_stops_a_running_saga_from_its_page(
    stack: Stack,
    browser: webdriver.Chrome,  # noqa: F811  (test_console's fixture)
) -> None:
    """The saga page's Cancel form on a RUNNING saga (here waiting for 3-D Secure at ProcessPayment): "Stop and
    compensate", confirmed, leaves the saga compensating and then FAILED with CancelledByOperator."""
    tag = uuid.uuid4().hex[:10]
    sku, order_id = f"sku-{tag}", f"ORDER#{tag}-console-stop"
    await seed(stack, {sku: (5, "3.00")})
    operator = await create_api_token(stack.settings, "operator", f"stop-console-op-{tag}")
    connection = await aio_pika.connect_robust(stack.settings.amqp_url)
    try:
        channel = await connection.channel()
        body = order_body(order_id, [(sku, 1)], "pm_card_authenticationRequired")
        await publish_raw(channel, json.dumps(body).encode())
        await waiting_intent(stack, order_id)
    finally:
        await connection.close()

    def stop() -> None:
        log_in(browser, stack, operator, "/console/sagas/" + urllib.parse.quote(order_id, safe=""))
        assert browser.find_element(By.ID, "saga-status").text == "RUNNING"
        browser.find_element(By.ID, "cancel-reason").send_keys("customer gave up on 3-D Secure")
        browser.find_element(By.ID, "cancel").click()
        alert = until(browser, ec.alert_is_present(), "the confirmation")
        assert alert.text == f"Stop {order_id} at ProcessPayment and compensate what may have taken effect?"
        alert.accept()
        until(
            browser,
            lambda d: d.find_element(By.ID, "saga-status").text == "FAILED",
            "the stopped saga to end",
            timeout=60,
        )
        events = [li.get_attribute("data-event") for li in browser.find_elements(By.CSS_SELECTOR, "#timeline li")]
        assert "CancelRequested" in events and "ExecutionCancelled" in events
        assert browser.find_elements(By.ID, "cancel-form") == [], "nothing left to stop"

    await asyncio.to_thread(stop)
    path = "/api/v1/sagas/" + urllib.parse.quote(order_id, safe="")
    _, saga = await asyncio.to_thread(api_get, stack, path, {"Authorization": f"Bearer {operator}"})
    assert saga["error"] == {"Error": "CancelledByOperator", "Cause": "customer gave up on 3-D Secure"}
