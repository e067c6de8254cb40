"""bench.park as a person runs it: the real command on a private installation of its own parks a few sagas at
ProcessPayment, releases some, and removes everything. It asserts outcomes and the report's shape, never a speed
or a memory figure (those are measured in bench/, not tested)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

# The same check as bench.load's: the report names its installation in the same shape (Installation.describe),
# and pytest runs the imported test here against this module's ``report``.
from test_bench_smoke import DEV_SERVERS, REPO, SERVICES, test_the_private_installation_is_gone  # noqa: F401

pytestmark = pytest.mark.e2e

SAGAS, RELEASED = 40, 5


@pytest.fixture(scope="module")
def report(servers: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "park.json"
    argv = ["--sagas", str(SAGAS), "--release", str(RELEASED), "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.park", *argv], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    assert "parked 40 of 40" in done.stdout
    return json.loads(Path(out).read_text())


def test_every_saga_parks_at_process_payment(report: dict) -> None:
    assert (report["sagas"], report["parked"], report["publish_failed"]) == (SAGAS, SAGAS, 0)
    assert report["ended_while_parking"] == {} and not report["stalled"] and report["ok"]
    rows = report["milestones"][-1]["rows"]
    for table in ("orchestrator.saga", "orchestrator.saga_timer", "payment.pending_reply", "inventory.reservation"):
        assert rows[table] == SAGAS, table


def test_released_sagas_complete_confirmed(report: dict) -> None:
    released = report["release"]
    assert released["results"]["sent"] == RELEASED and released["errors"] == []
    assert released["results"]["by_status"] == {"CONFIRMED": RELEASED}
    assert released["still_parked"] == SAGAS - RELEASED


def test_report_has_every_section(report: dict) -> None:
    milestones = report["milestones"]
    assert [m["percent"] for m in milestones] == list(range(0, 101, 10))
    assert [m["parked"] for m in milestones][-1] == SAGAS
    for m in milestones:
        assert SERVICES | DEV_SERVERS <= set(m["rss_bytes"]) and all(m["rss_bytes"].values())
        assert set(m["database_bytes"]) == SERVICES and all(m["database_bytes"].values())
    assert {g["name"] for g in report["rss_growth"]} == SERVICES | DEV_SERVERS
    assert {g["name"] for g in report["database_growth"]} == SERVICES
    assert SERVICES | DEV_SERVERS <= set(report["per_process"])
    for key in ("arguments", "machine", "installation", "rss_series", "restarts", "seconds", "sagas_per_second"):
        assert report[key] is not None, key
