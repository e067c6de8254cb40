"""The web console (/console/) in a real headless Chromium against the running orchestrator with real sagas:
CONFIRMED, FAILED_COMPENSATED and FAILED_CRITICAL ones made by the session stack's injected faults.

The browser is Debian's chromium driven through its chromedriver (scripts/ensure-browser installs both); Selenium
is pointed at them, so it downloads nothing. Without them the module skips and says how to install them.
With ORDERFLOW_CONSOLE_SCREENSHOTS=docs/console the tests write the screenshots docs/console.md shows.
"""

import asyncio
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import Stack, create_api_token, order_body, place_orders, seed

pytestmark = pytest.mark.e2e

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: Deadline of each wait on the page (the redriven saga's wait is longer: it runs a compensation).
WAIT = 20
#: The refund step that fails for the critical saga: the first branch of the order record's compensation.
REFUND_PATH = "RefundPaymentAndRelease/0/RefundPayment"
SHOTS = os.environ.get("ORDERFLOW_CONSOLE_SCREENSHOTS")

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        "the console's browser tests need Debian's chromium and chromedriver: scripts/ensure-browser as root "
        "(apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (only where the browser is)
from selenium.common.exceptions import NoSuchElementException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@dataclass
class Sagas:
    tag: str
    confirmed: str
    compensated: str
    critical: str
    viewer: str
    operator: str
    operator_name: str


@pytest.fixture(scope="module")
async def sagas(stack: Stack) -> Sagas:
    tag = uuid.uuid4().hex[:10]
    sku = f"sku-{tag}"
    await seed(stack, {sku: (50, "4.00")})
    found = Sagas(
        tag,
        f"ORDER#{tag}-c1",
        f"ORDER#{tag}-r1-record",
        f"ORDER#{tag}-k1-critical",
        "",
        "",
        f"console-op-{tag}",
    )
    every = [found.confirmed, found.compensated, found.critical]
    outcomes = await place_orders(stack, [order_body(order_id, [(sku, 1)]) for order_id in every])
    assert [outcomes[i]["status"] for i in every] == ["CONFIRMED", "FAILED_COMPENSATED", "FAILED_CRITICAL"]
    found.viewer = await create_api_token(stack.settings, "viewer", f"console-viewer-{tag}")
    found.operator = await create_api_token(stack.settings, "operator", found.operator_name)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: webdriver.Chrome, condition: Callable[[Any], Any], what: str, timeout: float = WAIT) -> Any:
    return WebDriverWait(driver, timeout).until(condition, message=f"waiting for {what}")


def shot(driver: webdriver.Chrome, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))


def log_in(driver: webdriver.Chrome, stack: Stack, token: str, path: str = "/console/") -> None:
    driver.delete_all_cookies()
    driver.get(stack.api_url + path)
    until(driver, ec.url_contains("/console/login"), "the login page")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    until(driver, ec.presence_of_element_located((By.ID, "who")), "the signed-in page")


def saga_url(stack: Stack, order_id: str) -> str:
    return f"{stack.api_url}/console/sagas/{urllib.parse.quote(order_id, safe='')}"


def listed(driver: webdriver.Chrome) -> set[str]:
    return {row.get_attribute("data-order-id") for row in driver.find_elements(By.CSS_SELECTOR, "tr.saga")}


async def test_login_with_a_viewer_token(stack: Stack, sagas: Sagas, browser: webdriver.Chrome) -> None:
    def drive() -> None:
        browser.delete_all_cookies()
        browser.get(stack.api_url + "/console/")
        until(browser, ec.url_contains("/console/login?next=/console/"), "the redirect to the login page")
        shot(browser, "login")
        browser.find_element(By.ID, "token").send_keys("ofl_" + "x" * 43)
        browser.find_element(By.ID, "login").click()
        error = until(browser, ec.presence_of_element_located((By.ID, "login-error")), "the refusal")
        assert "not valid" in error.text and browser.get_cookie("orderflow_console") is None

        log_in(browser, stack, sagas.viewer)
        assert browser.find_element(By.ID, "who").get_attribute("data-role") == "viewer"
        cookie = browser.get_cookie("orderflow_console")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/console/"

    await asyncio.to_thread(drive)


