"""bench.load as a person runs it: the real command, a private installation of its own, a few orders of every
path. It asserts outcomes and the report's shape, never a speed (speed is measured in bench/, not tested)."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from harness import ADMIN_DSN

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MIX = "happy=70,declined=10,nostock=10,record_error=10"
EXPECTED = {"happy": "CONFIRMED", "declined": "FAILED", "nostock": "CANCELLED", "record_error": "FAILED_COMPENSATED"}
SERVICES = {"orchestrator", "inventory", "payment", "orders", "notify"}
DEV_SERVERS = {"stripe-server", "smtp-sink", "sms-server"}


@pytest.fixture(scope="module")
def report(servers: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "load.json"
    argv = ["--count", "24", "--in-flight", "4", "--mix", MIX, "--floor-seconds", "1", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.load", *argv], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    return json.loads(out.read_text())


def test_every_order_reaches_its_paths_status(report: dict) -> None:
    results = report["results"]
    assert (results["sent"], results["completed"], results["unfinished"], results["mismatched"]) == (24, 24, 0, 0)
    by_path = {row["path"]: row for row in results["by_path"]}
    assert set(by_path) == set(EXPECTED)
    for path, row in by_path.items():
        assert row["expected"] == EXPECTED[path]
        assert row["by_status"] == {EXPECTED[path]: row["sent"]}, row


def test_report_has_every_section(report: dict) -> None:
    for key in ("floor", "results", "per_process", "ceiling", "ratio", "cost", "machine", "arguments"):
        assert report[key] is not None, key
    assert report["floor"]["broker"]["messages"] > 0 and report["floor"]["postgres"]["transactions"] > 0
    assert SERVICES | DEV_SERVERS <= set(report["per_process"])
    assert all(report["rss_series"][name] for name in SERVICES)
    cost = report["cost"]
    assert set(cost["deliveries_by_process"]) == SERVICES
    assert cost["deliveries_per_saga"] > 0 and cost["transactions_per_saga"] > 0 and cost["transactions_exact"]
    assert cost["listener_events"] >= cost["sagas"]
    steps = {row["step"] for row in report["results"]["steps"]}
    assert {"CheckInventory", "ProcessPayment", "CreateOrderRecord", "NotifyCustomer"} <= steps


def test_the_private_installation_is_gone(report: dict) -> None:
    async def leftover_databases() -> list[str]:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            query = "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])"
            return [r["datname"] for r in await conn.fetch(query, report["installation"]["databases"])]
        finally:
            await conn.close()

    assert asyncio.run(leftover_databases()) == []
    vhosts = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, timeout=60)
    assert report["installation"]["vhost"] not in vhosts.stdout.split()
