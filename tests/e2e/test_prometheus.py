"""A real Prometheus server scrapes the five processes while orders run with injected failures (issue 6, point 4).

Prometheus (Debian's prometheus package; scripts/tools/prometheus installs it) is started with one scrape job per
process, named ``orderflow-<process>`` as the rules expect, and the repository's rules file. After a run of happy
orders and orders failing by suffix (conftest.STACK_FAULTS), its HTTP API must show the guide's figures computed by
the recording rules from our metrics, and the critical-failure alert firing for the FAILED_CRITICAL orders.

Prometheus extrapolates ``increase()`` to the edges of its window, so the figures are compared with what was driven
within a tolerance. The figures' numerators and denominators come from the same orchestrator scrapes, so the
extrapolation nearly cancels out in the ratios.
"""

import asyncio
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import Stack, eventually, free_port, new_id, order_body, publish_raw, seed

from orderctl.config import SERVICES

pytestmark = pytest.mark.e2e

RULES_FILE = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "orderflow-rules.yaml"
PROCESSES = [spec.name for spec in SERVICES]  # orchestrator, inventory, payment, orders, notify

# The names in deploy/monitoring/orderflow-rules.yaml.
COMPENSATION_RATE = "orderflow:compensation_rate:ratio1h"
RETRY_RATE = "orderflow:retry_rate:ratio1h"
TIMEOUT_RATE = "orderflow:timeout_rate:ratio1h"
NOTIFICATION_FAILURE_RATE = "orderflow:notification_failure_rate:ratio1h"
CRITICAL_FAILURES = "orderflow:critical_failures:increase15m"
STARTED_RATE = "orderflow:sagas_started:rate5m"
FINISHED_RATE = "orderflow:sagas_finished:rate5m"
CRITICAL_ALERT = "OrderflowCriticalFailure"
RATE_ALERTS = [
    "OrderflowCompensationRateHigh",
    "OrderflowRetryRateHigh",
    "OrderflowTimeoutRateHigh",
    "OrderflowNotificationFailuresHigh",
]

#: Orders driven per kind; the suffix selects the fault (harness.STACK_FAULTS).
DRIVEN = {"happy": 4, "record": 2, "notify": 3, "slow": 2, "critical": 2}
EXPECTED_STATUS = {
    "happy": "CONFIRMED",
    "record": "FAILED_COMPENSATED",
    "notify": "CONFIRMED",
    "slow": "CONFIRMED",
    "critical": "FAILED_CRITICAL",
}
#: Relative tolerance on the figures (increase() extrapolation, see the module docstring).
TOLERANCE = 0.1