async def test_the_list_filters_by_status_in_a_link_to_share(
    stack: Stack, sagas: Sagas, browser: webdriver.Chrome
) -> None:
    def drive() -> None:
        log_in(browser, stack, sagas.viewer, f"/console/?q={sagas.tag}")
        assert listed(browser) == {sagas.confirmed, sagas.compensated, sagas.critical}
        counts = {a.get_attribute("data-status"): a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.count")}
        assert counts["CONFIRMED"].endswith(" 1") and counts["FAILED_COMPENSATED"].endswith(" 1")

        browser.find_element(By.CSS_SELECTOR, 'input[name="status"][value="FAILED_COMPENSATED"]').click()
        browser.find_element(By.ID, "apply").click()
        until(browser, ec.url_contains("status=FAILED_COMPENSATED"), "the filtered page")
        until(browser, lambda d: listed(d) == {sagas.compensated}, "only the FAILED_COMPENSATED saga")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query)
        assert query == {"status": ["FAILED_COMPENSATED"], "q": [sagas.tag]}, "empty fields stay out of the link"
        shot(browser, "list")

        shared = browser.current_url  # the link someone else opens
        browser.get(shared.replace("FAILED_COMPENSATED", "CONFIRMED"))
        until(browser, lambda d: listed(d) == {sagas.confirmed}, "only the CONFIRMED saga")
        browser.find_element(By.CSS_SELECTOR, "tr.saga a").click()
        until(browser, ec.presence_of_element_located((By.CSS_SELECTOR, "svg.workflow")), "the saga's page")
        assert browser.current_url == saga_url(stack, sagas.confirmed)

    await asyncio.to_thread(drive)


async def test_the_graph_marks_the_failed_step_of_a_compensated_saga(
    stack: Stack, sagas: Sagas, browser: webdriver.Chrome
) -> None:
    def node(path: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, f'svg.workflow g.node[data-path="{path}"]')

    def drive() -> None:
        log_in(browser, stack, sagas.viewer)
        browser.get(saga_url(stack, sagas.compensated))
        until(browser, ec.presence_of_element_located((By.CSS_SELECTOR, "svg.workflow")), "the graph")
        failed = node("CreateOrderRecord")
        assert "failed" in failed.get_attribute("class").split() and failed.get_attribute("data-status") == "failed"
        # The rest of the path it took, the compensation branches side by side, and what it never reached.
        refund, release = "RefundPaymentAndRelease/0/RefundPayment", "RefundPaymentAndRelease/1/ReleaseInventory"
        for state in ("CheckInventory", "ReserveInventory", "ProcessPayment", refund, release):
            assert "visited" in node(state).get_attribute("class").split(), state
            assert "failed" not in node(state).get_attribute("class").split(), state
        assert node(refund).rect["y"] == node(release).rect["y"], "branches side by side"
        assert node(refund).rect["x"] != node(release).rect["x"], "branches side by side"
        # The other compensation Parallel holds steps of the same names; this saga never ran it.
        for other in ("PaymentOutcomeUnknown/0/RefundPayment", "PaymentOutcomeUnknown/1/ReleaseInventory"):
            assert "visited" not in node(other).get_attribute("class").split(), other
        assert "visited" not in node("CommitReservation").get_attribute("class").split()
        red = browser.execute_script("return getComputedStyle(arguments[0].querySelector('rect')).stroke", failed)
        assert red == "rgb(179, 38, 30)"
        events = [li.get_attribute("data-event") for li in browser.find_elements(By.CSS_SELECTOR, "#timeline li")]
        assert events[0] == "ExecutionStarted" and events[-1] == "ExecutionFailed" and "TaskFailed" in events
        assert "OrderRecordError" in browser.find_element(By.ID, "timeline").text
        shot(browser, "saga")

    await asyncio.to_thread(drive)


