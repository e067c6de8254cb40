"""Drift guard for deploy/monitoring: every metric the rules and the dashboard read is one the code defines.

The definitions are read from the source (``Counter("orderflow_...")`` and its
kind), not from a registry, so a metric that only another process defines counts
as well. promtool checks the syntax and the rules' behaviour (scripts/check-monitoring).
"""

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "orderflow-rules.yaml"
RULE_TESTS = MONITORING / "orderflow-rules.test.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RUNBOOK = ROOT / "docs" / "runbook.md"

DEFINITION = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"(orderflow_[a-z0-9_]+)\"")
#: Our metric names and recording rules; a label value such as job=~"orderflow.*" does not match.
USED = re.compile(r"\borderflow[_:][a-zA-Z0-9_:]*")
SUFFIXES = {"Counter": ["", "_created"], "Gauge": [""], "Histogram": ["_bucket", "_sum", "_count"]}
SUFFIXES["Summary"] = ["", "_sum", "_count"]


def defined_series() -> dict[str, str]:
    """Every series name the code exports, with the kind and file of the metric it comes from."""
    series: dict[str, str] = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0].startswith(".") or relative.parts[0] == "tests":
            continue
        for kind, name in DEFINITION.findall(path.read_text()):
            base = name.removesuffix("_total") if kind == "Counter" else name
            for suffix in SUFFIXES[kind]:
                full = base + ("_total" if kind == "Counter" and not suffix else suffix)
                series[full] = f"{kind} in {relative}"
    return series


def recorded() -> set[str]:
    return set(re.findall(r"^\s*- record:\s*(\S+)", RULES.read_text(), re.M))


def alerts() -> set[str]:
    return set(re.findall(r"^\s*- alert:\s*(\S+)", RULES.read_text(), re.M))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def check_names(used: set[str], where: str) -> None:
    series = defined_series()
    raw = {name for name in used if not name.startswith("orderflow:")}
    unknown = sorted(raw - series.keys())
    assert not unknown, f"{where} reads metrics no Python file defines: {unknown}"
    undefined = sorted({name for name in used if name.startswith("orderflow:")} - recorded())
    assert not undefined, f"{where} reads recording rules {RULES.name} does not define: {undefined}"


def test_the_source_scan_finds_the_metrics() -> None:
    series = defined_series()
    assert series["orderflow_sagas_started_total"].startswith("Counter in orchestrator")
    assert "orderflow_step_duration_seconds_bucket" in series
    assert "orderflow_outbox_oldest_age_seconds" in series
    assert "orderflow_sagas_started" not in series


def test_every_metric_in_the_rules_file_is_defined_in_the_code() -> None:
    used = set(USED.findall(RULES.read_text()))
    assert "orderflow_sagas_finished_total" in used
    check_names(used, RULES.name)


def test_every_metric_in_the_dashboard_is_defined_in_the_code_or_the_rules() -> None:
    used = {name for expr in dashboard_exprs() for name in USED.findall(expr)}
    assert "orderflow_step_duration_seconds_bucket" in used
    check_names(used, DASHBOARD.name)


def test_every_alert_and_recording_rule_has_a_promtool_test() -> None:
    tests = RULE_TESTS.read_text()
    tested_alerts = set(re.findall(r"alertname:\s*(\S+)", tests))
    tested_records = set(re.findall(r"- expr:\s*(orderflow:\S+)", tests))
    assert alerts() - tested_alerts == set()
    assert recorded() - tested_records == set()
    for alert in alerts():
        firing = re.search(rf"alertname: {alert}\n\s*exp_alerts:\n\s*- exp_labels", tests)
        quiet = re.search(rf"alertname: {alert}\n\s*exp_alerts: \[\]", tests)
        assert firing and quiet, f"{alert}: test it both firing and not firing"


def test_every_runbook_url_names_a_section_of_the_runbook() -> None:
    headings = re.findall(r"^#+\s+(.+?)\s*$", RUNBOOK.read_text(), re.M)
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in headings}
    urls = re.findall(r"runbook_url:\s*(\S+)", RULES.read_text())
    assert len(urls) == len(alerts()), "every alert has a runbook_url"
    for url in urls:  # absolute: RUNBOOK_BASE_URL#section (docs/deploy.md, components/runbook-base-url)
        base, _, anchor = url.partition("#")
        assert base.startswith("https://") and base.endswith("/docs/runbook.md"), url
        assert anchor in anchors, f"{url}: no such heading in docs/runbook.md"
    assert len({url.partition("#")[0] for url in urls}) == 1, "one RUNBOOK_BASE_URL for every link"


def test_dashboard_has_a_uid_and_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "orderflow-overview"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_dashboard_shows_each_of_the_guides_five_figures() -> None:
    exprs = "\n".join(dashboard_exprs())
    for figure in [
        "orderflow:compensation_rate:ratio1h",
        "orderflow:retry_rate:ratio1h",
        "orderflow:timeout_rate:ratio1h",
        'orderflow_sagas_finished_total{cluster=~"$cluster", namespace=~"$namespace", workflow=~"$workflow", '
        'status=~"FAILED_CRITICAL|CANCELLATION_FAILED"}',
        "orderflow:notification_failure_rate:ratio1h",
    ]:
        assert figure in exprs
