"""The orchestrator's API against the running orchestrator: order data only with a valid bearer token, on the
API port; metrics and health without one, on the other port, which serves no order data.

Tokens are made, listed and revoked with ``orderctl token`` as an operator would.
"""

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from harness import Stack, new_id, order_body, order_url, orderctl, outcome_of, publish_raw, seed

from orchestrator.api_tokens import new_token
from orchestrator.problems import PROBLEM_JSON

pytestmark = pytest.mark.e2e


def call(url: str, *, token: str | None = None, method: str = "GET", scheme: str = "Bearer") -> tuple[int, Any, Any]:
    """Status, headers and body (JSON when it is JSON) of one request."""
    headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
    request = urllib.request.Request(url, method=method, headers=headers, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, got, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, got, raw = exc.code, exc.headers, exc.read()
    kind = got.get("Content-Type", "")
    return status, got, json.loads(raw) if "json" in kind else raw.decode()


def make_token(stack: Stack, role: str, name: str) -> str:
    made = orderctl(stack.settings, "token", "create", "--role", role, "--name", name)
    assert made.returncode == 0, made.stderr
    assert "not shown again" in made.stderr
    return made.stdout.strip()


def assert_unauthorized(answer: tuple[int, Any, Any], *, invalid: bool) -> None:
    status, headers, body = answer
    assert status == 401, body
    assert headers["WWW-Authenticate"].startswith('Bearer realm="orderflow"')
    assert ('error="invalid_token"' in headers["WWW-Authenticate"]) is invalid
    assert headers["Content-Type"].startswith(PROBLEM_JSON)
    assert body["status"] == 401 and body["title"] == "Unauthorized" and "orderId" not in body


@pytest.fixture
async def confirmed_order(stack: Stack, channel, listener) -> str:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "7.50")})
    order_id = new_id()
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 2)])).encode())
    outcome = await outcome_of(listener, order_id)
    assert outcome["status"] == "CONFIRMED", outcome
    return order_id


async def test_order_data_needs_a_valid_token(stack: Stack, confirmed_order: str) -> None:
    url = order_url(stack, confirmed_order)
    assert_unauthorized(await asyncio.to_thread(call, url), invalid=False)
    assert_unauthorized(await asyncio.to_thread(call, url, token=stack.api_token, scheme="Basic"), invalid=False)
    # Well-formed but unknown, and malformed: the same answer, so nobody learns which tokens exist.
    unknown = await asyncio.to_thread(call, url, token=new_token())
    malformed = await asyncio.to_thread(call, url, token="not-a-token")
    assert_unauthorized(unknown, invalid=True)
    assert_unauthorized(malformed, invalid=True)
    assert unknown[2] == malformed[2]

    viewer = await asyncio.to_thread(make_token, stack, "viewer", f"viewer-{new_id('')}")
    status, headers, view = await asyncio.to_thread(call, url, token=viewer)
    assert status == 200, view
    assert view["orderId"] == confirmed_order and view["status"] == "CONFIRMED"
    assert view["amount"] is not None and view["steps"][0]["step"] == "CheckInventory"

    # A known token, an unknown order: a problem, not an empty 200.
    status, headers, body = await asyncio.to_thread(call, order_url(stack, new_id()), token=viewer)
    assert status == 404 and headers["Content-Type"].startswith(PROBLEM_JSON) and body["status"] == 404


async def test_a_revoked_token_is_refused_at_once(stack: Stack, confirmed_order: str) -> None:
    name = f"revoked-{new_id('')}"
    token = await asyncio.to_thread(make_token, stack, "viewer", name)
    url = order_url(stack, confirmed_order)
    assert (await asyncio.to_thread(call, url, token=token))[0] == 200

    listed = json.loads(orderctl(stack.settings, "token", "list", "--json").stdout)
    mine = next(t for t in listed if t["name"] == name)
    assert mine["role"] == "viewer" and mine["revoked_at"] is None and mine["last_used_at"] is not None
    assert not {"token", "token_sha256"} & mine.keys(), "a listing shows no secret"
    assert token not in orderctl(stack.settings, "token", "list").stdout

    revoked = orderctl(stack.settings, "token", "revoke", name)
    assert revoked.returncode == 0 and "is revoked" in revoked.stdout, revoked.stderr
    assert_unauthorized(await asyncio.to_thread(call, url, token=token), invalid=True)
    again = orderctl(stack.settings, "token", "revoke", str(mine["id"]))
    assert again.returncode == 0 and "already" in again.stdout
    assert orderctl(stack.settings, "token", "revoke", f"no-such-{new_id('')}").returncode == 1


async def test_roles_viewer_reads_operator_acts(stack: Stack, confirmed_order: str) -> None:
    """No route changes anything yet; the method's default role still holds: a viewer that posts gets 403, an
    operator gets past authorization (to 405: there is no such route)."""
    url = order_url(stack, confirmed_order)
    viewer = await asyncio.to_thread(make_token, stack, "viewer", f"v-{new_id('')}")
    operator = await asyncio.to_thread(make_token, stack, "operator", f"op-{new_id('')}")
    status, headers, body = await asyncio.to_thread(call, url, token=viewer, method="POST")
    assert status == 403 and headers["Content-Type"].startswith(PROBLEM_JSON) and body["requiredRole"] == "operator"
    assert (await asyncio.to_thread(call, url, token=operator, method="POST"))[0] == 405
    assert (await asyncio.to_thread(call, url, token=operator))[0] == 200

    bad = orderctl(stack.settings, "token", "create", "--role", "viewer", "--name", "1234")
    assert bad.returncode == 2 and "not all digits" in bad.stderr


async def test_metrics_and_health_stay_open_on_their_own_port(stack: Stack) -> None:
    metrics = f"http://127.0.0.1:{stack.port('orchestrator')}"
    for path in ("/metrics", "/healthz", "/readyz"):
        status, _, _ = await asyncio.to_thread(call, metrics + path)
        assert status == 200, path
    # No order data on the open port, even to a valid token ...
    order = urllib.parse.quote(new_id(), safe="")
    assert (await asyncio.to_thread(call, f"{metrics}/orders/{order}", token=stack.api_token))[0] == 404
    # ... and no metrics on the API port: 401 without a token, 404 with one.
    assert_unauthorized(await asyncio.to_thread(call, f"{stack.api_url}/metrics"), invalid=False)
    status, headers, _ = await asyncio.to_thread(call, f"{stack.api_url}/metrics", token=stack.api_token)
    assert status == 404 and headers["Content-Type"].startswith(PROBLEM_JSON)
