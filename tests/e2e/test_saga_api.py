"""The console's API (/api/v1/sagas) against the running orchestrator with real sagas: CONFIRMED, CANCELLED,
FAILED_COMPENSATED and FAILED_CRITICAL ones made by the session stack's injected faults (conftest.STACK_FAULTS).

Each group of orders carries a tag of its own in its order ids and products, so the filters find exactly this
module's sagas among everything else the session's stack runs.
"""

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
import pytest
from harness import Stack, create_api_token, eventually, metric_value, order_body, publish_raw, seed

from orchestrator import openapi
from orchestrator.problems import PROBLEM_JSON
from orderctl.client import OutcomeListener

pytestmark = pytest.mark.e2e


def call(
    stack: Stack,
    path: str,
    *,
    token: str | None,
    method: str = "GET",
    query: list[tuple[str, str]] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """Status, headers and JSON body of one request to the API."""
    url = stack.api_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        sent["Content-Type"] = "application/json"
    request = urllib.request.Request(url, method=method, headers=sent, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, got, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, got, raw = exc.code, exc.headers, exc.read()
    return status, got, json.loads(raw) if raw else None


async def acall(*args: Any, **kwargs: Any) -> tuple[int, Any, Any]:
    return await asyncio.to_thread(call, *args, **kwargs)


def saga_path(order_id: str, suffix: str = "") -> str:
    return f"/api/v1/sagas/{urllib.parse.quote(order_id, safe='')}{suffix}"


@dataclass
class Sagas:
    tag: str
    sku: str
    empty_sku: str
    by_status: dict[str, list[str]]
    odd_id: str
    #: FAILED_CRITICAL sagas kept for the redrive tests (their own tags: listing tests never count them).
    to_redrive: str
    bulk_tag: str
    bulk: list[str]
    viewer: str
    operator: str

    @property
    def all(self) -> list[str]:
        return [order_id for ids in self.by_status.values() for order_id in ids]


@pytest.fixture(scope="module")
async def sagas(stack: Stack) -> Sagas:
    tag = uuid.uuid4().hex[:10]
    sku, empty_sku = f"sku-{tag}", f"sku-{tag}-none"
    other_sku = f"sku-{tag}-other"  # the redrive tests' orders: not among this tag's products
    await seed(stack, {sku: (50, "3.00"), empty_sku: (0, "1.00"), other_sku: (50, "2.00")})
    odd_id = f"ORDER#{tag}/a%b?c_d"  # a slash, percent, question mark and underscore: URL-encoding and LIKE
    plan = {
        "CONFIRMED": [f"ORDER#{tag}-c1", f"ORDER#{tag}-c2", odd_id],
        "CANCELLED": [f"ORDER#{tag}-x1"],
        "FAILED_COMPENSATED": [f"ORDER#{tag}-r1-record"],
        "FAILED_CRITICAL": [f"ORDER#{tag}-k1-critical", f"ORDER#{tag}-k2-critical"],
    }
    to_redrive = f"ORDER#{uuid.uuid4().hex[:10]}-critical"
    bulk_tag = uuid.uuid4().hex[:10]
    bulk = [f"ORDER#{bulk_tag}-b{i}-critical" for i in range(2)]
    connection = await aio_pika.connect_robust(stack.settings.amqp_url)
    try:
        channel = await connection.channel()
        listener = OutcomeListener()
        await listener.start(channel)
        every = [*(i for ids in plan.values() for i in ids), to_redrive, *bulk]
        for order_id in every:
            product = empty_sku if order_id in plan["CANCELLED"] else sku if tag in order_id else other_sku
            await publish_raw(channel, json.dumps(order_body(order_id, [(product, 1)])).encode())
        outcomes = await listener.wait_for(every, 120)
    finally:
        await connection.close()
    expected = {i: s for s, ids in plan.items() for i in ids} | dict.fromkeys([to_redrive, *bulk], "FAILED_CRITICAL")
    assert {i: o["status"] for i, o in outcomes.items()} == expected
    viewer = await create_api_token(stack.settings, "viewer", f"console-viewer-{tag}")
    operator = await create_api_token(stack.settings, "operator", f"console-operator-{tag}")
    return Sagas(tag, sku, empty_sku, plan, odd_id, to_redrive, bulk_tag, bulk, viewer, operator)


async def listed(stack: Stack, token: str, query: list[tuple[str, str]]) -> dict[str, Any]:
    status, _, body = await acall(stack, "/api/v1/sagas", token=token, query=query)
    assert status == 200, body
    return body


async def test_filters_and_counts(stack: Stack, sagas: Sagas) -> None:
    def ids(page: dict[str, Any]) -> set[str]:
        return {item["orderId"] for item in page["items"]}

    everything = await listed(stack, sagas.viewer, [("q", sagas.tag)])
    assert ids(everything) == set(sagas.all) and everything["total"] == len(sagas.all)
    assert everything["counts"] == {
        "RUNNING": 0,
        "CONFIRMED": 3,
        "CANCELLED": 1,
        "FAILED": 0,
        "FAILED_COMPENSATED": 1,
        "FAILED_CRITICAL": 2,
        "CANCELLED_BY_CUSTOMER": 0,
        "CANCELLATION_FAILED": 0,
    }
    created = [datetime.fromisoformat(item["createdAt"]) for item in everything["items"]]
    assert created == sorted(created, reverse=True), "newest first"

    critical = await listed(stack, sagas.viewer, [("q", sagas.tag), ("status", "FAILED_CRITICAL")])
    assert ids(critical) == set(sagas.by_status["FAILED_CRITICAL"]) and critical["total"] == 2
    assert critical["counts"] == everything["counts"], "counts leave the status filter aside"
    two = await listed(stack, sagas.viewer, [("q", sagas.tag), ("status", "FAILED_CRITICAL"), ("status", "CANCELLED")])
    assert ids(two) == set(sagas.by_status["FAILED_CRITICAL"] + sagas.by_status["CANCELLED"])

    # Any error the saga recorded, not only its final one: the critical ones failed CreateOrderRecord too, and
    # their refund failed (RefundFailed) though they ended with OrderFailedCritical.
    by_error = await listed(stack, sagas.viewer, [("q", sagas.tag), ("error", "OrderRecordError")])
    assert ids(by_error) == set(sagas.by_status["FAILED_COMPENSATED"] + sagas.by_status["FAILED_CRITICAL"])
    by_refund = await listed(stack, sagas.viewer, [("q", sagas.tag), ("error", "RefundFailed")])
    assert ids(by_refund) == set(sagas.by_status["FAILED_CRITICAL"]) and by_refund["total"] == 2
    final = await listed(stack, sagas.viewer, [("q", sagas.tag), ("error", "OrderFailedCritical")])
    assert ids(final) == set(sagas.by_status["FAILED_CRITICAL"])
    cancelled = sagas.by_status["CANCELLED"][0]
    by_product = await listed(stack, sagas.viewer, [("product", sagas.empty_sku)])
    assert ids(by_product) == {cancelled}
    assert ids(await listed(stack, sagas.viewer, [("product", sagas.sku)])) == set(sagas.all) - {cancelled}
    step = next(item["currentStep"] for item in everything["items"] if item["orderId"] == cancelled)
    by_step = await listed(stack, sagas.viewer, [("q", sagas.tag), ("step", step)])
    assert cancelled in ids(by_step) and not ids(by_step) & set(sagas.by_status["CONFIRMED"])

    # Times: nothing of ours started after the newest one; all of it at or after the oldest.
    newest, oldest = everything["items"][0], everything["items"][-1]
    after = await listed(stack, sagas.viewer, [("q", sagas.tag), ("createdFrom", newest["createdAt"])])
    assert ids(after) == {newest["orderId"]}
    before = await listed(stack, sagas.viewer, [("q", sagas.tag), ("createdTo", oldest["createdAt"])])
    assert ids(before) == set()
    since = await listed(stack, sagas.viewer, [("q", sagas.tag), ("updatedFrom", oldest["createdAt"])])
    assert ids(since) == set(sagas.all)

    # Free text is a substring, its LIKE wildcards literal: "%" and "_" match only themselves.
    assert ids(await listed(stack, sagas.viewer, [("q", "/a%b?c_d")])) == {sagas.odd_id}
    assert ids(await listed(stack, sagas.viewer, [("q", sagas.tag + "%")])) == set()
    assert ids(await listed(stack, sagas.viewer, [("q", sagas.tag[:4] + "_" + sagas.tag[5:])])) == set()


async def test_pages_cover_everything_once(stack: Stack, sagas: Sagas) -> None:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = [("q", sagas.tag), ("limit", "2")] + ([("cursor", cursor)] if cursor else [])
        page = await listed(stack, sagas.viewer, query)
        pages += 1
        assert len(page["items"]) <= 2 and page["total"] == len(sagas.all)
        seen += [item["orderId"] for item in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == 4 and len(seen) == len(set(seen)) == len(sagas.all) and set(seen) == set(sagas.all)
    whole = await listed(stack, sagas.viewer, [("q", sagas.tag)])
    assert seen == [item["orderId"] for item in whole["items"]], "pages in the listing's order"


async def test_detail_of_a_failed_critical_saga(stack: Stack, sagas: Sagas) -> None:
    order_id = sagas.by_status["FAILED_CRITICAL"][0]
    status, _, saga = await acall(stack, saga_path(order_id), token=sagas.viewer)
    assert status == 200, saga
    assert saga["status"] == "FAILED_CRITICAL" and saga["redrive"] == {"redrivable": True, "reason": None}
    assert saga["input"]["orderId"] == order_id and saga["input"]["items"][0]["productId"] == sagas.sku
    assert saga["workflow"]["name"] and saga["workflow"]["version"]
    refund = next(s for s in saga["steps"] if s["step"] == "RefundPayment")
    assert [a["attempt"] for a in refund["attempts"]] == [1, 2, 3, 4]
    assert all(a["outcome"] == "failed" and a["error"] == "RefundFailed" for a in refund["attempts"])
    assert refund["outcome"] == "failed" and all(a["durationSeconds"] >= 0 for a in refund["attempts"])
    assert saga["history"][0]["event"] == "ExecutionStarted" and saga["history"][-1]["event"] == "ExecutionFailed"
    assert saga["durationSeconds"] > 0

    # An id with a slash, percent and question mark, URL-encoded, is one path segment.
    status, _, odd = await acall(stack, saga_path(sagas.odd_id), token=sagas.viewer)
    assert status == 200 and odd["orderId"] == sagas.odd_id and odd["status"] == "CONFIRMED", odd
    assert odd["redrive"]["redrivable"] is False and "CONFIRMED" in odd["redrive"]["reason"]

    status, headers, problem = await acall(stack, saga_path(f"ORDER#{sagas.tag}-absent"), token=sagas.viewer)
    assert status == 404 and headers["Content-Type"].startswith(PROBLEM_JSON) and problem["status"] == 404


async def test_bad_parameters_are_problems_naming_them(stack: Stack, sagas: Sagas) -> None:
    for query, name in [
        ([("status", "STUCK")], "status.0"),
        ([("limit", "0")], "limit"),
        ([("createdFrom", "yesterday")], "createdFrom"),
        ([("createdFrom", "2026-01-01T00:00:00")], "createdFrom"),  # no time zone
        ([("colour", "red")], "colour"),
        ([("cursor", "not-a-cursor")], "cursor"),
    ]:
        status, headers, problem = await acall(stack, "/api/v1/sagas", token=sagas.viewer, query=query)
        assert status == 400 and headers["Content-Type"].startswith(PROBLEM_JSON), (query, problem)
        assert name in [e["name"] for e in problem["errors"]], (query, problem)


async def test_tokens_and_roles(stack: Stack, sagas: Sagas) -> None:
    status, headers, _ = await acall(stack, "/api/v1/sagas", token=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    path = saga_path(sagas.to_redrive, "/redrive")
    status, _, problem = await acall(stack, path, token=sagas.viewer, method="POST", body={})
    assert status == 403 and problem["requiredRole"] == "operator"
    status, _, problem = await acall(stack, "/api/v1/sagas/redrive", token=sagas.viewer, method="POST", body={})
    assert status == 403
    status, _, _ = await acall(stack, path, token=None, method="POST", body={})
    assert status == 401
    _, _, saga = await acall(stack, saga_path(sagas.to_redrive), token=sagas.viewer)
    assert saga["status"] == "FAILED_CRITICAL", "a refused redrive changed nothing"


async def test_openapi_document_is_public_and_the_committed_one(stack: Stack) -> None:
    status, _, served = await acall(stack, "/api/v1/openapi.json", token=None)
    assert status == 200
    assert served == json.loads(openapi.DOC_PATH.read_text())


async def test_redrive_by_an_operator_finishes_the_saga_with_an_audit_entry(stack: Stack, sagas: Sagas) -> None:
    port = stack.port("orchestrator")
    done_before = metric_value(port, "orderflow_api_actions_total", action="redrive", outcome="done")
    status, _, result = await acall(
        stack,
        saga_path(sagas.to_redrive, "/redrive"),
        token=sagas.operator,
        method="POST",
        body={"reason": "refunds work again"},
        headers={"X-Forwarded-For": "203.0.113.7"},
    )
    assert status == 200, result
    assert result["status"] == "RUNNING" and result["restarted"] == ["RefundPayment"] and result["redriveCount"] == 1
    assert result["by"]["token"] == f"console-operator-{sagas.tag}" and result["by"]["role"] == "operator"

    async def compensated() -> dict[str, Any] | None:
        _, _, saga = await acall(stack, saga_path(sagas.to_redrive), token=sagas.viewer)
        return saga if saga["status"] == "FAILED_COMPENSATED" else None

    saga = await eventually(compensated, timeout=60, what="the redriven saga to finish")
    events = [h["event"] for h in saga["history"]]
    audit = saga["history"][events.index("RedriveRequested")]
    assert events.index("RedriveRequested") + 1 == events.index("ExecutionRedriven")
    assert audit["detail"]["action"] == "redrive" and audit["detail"]["reason"] == "refunds work again"
    assert audit["detail"]["by"]["address"] == "127.0.0.1"
    assert audit["detail"]["by"]["forwardedFor"] == "203.0.113.7" and audit["detail"]["bulk"] is False
    assert audit["detail"]["by"]["tokenId"] == result["by"]["tokenId"] and audit["at"]
    refund = [s for s in saga["steps"] if s["step"] == "RefundPayment"]
    assert [a["attempt"] for step in refund for a in step["attempts"]] == [1, 2, 3, 4, 5]
    assert metric_value(port, "orderflow_api_actions_total", action="redrive", outcome="done") == done_before + 1

    # Not redrivable now: a 409 that says why, and no audit entry for it.
    status, _, problem = await acall(
        stack, saga_path(sagas.to_redrive, "/redrive"), token=sagas.operator, method="POST"
    )
    assert status == 409 and problem["sagaStatus"] == "FAILED_COMPENSATED" and "FAILED_CRITICAL" in problem["detail"]
    _, _, again = await acall(stack, saga_path(sagas.to_redrive), token=sagas.viewer)
    assert [h["event"] for h in again["history"]].count("RedriveRequested") == 1
    status, _, _ = await acall(
        stack, saga_path("ORDER#absent-" + sagas.tag, "/redrive"), token=sagas.operator, method="POST"
    )
    assert status == 404


async def test_bulk_redrive_dry_run_changes_nothing_then_redrives_within_the_limit(stack: Stack, sagas: Sagas) -> None:
    flt = {"q": sagas.bulk_tag}
    before = {i: (await acall(stack, saga_path(i), token=sagas.viewer))[2] for i in sagas.bulk}

    status, _, dry = await acall(
        stack, "/api/v1/sagas/redrive", token=sagas.operator, method="POST", body={"filter": flt}
    )
    assert status == 200, dry
    assert dry["dryRun"] is True and sorted(dry["orderIds"]) == sorted(sagas.bulk) and dry["matched"] == 2
    after = {i: (await acall(stack, saga_path(i), token=sagas.viewer))[2] for i in sagas.bulk}
    assert after == before, "a dry run changes nothing, not even the history"

    status, _, first = await acall(
        stack,
        "/api/v1/sagas/redrive",
        token=sagas.operator,
        method="POST",
        body={"filter": flt, "dryRun": False, "limit": 1, "reason": "bulk"},
    )
    assert status == 200, first
    assert first["dryRun"] is False and len(first["orderIds"]) == 1 and first["truncated"] is True
    assert first["orderIds"][0] == dry["orderIds"][0], "newest first"
    status, _, second = await acall(
        stack,
        "/api/v1/sagas/redrive",
        token=sagas.operator,
        method="POST",
        body={"filter": flt, "dryRun": False, "reason": "bulk"},
    )
    assert status == 200 and second["orderIds"] == dry["orderIds"][1:] and second["truncated"] is False, second

    async def all_compensated() -> bool:
        page = await listed(stack, sagas.viewer, [("q", sagas.bulk_tag), ("status", "FAILED_COMPENSATED")])
        return page["total"] == 2

    await eventually(all_compensated, timeout=60, what="the bulk-redriven sagas to finish")
    for order_id in sagas.bulk:
        _, _, saga = await acall(stack, saga_path(order_id), token=sagas.viewer)
        audits = [h for h in saga["history"] if h["event"] == "RedriveRequested"]
        assert len(audits) == 1 and audits[0]["detail"]["bulk"] is True and audits[0]["detail"]["reason"] == "bulk"

    status, _, problem = await acall(
        stack, "/api/v1/sagas/redrive", token=sagas.operator, method="POST", body={"filter": flt, "limit": 100000}
    )
    assert status == 400 and "limit" in [e["name"] for e in problem["errors"]]
