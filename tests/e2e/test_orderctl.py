"""orderctl as a person uses it: stock, submit, status; and the README's main job, `orderctl demo`."""

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from harness import Stack, drop_databases, fresh_vhost, settings_for

pytestmark = pytest.mark.e2e


def ctl_env(settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ORDERFLOW_AMQP_URL": settings.amqp_url,
            "ORDERFLOW_ADMIN_DATABASE_URL": settings.admin_database_url,
            "ORDERFLOW_BASE_HTTP_PORT": str(settings.base_http_port),
            "ORDERFLOW_STRIPE_PORT": str(settings.stripe_port),
            "ORDERFLOW_SMTP_PORT": str(settings.smtp_port),
            "ORDERFLOW_MAILDIR": str(settings.maildir),
        }
    )
    for service in ("orchestrator", "inventory", "payment", "orders", "notify"):
        env[f"ORDERFLOW_{service.upper()}_DATABASE_URL"] = settings.database_url(service)
    return env


def orderctl(settings, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orderctl", *args],
        env=ctl_env(settings),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_stock_submit_and_status(stack: Stack, tmp_path: Path) -> None:
    sku = f"sku-{uuid.uuid4().hex[:8]}"
    shown = orderctl(stack.settings, "stock", "set", sku, "7", "--price", "3.10", "--name", "Tea cup")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith(sku))
    assert "Tea cup" in row and "3.10" in row and " 7 " in row

    order_id = f"ORDER#{uuid.uuid4().hex[:8]}"
    order = {
        "orderId": order_id,
        "customer": {"email": "ada@example.com", "phone": None},
        "items": [{"productId": sku, "quantity": 2}],
        "paymentMethodId": "pm_card_visa",
    }
    path = tmp_path / "order.json"
    path.write_text(json.dumps(order))
    submitted = orderctl(stack.settings, "submit", str(path), "--wait", "60")
    assert submitted.returncode == 0, submitted.stderr
    assert f"{order_id}: CONFIRMED" in submitted.stdout

    status = orderctl(stack.settings, "status", order_id, "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["status"] == "CONFIRMED" and view["amount"] == 6.2
    assert [s["step"] for s in view["steps"]][-1] == "NotifyCustomer"

    readable = orderctl(stack.settings, "status", order_id)
    assert "CONFIRMED" in readable.stdout and "ProcessPayment" in readable.stdout

    history = orderctl(stack.settings, "history", order_id)
    assert history.returncode == 0, history.stderr
    assert "ExecutionStarted" in history.stdout and "TaskSucceeded" in history.stdout
    assert "ExecutionSucceeded" in history.stdout

    listed = orderctl(stack.settings, "orders", "--limit", "500")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(order_id))
    assert "CONFIRMED" in row and "6.20" in row

    missing = orderctl(stack.settings, "status", "ORDER#nope")
    assert missing.returncode == 1 and "no saga" in missing.stderr


async def test_demo_shows_each_order_outcome(servers: None, tmp_path: Path) -> None:
    with fresh_vhost() as amqp_url:  # its own vhost: the session's stack consumes the shared one
        settings = settings_for(amqp_url, tmp=tmp_path)
        await _run_demo(settings, tmp_path)


async def _run_demo(settings, tmp_path: Path) -> None:
    try:
        result = orderctl(settings, "demo", "--timeout", "120", cwd=tmp_path, timeout=300)
        logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((tmp_path / "var/log").glob("*.log")))
        assert result.returncode == 0, result.stdout + result.stderr + logs
        table = result.stdout
        assert table.count("CONFIRMED") >= 2
        assert "CANCELLED" in table and "InsufficientStockError" in table
        assert "PaymentDeclined" in table and "NO OUTCOME" not in table
    finally:
        await drop_databases(settings)


def test_migrate_is_idempotent(amqp_url: str, tmp_path: Path) -> None:
    settings = settings_for(amqp_url, tmp=tmp_path)
    try:
        first = orderctl(settings, "migrate")
        assert first.returncode == 0, first.stderr
        assert "orchestrator/0001_saga" in first.stdout
        second = orderctl(settings, "migrate")
        assert second.returncode == 0 and second.stdout.count("up to date") == 5
    finally:
        asyncio.run(drop_databases(settings))