async def test_a_viewer_sees_no_redrive_button_and_cannot_post_one(
    stack: Stack, sagas: Sagas, browser: webdriver.Chrome
) -> None:
    def drive() -> None:
        log_in(browser, stack, sagas.viewer)
        browser.get(saga_url(stack, sagas.critical))
        status = until(browser, ec.presence_of_element_located((By.ID, "saga-status")), "the saga's page")
        assert status.text == "FAILED_CRITICAL"
        with pytest.raises(NoSuchElementException):
            browser.find_element(By.ID, "redrive")
        # Posting anyway, from the console's own origin with the viewer's session: the role refuses it.
        answer = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {method: 'POST', credentials: 'same-origin'}).then(r => done(r.status));",
            saga_url(stack, sagas.critical) + "/redrive",
        )
        assert answer == 403

    await asyncio.to_thread(drive)
    assert await saga_status(stack, sagas.critical, sagas.viewer) == "FAILED_CRITICAL"


def api_get(stack: Stack, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(urllib.request.Request(stack.api_url + path, headers=headers), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


async def saga_status(stack: Stack, order_id: str, token: str) -> str:
    path = "/api/v1/sagas/" + urllib.parse.quote(order_id, safe="")
    status, saga = await asyncio.to_thread(api_get, stack, path, {"Authorization": f"Bearer {token}"})
    assert status == 200
    return saga["status"]


async def test_the_session_cookie_counts_only_in_the_console_and_posts_need_its_origin(
    stack: Stack, sagas: Sagas
) -> None:
    cookie = {"Cookie": f"orderflow_console={sagas.operator}"}
    status, _ = await asyncio.to_thread(api_get, stack, "/api/v1/sagas", cookie)
    assert status == 401, "the JSON API takes no cookie"

    def post(headers: dict[str, str]) -> int:
        url = saga_url(stack, sagas.critical) + "/redrive"
        request = urllib.request.Request(url, method="POST", headers=cookie | headers, data=b"reason=x")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert await asyncio.to_thread(post, {}) == 403
    assert await asyncio.to_thread(post, {"Origin": "https://evil.example"}) == 403
    assert await saga_status(stack, sagas.critical, sagas.viewer) == "FAILED_CRITICAL"


async def test_an_operator_redrives_through_the_button_and_the_saga_finishes(
    stack: Stack, sagas: Sagas, browser: webdriver.Chrome
) -> None:
    def drive() -> None:
        log_in(browser, stack, sagas.operator, "/console/sagas/" + urllib.parse.quote(sagas.critical, safe=""))
        assert browser.find_element(By.ID, "saga-status").text == "FAILED_CRITICAL"
        refund = browser.find_element(By.CSS_SELECTOR, f'g.node[data-path="{REFUND_PATH}"]')
        assert refund.get_attribute("data-runs") == "4" and "failed" in refund.get_attribute("class").split()
        browser.find_element(By.ID, "redrive-reason").send_keys("refunds work again")
        shot(browser, "redrive")
        browser.find_element(By.ID, "redrive").click()
        until(browser, ec.alert_is_present(), "the confirmation").dismiss()  # cancelled: nothing is posted
        assert browser.find_elements(By.ID, "notice") == [] and "notice" not in browser.current_url
        browser.find_element(By.ID, "redrive").click()
        until(browser, ec.alert_is_present(), "the confirmation").accept()
        until(browser, ec.presence_of_element_located((By.ID, "notice")), "the redrive's notice")
        # The page refreshes itself while the saga runs; the redriven refund succeeds and it ends compensated.
        until(
            browser,
            lambda d: d.find_element(By.ID, "saga-status").text == "FAILED_COMPENSATED",
            "the redriven saga to finish",
            timeout=90,
        )
        refund = browser.find_element(By.CSS_SELECTOR, f'g.node[data-path="{REFUND_PATH}"]')
        assert refund.get_attribute("data-runs") == "5" and "failed" not in refund.get_attribute("class").split()
        assert "RedriveRequested" in [
            li.get_attribute("data-event") for li in browser.find_elements(By.CSS_SELECTOR, "#timeline li")
        ]

    await asyncio.to_thread(drive)
    path = "/api/v1/sagas/" + urllib.parse.quote(sagas.critical, safe="")
    _, saga = await asyncio.to_thread(api_get, stack, path, {"Authorization": f"Bearer {sagas.viewer}"})
    audit = next(h for h in saga["history"] if h["event"] == "RedriveRequested")
    assert audit["detail"]["reason"] == "refunds work again" and audit["detail"]["by"]["token"] == sagas.operator_name
