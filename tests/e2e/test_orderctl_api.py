"""orderctl through the orchestrator's API (--api-url, ORDERFLOW_API_URL, ORDERFLOW_API_TOKEN): list, status,
history and redrive with no database reachable, the same answers as the direct mode, and problems as one line
with orderctl's exit codes."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from typing import Any

import pytest
from harness import Stack, create_api_token, ctl_env, eventually, order_body, place_orders, seed

pytestmark = pytest.mark.e2e


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def through_api(stack: Stack, *args: str, token: str | None, url: str | None = None) -> subprocess.CompletedProcess:
    """orderctl with the API's URL and ``token``, and every database URL pointing where nothing listens: what
    it answers, it answered through the API."""
    down = f"postgresql://nobody@127.0.0.1:{closed_port()}/none"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env |= {f"ORDERFLOW_{s}_DATABASE_URL": down for s in ("ORCHESTRATOR", "INVENTORY", "PAYMENT", "ORDERS", "NOTIFY")}
    env["ORDERFLOW_API_URL"] = url or stack.api_url
    if token is not None:
        env["ORDERFLOW_API_TOKEN"] = token
    command = [sys.executable, "-m", "orderctl", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def direct(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "orderctl", *args]
    return subprocess.run(command, env=ctl_env(stack.settings), capture_output=True, text=True, timeout=60)


async def run(fn: Any, *args: Any, **kwargs: Any) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(scope="module")
async def orders(stack: Stack) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    sku = f"sku-{tag}"
    await seed(stack, {sku: (20, "2.50")})
    ids = {
        "confirmed": f"ORDER#{tag}-ok",
        "critical": f"ORDER#{tag}-a-critical",
        "redrive": f"ORDER#{tag}-b-critical",
    }
    outcomes = await place_orders(stack, [order_body(order_id, [(sku, 1)]) for order_id in ids.values()])
    assert [outcomes[i]["status"] for i in ids.values()] == ["CONFIRMED", "FAILED_CRITICAL", "FAILED_CRITICAL"]
    viewer = await create_api_token(stack.settings, "viewer", f"ctl-viewer-{tag}")
    operator = await create_api_token(stack.settings, "operator", f"ctl-operator-{tag}")
    return {"tag": tag, "sku": sku, **ids, "viewer": viewer, "operator": operator}


async def test_list_through_the_api_is_the_direct_listing(stack: Stack, orders: dict[str, Any]) -> None:
    args = ("list", "--search", orders["tag"], "--json")
    via_api, local = await asyncio.gather(
        run(through_api, stack, *args, token=orders["viewer"]), run(direct, stack, *args)
    )
    assert via_api.returncode == 0 and local.returncode == 0, via_api.stderr + local.stderr
    page = json.loads(via_api.stdout)
    assert page == json.loads(local.stdout)
    assert {s["orderId"] for s in page["items"]} == {orders[k] for k in ("confirmed", "critical", "redrive")}
    assert page["counts"]["FAILED_CRITICAL"] == 2 and page["counts"]["CONFIRMED"] == 1

    table = await run(
        through_api, stack, "list", "--search", orders["tag"], "--status", "FAILED_CRITICAL", token=orders["viewer"]
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ORDER", "STATUS", "STEP"]
    rows = [line for line in lines if line.startswith("ORDER#")]
    assert len(rows) == 2 and all("FAILED_CRITICAL" in row and "OrderFailedCritical" in row for row in rows)
    assert "2 of 2 shown" in table.stdout

    # One at a time: the cursor printed leads to the next page, and the last page prints none.
    seen = []
    cursor: list[str] = []
    for _ in range(3):
        page_run = await run(
            through_api, stack, "list", "--search", orders["tag"], "--limit", "1", *cursor, token=orders["viewer"]
        )
        assert page_run.returncode == 0, page_run.stderr
        seen += [line.split()[0] for line in page_run.stdout.splitlines() if line.startswith("ORDER#")]
        more = [line for line in page_run.stdout.splitlines() if line.startswith("more: add --cursor ")]
        cursor = ["--cursor", more[0].rsplit(" ", 1)[1]] if more else []
    assert not cursor and sorted(seen) == sorted(orders[k] for k in ("confirmed", "critical", "redrive"))

    by_time = await run(
        through_api, stack, "list", "--search", orders["tag"], "--created-to", "1d", "--json", token=orders["viewer"]
    )
    assert by_time.returncode == 0 and json.loads(by_time.stdout)["items"] == [], "nothing of ours is a day old"


async def test_status_and_history_through_the_api(stack: Stack, orders: dict[str, Any]) -> None:
    order_id = orders["critical"]
    via_api, local = await asyncio.gather(
        run(through_api, stack, "status", order_id, "--json", token=orders["viewer"]),
        run(direct, stack, "status", order_id, "--json"),
    )
    assert via_api.returncode == 0, via_api.stderr
    remote, here = json.loads(via_api.stdout), json.loads(local.stdout)
    assert remote["status"] == here["status"] == "FAILED_CRITICAL" and remote["error"] == here["error"]
    assert [(s["step"], s["attempt"], s["outcome"]) for s in remote["steps"]] == [
        (s["step"], s["attempt"], s["outcome"]) for s in here["steps"]
    ]
    assert remote["compensation"] == here["compensation"] and remote["amount"] == here["amount"]

    text = await run(through_api, stack, "status", order_id, token=orders["viewer"])
    assert text.returncode == 0 and "FAILED_CRITICAL" in text.stdout and "RefundPayment" in text.stdout
    history = await run(through_api, stack, "history", order_id, token=orders["viewer"])
    assert history.returncode == 0, history.stderr
    assert "ExecutionStarted" in history.stdout and "ExecutionFailed" in history.stdout

    missing = await run(through_api, stack, "status", f"ORDER#{orders['tag']}-absent", token=orders["viewer"])
    assert missing.returncode == 1 and "no saga" in missing.stderr and len(missing.stderr.splitlines()) == 1


async def test_redrive_through_the_api_is_audited(stack: Stack, orders: dict[str, Any]) -> None:
    order_id = orders["redrive"]
    refused = await run(through_api, stack, "redrive", order_id, token=orders["viewer"])
    assert refused.returncode == 2 and "operator" in refused.stderr and "ORDERFLOW_API_TOKEN" in refused.stderr

    done = await run(through_api, stack, "redrive", order_id, "--reason", "PSP fixed", token=orders["operator"])
    assert done.returncode == 0, done.stderr
    assert "redriven from RefundPayment" in done.stdout

    async def compensated() -> dict[str, Any] | None:
        shown = await run(through_api, stack, "history", order_id, "--json", token=orders["viewer"])
        view = json.loads(shown.stdout)
        return view if view["status"] == "FAILED_COMPENSATED" else None

    view = await eventually(compensated, timeout=60, what="the redriven saga to finish")
    audit = next(h for h in view["history"] if h["event"] == "RedriveRequested")
    assert (
        audit["detail"]["by"]["token"] == f"ctl-operator-{orders['tag']}" and audit["detail"]["reason"] == "PSP fixed"
    )

    again = await run(through_api, stack, "redrive", order_id, token=orders["operator"])
    assert again.returncode == 1 and "FAILED_COMPENSATED" in again.stderr and len(again.stderr.splitlines()) == 1


async def test_api_errors_are_one_line_with_exit_codes(stack: Stack, orders: dict[str, Any]) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    cases = [
        ("no token", ("list",), None, None, 2, ["ORDERFLOW_API_TOKEN"]),
        ("unknown token", ("list",), "ofl_" + "A" * 43, None, 2, ["refused the token", "ORDERFLOW_API_TOKEN"]),
        ("unreachable", ("list",), orders["viewer"], down, 3, ["ORDERFLOW_API_URL", "connection refused"]),
        ("not the API", ("list",), orders["viewer"], f"http://127.0.0.1:{stack.port('orchestrator')}", 3, ["API"]),
        ("bad limit", ("list", "--limit", "0"), orders["viewer"], None, 2, ["limit"]),
        ("bad cursor", ("list", "--cursor", "nope"), orders["viewer"], None, 2, ["cursor"]),
    ]
    results = await asyncio.gather(*(run(through_api, stack, *a, token=t, url=u) for _, a, t, u, _, _ in cases))
    failures = []
    for (what, _, _, _, code, named), done in zip(cases, results, strict=True):
        lines = done.stderr.strip().splitlines()
        if done.returncode != code or len(lines) != 1 or not all(n in lines[0] for n in named):
            failures.append(f"{what}: exit {done.returncode} (want {code}), stderr {done.stderr!r}")
    assert not failures, "\n".join(failures)