@dataclass
class Prometheus:
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await asyncio.to_thread(self.api, "query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    async def scalar(self, expr: str) -> float | None:
        """The value of a single-sample query; None while the result is empty."""
        result = await self.query(expr)
        assert len(result) <= 1, f"{expr} has {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None


def prometheus_config(stack: Stack) -> dict[str, Any]:
    # JSON is YAML: Prometheus reads this file as its prometheus.yml.
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {"job_name": f"orderflow-{name}", "static_configs": [{"targets": [f"127.0.0.1:{stack.port(name)}"]}]}
            for name in PROCESSES
        ],
    }


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture(scope="module")
async def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus server is not on the PATH; run scripts/tools/prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps(prometheus_config(stack), indent=2))
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(url=f"http://127.0.0.1:{port}", log=log)
    try:
        await eventually(
            lambda: asyncio.to_thread(lambda: process.returncode is not None or _ready(server.url)),
            timeout=30,
            what="Prometheus ready",
        )
        assert process.returncode is None, f"Prometheus exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        yield server
    except Exception:
        print(f"\n----- prometheus.log (last 3000 characters) -----\n{log.read_text()[-3000:]}")
        raise
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_prometheus_scrapes_every_process_and_loads_the_rules(prometheus: Prometheus) -> None:
    async def every_target_up() -> dict[str, float]:
        up = {r["metric"]["job"]: float(r["value"][1]) for r in await prometheus.query('up{job=~"orderflow.*"}')}
        return up if up == {f"orderflow-{name}": 1.0 for name in PROCESSES} else {}

    await eventually(every_target_up, timeout=20, what="every process scraped (up == 1)")
    targets = await asyncio.to_thread(prometheus.api, "targets", state="active")
    assert sorted((t["labels"]["job"], t["health"]) for t in targets["activeTargets"]) == sorted(
        (f"orderflow-{name}", "up") for name in PROCESSES
    )

    groups = (await asyncio.to_thread(prometheus.api, "rules"))["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    expected = [COMPENSATION_RATE, RETRY_RATE, TIMEOUT_RATE, NOTIFICATION_FAILURE_RATE, CRITICAL_FAILURES]
    for name in [*expected, STARTED_RATE, FINISHED_RATE, CRITICAL_ALERT, *RATE_ALERTS]:
        assert name in rules, f"{name} is not in {RULES_FILE.name}; Prometheus loaded {sorted(rules)}"
    assert [group["file"] for group in groups] == [str(RULES_FILE)] * len(groups)


async def test_figures_and_critical_alert_from_a_run_with_injected_failures(
    stack: Stack, prometheus: Prometheus, channel, listener
) -> None:
    started = time.monotonic()

    # Every process has been scraped at least once before the run: the counters' values before it are the
    # baseline of increase(), so only this run's orders count. No saga of an earlier test may still be running
    # (the stack is the session's): it would finish within the window and count too.
    async def every_process_ready_and_idle() -> bool:
        ready = {r["metric"]["job"]: float(r["value"][1]) for r in await prometheus.query("orderflow_ready")}
        in_flight = await prometheus.scalar("sum(orderflow_sagas_in_flight)")
        return ready == {f"orderflow-{name}": 1.0 for name in PROCESSES} and in_flight == 0

    await eventually(
        every_process_ready_and_idle, timeout=30, what="orderflow_ready == 1 from every process, no saga in flight"
    )
    before = {
        a["labels"]["alertname"]: a["state"] for a in (await asyncio.to_thread(prometheus.api, "alerts"))["alerts"]
    }
    assert CRITICAL_ALERT not in before, f"{CRITICAL_ALERT} is {before[CRITICAL_ALERT]} before any order ran"

    sku = new_id("sku-")
    await seed(stack, {sku: (100, "5.00")})
    kinds = {new_id() + ("" if kind == "happy" else f"-{kind}"): kind for kind, n in DRIVEN.items() for _ in range(n)}
    for order_id in kinds:
        await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 1)])).encode())
    outcomes = await listener.wait_for(list(kinds), timeout=60)
    assert {o: outcomes.get(o, {}).get("status") for o in kinds} == {o: EXPECTED_STATUS[k] for o, k in kinds.items()}
    driven_at = time.monotonic()

    total = sum(DRIVEN.values())
    confirmed = DRIVEN["happy"] + DRIVEN["notify"] + DRIVEN["slow"]
    order = '{workflow="order"}'  # every figure is per workflow; this run's orders are the order workflow's
    expected = {
        # RefundPayment ran once per -record order (succeeded) and once per -critical order (failed after retries).
        COMPENSATION_RATE + order: (DRIVEN["record"] + DRIVEN["critical"]) / total,
        # Retried: -slow (ProcessPayment timed out once) and -critical (RefundPayment retried three times).
        RETRY_RATE + order: (DRIVEN["slow"] + DRIVEN["critical"]) / total,
        # One States.Timeout per -slow order.
        TIMEOUT_RATE + order: DRIVEN["slow"] / total,
        NOTIFICATION_FAILURE_RATE + order: DRIVEN["notify"] / confirmed,
        CRITICAL_FAILURES + order: DRIVEN["critical"],
        # Counters only this run moved: every order was started and finished within Prometheus' window.
        f"sum(increase(orderflow_sagas_started_total{order}[1h]))": total,
        f"sum(increase(orderflow_sagas_finished_total{order}[1h]))": total,
    }
    last: dict[str, float | None] = {}

    async def figures_match() -> bool:
        for expr in expected:
            last[expr] = await prometheus.scalar(expr)
        return all(v is not None and abs(v - expected[e]) <= TOLERANCE * expected[e] for e, v in last.items())

    try:
        await eventually(figures_match, timeout=30, interval=0.5, what="the recorded figures")
    except AssertionError:
        raise AssertionError(
            "figures from Prometheus vs expected:\n"
            + "\n".join(f"  {e}: {last.get(e)!r} vs {v:.4f}" for e, v in expected.items())
        ) from None

    # The throughput rules are there too, and every process's own metrics were scraped during the run.
    assert (await prometheus.scalar(STARTED_RATE + order) or 0) > 0
    finished_by_status = {
        r["metric"]["status"]: float(r["value"][1])
        for r in await prometheus.query(f'{FINISHED_RATE}{{workflow="order"}}')
    }
    for status in set(EXPECTED_STATUS.values()):
        assert finished_by_status.get(status, 0) > 0, finished_by_status
    handled = {
        r["metric"]["job"]: float(r["value"][1])
        for r in await prometheus.query('sum by (job) (increase(orderflow_messages_handled_total{outcome="ok"}[1h]))')
    }
    assert sorted(job for job, n in handled.items() if n > 0) == sorted(f"orderflow-{name}" for name in PROCESSES)

    alerts: dict[str, dict[str, Any]] = {}

    async def critical_alert_firing() -> bool:
        data = await asyncio.to_thread(prometheus.api, "alerts")
        alerts.clear()
        alerts.update({a["labels"]["alertname"]: a for a in data["alerts"]})
        return alerts.get(CRITICAL_ALERT, {}).get("state") == "firing"

    try:
        await eventually(critical_alert_firing, timeout=15, interval=0.5, what=f"{CRITICAL_ALERT} firing")
    except AssertionError:
        raise AssertionError(f"{CRITICAL_ALERT} not firing; alerts: {json.dumps(alerts, indent=1)}") from None
    critical = alerts[CRITICAL_ALERT]
    assert critical["labels"]["severity"] == "critical"
    assert abs(float(critical["value"]) - DRIVEN["critical"]) <= TOLERANCE * DRIVEN["critical"]
    # The rate alerts hold "for: 10m": above their thresholds after this run, they are pending, not firing.
    assert {name: alerts.get(name, {}).get("state") for name in RATE_ALERTS} == dict.fromkeys(RATE_ALERTS, "pending")

    print(
        f"\nrun of {total} orders: {driven_at - started:.1f}s; figures and alert in Prometheus after another "
        f"{time.monotonic() - driven_at:.1f}s: "
        + ", ".join(f"{name}={last[name]:.3f}" for name in expected if name.startswith("orderflow:"))
    )
