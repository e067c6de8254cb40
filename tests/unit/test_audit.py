"""scripts/audit: how pip-audit's reports are judged against requirements/audit-accepted.toml, and the one line
it prints when the vulnerability service cannot be asked."""

import importlib.util
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("audit", ROOT / "scripts" / "tools" / "audit.py")
audit = importlib.util.module_from_spec(_spec)
sys.modules["audit"] = audit
_spec.loader.exec_module(audit)

TODAY = date(2026, 12, 6)


def report(*dependencies: dict) -> dict:
    """A report in pip-audit's JSON format (pip_audit/_format/json.py)."""
    return {"dependencies": list(dependencies), "fixes": []}


def vulnerable(name: str, version: str, vuln_id: str, *aliases: str) -> dict:
    return {
        "name": name,
        "version": version,
        "vulns": [{"id": vuln_id, "fix_versions": ["9.9"], "aliases": list(aliases)}],
    }


def clean(name: str, version: str = "1.0") -> dict:
    return {"name": name, "version": version, "vulns": []}


def test_a_finding_in_several_locks_is_one_finding_naming_them() -> None:
    found, skipped = audit.findings_of(
        {
            "app.txt": report(vulnerable("aiohttp", "3.14.5", "PYSEC-1", "GHSA-a")),
            "dev.txt": report(vulnerable("aiohttp", "3.14.5", "PYSEC-1", "GHSA-a"), clean("rich")),
        }
    )
    assert [(f.package, f.id, f.locks) for f in found] == [("aiohttp", "PYSEC-1", ("app.txt", "dev.txt"))]
    assert skipped == {}


def test_accepted_by_an_alias_until_its_date_then_failing_again() -> None:
    found, _ = audit.findings_of({"app.txt": report(vulnerable("aiohttp", "3.14.5", "PYSEC-1", "GHSA-a"))})
    entry = audit.Accepted(id="GHSA-a", package="aiohttp", reason="not reachable", until=TODAY)
    passed, failing, unused = audit.judge(found, [entry], TODAY)
    assert [(f.id, e.reason) for f, e in passed] == [("PYSEC-1", "not reachable")] and not failing and not unused
    passed, failing, unused = audit.judge(found, [entry], date(2026, 12, 7))
    assert not passed and [(f.id, e) for f, e in failing] == [("PYSEC-1", entry)] and not unused


def test_an_acceptance_is_for_its_package_only_and_an_unused_one_is_reported() -> None:
    found, _ = audit.findings_of({"app.txt": report(vulnerable("stripe", "16.1", "GHSA-b"))})
    other = audit.Accepted(id="GHSA-b", package="aiohttp", reason="r", until=TODAY)
    passed, failing, unused = audit.judge(found, [other], TODAY)
    assert not passed and [f.id for f, _ in failing] == ["GHSA-b"] and unused == [other]


def test_a_service_that_knows_no_locked_package_means_skipped_not_passed() -> None:
    skipped = {"name": "aio-pika", "skip_reason": "Dependency not found on PyPI and could not be audited"}
    with pytest.raises(audit.ServiceUnavailable, match="knows none"):
        audit.findings_of({"app.txt": report(skipped, {**skipped, "name": "aiohttp"})})
    found, not_audited = audit.findings_of({"app.txt": report(skipped, clean("rich"))})
    assert found == [] and list(not_audited) == ["aio-pika"]


def test_the_accept_file_needs_every_field(tmp_path: Path) -> None:
    path = tmp_path / "accepted.toml"
    path.write_text('[[accepted]]\nid = "GHSA-a"\npackage = "Aio_Pika"\nreason = "why"\nuntil = 2027-01-31\n')
    assert audit.read_accepted(path) == [
        audit.Accepted(id="GHSA-a", package="aio-pika", reason="why", until=date(2027, 1, 31))
    ]
    path.write_text('[[accepted]]\nid = "GHSA-a"\npackage = "x"\nuntil = 2027-01-31\n')
    with pytest.raises(audit.AuditError, match="no reason"):
        audit.read_accepted(path)
    path.write_text('[[accepted]]\nid = "GHSA-a"\npackage = "x"\nreason = "r"\nuntil = "soon"\n')
    with pytest.raises(audit.AuditError, match="must be a date"):
        audit.read_accepted(path)


def test_the_checked_in_accept_file_reads() -> None:
    for entry in audit.read_accepted():
        assert entry.reason.strip() and entry.until >= TODAY, entry


def test_an_unreachable_service_skips_the_audit_with_one_line() -> None:
    run = subprocess.run(
        [str(ROOT / "scripts" / "audit")],
        env={"PATH": "/usr/bin:/bin", "ORDERFLOW_AUDIT_PYPI_URL": "http://127.0.0.1:9/pypi"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dependency audit skipped:") and "127.0.0.1:9" in lines[0], lines
