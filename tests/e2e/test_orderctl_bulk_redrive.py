"""``orderctl redrive`` by filter through the orchestrator's API (POST /api/v1/sagas/redrive): a dry run lists
what it would restart and changes nothing; without it the matching FAILED_CRITICAL sagas are redriven, at most
--limit, each audited as a bulk redrive; misuse is a one-line usage error."""

import asyncio
import json
import subprocess
import uuid
from typing import Any

import pytest
from harness import Stack, create_api_token, eventually, order_body, place_orders, seed
from test_orderctl_api import through_api

pytestmark = pytest.mark.e2e


async def run(stack: Stack, *args: str, token: str | None) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(through_api, stack, *args, token=token)


async def saga_of(stack: Stack, order_id: str, token: str) -> dict[str, Any]:
    shown = await run(stack, "history", order_id, "--json", token=token)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


async def test_bulk_redrive_dry_run_then_for_real(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:10]
    sku = f"sku-{tag}"
    await seed(stack, {sku: (20, "3.00")})
    critical = [f"ORDER#{tag}-{i}-critical" for i in range(2)]
    confirmed = f"ORDER#{tag}-ok"
    outcomes = await place_orders(stack, [order_body(order_id, [(sku, 1)]) for order_id in [*critical, confirmed]])
    assert [outcomes[i]["status"] for i in critical] == ["FAILED_CRITICAL", "FAILED_CRITICAL"]
    viewer = await create_api_token(stack.settings, "viewer", f"bulk-viewer-{tag}")
    operator = await create_api_token(stack.settings, "operator", f"bulk-operator-{tag}")
    filters = ("--search", tag, "--error", "RefundFailed")

    refused = await run(stack, "redrive", *filters, "--dry-run", token=viewer)
    assert refused.returncode == 2 and "operator" in refused.stderr, refused.stderr

    dry = await run(stack, "redrive", *filters, "--dry-run", token=operator)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("ORDER#")) == sorted(critical)
    assert any(line.startswith("would redrive: 2 of 2 redrivable") for line in lines), dry.stdout
    as_json = await run(stack, "redrive", *filters, "--dry-run", "--json", token=operator)
    answer = json.loads(as_json.stdout)
    assert answer["dryRun"] is True and answer["matched"] == 2 and answer["failed"] == []
    for order_id in critical:  # a dry run changes nothing
        saga = await saga_of(stack, order_id, viewer)
        assert saga["status"] == "FAILED_CRITICAL"
        assert not [h for h in saga["history"] if h["event"] == "RedriveRequested"]

    first = await run(stack, "redrive", *filters, "--limit", "1", "--reason", "PSP back", token=operator)
    assert first.returncode == 0, first.stderr
    assert "redriven: 1 of 2 redrivable" in first.stdout and "more: 1 left over --limit 1" in first.stdout
    (newest,) = [line for line in first.stdout.splitlines() if line.startswith("ORDER#")]
    rest = await run(stack, "redrive", *filters, "--reason", "PSP back", token=operator)
    assert rest.returncode == 0, rest.stderr
    assert [line for line in rest.stdout.splitlines() if line.startswith("ORDER#")] == sorted(set(critical) - {newest})

    async def compensated(order_id: str) -> dict[str, Any] | None:
        saga = await saga_of(stack, order_id, viewer)
        return saga if saga["status"] == "FAILED_COMPENSATED" else None

    for order_id in critical:
        saga = await eventually(lambda o=order_id: compensated(o), timeout=60, what=f"{order_id} redriven")
        (audit,) = [h for h in saga["history"] if h["event"] == "RedriveRequested"]
        assert audit["detail"]["bulk"] is True and audit["detail"]["reason"] == "PSP back"
        assert audit["detail"]["by"]["token"] == f"bulk-operator-{tag}"

    nothing = await run(stack, "redrive", *filters, "--dry-run", token=operator)
    assert nothing.returncode == 0 and "would redrive: 0 of 0" in nothing.stdout, nothing.stdout


async def test_bulk_redrive_misuse_is_one_line(stack: Stack) -> None:
    operator = await create_api_token(stack.settings, "operator", f"bulk-misuse-{uuid.uuid4().hex[:8]}")
    cases = [
        (("redrive", "ORDER#1", "--status", "FAILED_CRITICAL"), "not both"),
        (("redrive", "ORDER#1", "--dry-run"), "not both"),
        (("redrive",), "order id, or filters"),
        (("redrive", "--status", "FAILED_CRITICAL", "--limit", "0"), "--limit"),
    ]
    for args, named in cases:
        done = await run(stack, *args, token=operator)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and named in lines[0], (args, done.stderr)
