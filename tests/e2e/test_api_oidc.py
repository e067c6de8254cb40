"""OIDC JWTs against the running stack: the orchestrator configured with an issuer this test starts
(tests/oidc_support.py: its keys made here, its discovery document and key set served over HTTP), then the API
and the console's login used with JWTs as an operator would with their identity provider's tokens.
"""

import asyncio
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from faults_support import private_stack
from harness import Stack, eventually, order_body, place_orders, seed
from oidc_support import AUDIENCE, FakeIssuer, new_rsa
from test_saga_api import acall, saga_path

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def issuer() -> AsyncIterator[FakeIssuer]:
    with FakeIssuer().serving() as serving:
        yield serving


@pytest.fixture(scope="module")
async def oidc_stack(
    issuer: FakeIssuer, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    env = {
        "OIDC_ISSUER": issuer.url,
        "OIDC_AUDIENCE": AUDIENCE,
        "OIDC_ROLE_CLAIM": "groups",
        "OIDC_OPERATOR_VALUES": "orderflow-ops",
        "OIDC_VIEWER_VALUES": "orderflow-support,orderflow-ops-readonly",
        # The rotation below must not wait for PyJWKClient's default cooldown after the first fetch.
        "OIDC_REFRESH_COOLDOWN_SECONDS": "0",
    }
    async with private_stack(tmp_path_factory.mktemp("oidc"), {"orchestrator": env}, request=request) as stack:
        yield stack


@pytest.fixture(scope="module")
async def confirmed(oidc_stack: Stack) -> str:
    tag = uuid.uuid4().hex[:8]
    sku = f"oidc-{tag}"
    await seed(oidc_stack, {sku: (5, "10.00")})
    order_id = f"ORDER#oidc-{tag}"
    outcomes = await place_orders(oidc_stack, [order_body(order_id, [(sku, 3)])])
    assert outcomes[order_id]["status"] == "CONFIRMED", outcomes
    return order_id


def jwt_for(issuer: FakeIssuer, groups: list[str], **claims: Any) -> str:
    return issuer.token({"groups": groups, **claims})


async def test_a_viewer_jwt_reads_and_may_not_act(oidc_stack: Stack, issuer: FakeIssuer, confirmed: str) -> None:
    viewer = jwt_for(issuer, ["orderflow-support"], sub="support-1", preferred_username="sam")
    status, _, listing = await acall(oidc_stack, "/api/v1/sagas", token=viewer, query=[("q", confirmed)])
    assert status == 200, listing
    assert [s["orderId"] for s in listing["items"]] == [confirmed]
    status, _, problem = await acall(oidc_stack, saga_path(confirmed, "/redrive"), token=viewer, method="POST")
    assert status == 403 and problem["requiredRole"] == "operator", problem
    # The opaque tokens keep working beside the JWTs.
    status, _, _ = await acall(oidc_stack, saga_path(confirmed), token=oidc_stack.api_token)
    assert status == 200


async def test_an_operator_jwt_acts_and_the_audit_names_its_subject(
    oidc_stack: Stack, issuer: FakeIssuer, confirmed: str
) -> None:
    operator = jwt_for(issuer, ["staff", "orderflow-ops"], sub="0f3a-ada", email="ada@example.com")
    status, _, answer = await acall(
        oidc_stack,
        saga_path(confirmed, "/refund"),
        token=operator,
        method="POST",
        body={"amount": 5, "reason": "oidc audit"},
        headers={"Idempotency-Key": "oidc-1"},
    )
    assert status == 202, answer

    async def audited() -> dict[str, Any] | None:
        _, _, saga = await acall(oidc_stack, saga_path(confirmed), token=oidc_stack.api_token)
        asked = [h for h in saga["history"] if h["event"] == "ManualRefundRequested"]
        return asked[0] if asked else None

    entry = await eventually(audited, timeout=30, what="the manual refund's audit entry")
    by = entry["detail"]["by"]
    assert by["subject"] == "0f3a-ada" and by["token"] == "ada@example.com", by
    assert by["tokenId"] is None and by["role"] == "operator" and by["address"]


async def test_no_or_an_invalid_jwt_is_the_unknown_tokens_401(
    oidc_stack: Stack, issuer: FakeIssuer, confirmed: str
) -> None:
    path = saga_path(confirmed)
    status, headers, _ = await acall(oidc_stack, path, token=None)
    assert status == 401 and 'error="invalid_token"' not in headers["WWW-Authenticate"]
    unknown_opaque = await acall(oidc_stack, path, token="ofl_" + "A" * 43)
    assert unknown_opaque[0] == 401
    refused = [
        jwt_for(issuer, ["orderflow-ops"], exp=1_000_000),  # expired
        jwt_for(issuer, ["orderflow-ops"], aud="someone-else"),
        jwt_for(issuer, ["orderflow-ops"], iss="https://other.example"),
        issuer.token({"groups": ["orderflow-ops"]}, key=new_rsa()),  # not the issuer's key
        issuer.forged("none", {"groups": ["orderflow-ops"]}),
        issuer.forged("HS256", {"groups": ["orderflow-ops"]}),
    ]
    for token in refused:
        status, headers, body = await acall(oidc_stack, path, token=token)
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"], body
        assert body == unknown_opaque[2], "the same answer as an unknown token"
    # Valid, but no Orderflow role: known, allowed nothing.
    status, _, problem = await acall(oidc_stack, path, token=jwt_for(issuer, ["staff"], sub="intern-3"))
    assert status == 403 and "intern-3" in problem["detail"], problem


async def test_a_rotated_key_is_fetched_when_a_token_names_it(
    oidc_stack: Stack, issuer: FakeIssuer, confirmed: str
) -> None:
    assert (await acall(oidc_stack, saga_path(confirmed), token=jwt_for(issuer, ["orderflow-support"])))[0] == 200
    issuer.keys["k2"] = new_rsa()
    rotated = issuer.token({"groups": ["orderflow-support"]}, kid="k2")
    assert (await acall(oidc_stack, saga_path(confirmed), token=rotated))[0] == 200


async def test_the_console_login_takes_a_jwt(oidc_stack: Stack, issuer: FakeIssuer, confirmed: str) -> None:
    origin = oidc_stack.api_url
    jar = aiohttp.CookieJar(unsafe=True)  # 127.0.0.1: aiohttp keeps cookies for IP hosts only when told
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        viewer = jwt_for(issuer, ["orderflow-ops-readonly"], sub="s-9", preferred_username="vic")
        async with http.post(
            f"{origin}/console/login",
            data={"token": viewer, "next": "/console/"},
            headers={"Origin": origin},
            allow_redirects=False,
        ) as response:
            assert response.status == 303, await response.text()
            cookie = response.cookies["orderflow_console"]
            assert cookie["httponly"] and cookie["path"] == "/console/"
        async with http.get(f"{origin}/console/", params={"q": confirmed}, allow_redirects=False) as response:
            page = await response.text()
            assert response.status == 200, page
            assert 'data-role="viewer">vic · viewer<' in page and "oidc-" in page
        # A valid JWT without a role, and an expired one: no session.
        for token, expected in ((jwt_for(issuer, ["staff"]), 403), (jwt_for(issuer, ["orderflow-ops"], exp=1), 401)):
            async with http.post(
                f"{origin}/console/login",
                data={"token": token, "next": "/console/"},
                headers={"Origin": origin},
                allow_redirects=False,
            ) as response:
                assert response.status == expected, await response.text()
                assert "orderflow_console" not in response.cookies


async def test_the_console_login_takes_a_jwt_in_a_browser(
    oidc_stack: Stack, issuer: FakeIssuer, confirmed: str
) -> None:
    """The same in Chromium, as an operator pastes the token their identity provider's CLI printed."""
    # test_console skips itself (and so this test) where Debian's chromium and chromedriver are missing.
    console = pytest.importorskip("test_console", reason="the console's browser tests need chromium")
    operator = jwt_for(issuer, ["orderflow-ops"], sub="0f3a-ada", preferred_username="ada")

    def drive() -> None:
        options = console.webdriver.ChromeOptions()
        options.binary_location = console.CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
            options.add_argument(argument)
        service = console.webdriver.ChromeService(executable_path=console.CHROMEDRIVER)
        driver = console.webdriver.Chrome(options=options, service=service)
        try:
            console.log_in(driver, oidc_stack, operator, path=f"/console/?q={urllib.parse.quote(confirmed)}")
            who = driver.find_element(console.By.ID, "who")
            assert who.get_attribute("data-role") == "operator" and who.text.startswith("ada")
            assert confirmed in console.listed(driver)
            cookie = driver.get_cookie("orderflow_console")
            assert cookie["httpOnly"] is True and cookie["value"] == operator
        finally:
            driver.quit()

    await asyncio.to_thread(drive)
