"""The dependency audit (scripts/audit): pip-audit over every lock in requirements/*.txt.

Each lock is audited as locked (``--require-hashes --disable-pip``: the pinned versions, no resolution, nothing
installed). A finding fails the audit unless requirements/audit-accepted.toml accepts it, by its id or an
alias, for its package, with a reason, until a date. When the vulnerability service (PyPI's JSON API, what
pip-audit asks by default) cannot be asked about a pinned release, the audit is skipped with one line saying
why and exits 0: an audit that cannot look is not a pass, and is not a failure of the change under test.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
ACCEPTED_FILE = LOCKS / "audit-accepted.toml"
AUDIT_VENV = ROOT / ".venv" / "audit-venv"
#: pip-audit's default vulnerability service: one JSON document per release, with its "vulnerabilities".
PYPI_JSON = os.environ.get("ORDERFLOW_AUDIT_PYPI_URL", "https://pypi.org/pypi")
PROBE_TIMEOUT = 15.0


class AuditError(Exception):
    """The audit could not run for a reason of ours (a bad accept file, pip-audit crashing): a failure."""


class ServiceUnavailable(Exception):
    """The vulnerability service cannot answer for the locked releases: the audit is skipped, saying why."""


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]
    locks: tuple[str, ...]

    def names(self) -> set[str]:
        return {self.id, *self.aliases}


@dataclass(frozen=True)
class Accepted:
    id: str
    package: str
    reason: str
    until: date


def canonical(name: str) -> str:
    """PEP 503's normalized name, as pip-audit reports it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_accepted(path: Path = ACCEPTED_FILE) -> list[Accepted]:
    """The accepted findings: each needs id, package, a reason and an ``until`` date (TOML date)."""
    if not path.exists():
        return []
    try:
        entries = tomllib.loads(path.read_text()).get("accepted", [])
    except tomllib.TOMLDecodeError as exc:
        raise AuditError(f"{path.name}: {exc}") from exc
    accepted = []
    for number, entry in enumerate(entries, 1):
        missing = [key for key in ("id", "package", "reason", "until") if not entry.get(key)]
        if missing:
            raise AuditError(f"{path.name}: accepted finding {number} has no {', '.join(missing)}")
        if not isinstance(entry["until"], date):
            raise AuditError(f"{path.name}: accepted finding {number}: until must be a date, e.g. 2027-01-31")
        accepted.append(
            Accepted(
                id=str(entry["id"]),
                package=canonical(str(entry["package"])),
                reason=str(entry["reason"]),
                until=entry["until"],
            )
        )
    return accepted


def pinned_release(lock: Path, name: str) -> tuple[str, str]:
    """``name``'s pinned version in a lock: a release the service must know."""
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match and canonical(match.group(1)) == canonical(name):
            return match.group(1), match.group(2)
    raise AuditError(f"{lock}: {name} is not pinned")


def probe(name: str, version: str, base: str = PYPI_JSON) -> None:
    """Ask the service about one locked release, as pip-audit will; raise ServiceUnavailable if it cannot say."""
    url = f"{base.rstrip('/')}/{name}/{version}/json"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:
            document = json.load(response)
    except urllib.error.HTTPError as exc:
        raise ServiceUnavailable(f"{url} answered HTTP {exc.code} for a release that exists") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceUnavailable(f"{url} cannot be reached ({reason})") from exc
    except ValueError as exc:
        raise ServiceUnavailable(f"{url} did not answer JSON") from exc
    if not isinstance(document, dict) or "vulnerabilities" not in document:
        raise ServiceUnavailable(f"{url} answered without vulnerability data")


def findings_of(reports: dict[str, dict]) -> tuple[list[Finding], dict[str, str]]:
    """Findings across the locks' pip-audit JSON reports (one per package, version and id), and the packages the
    service could not audit with why. Raises ServiceUnavailable when it could audit none at all."""
    merged: dict[tuple[str, str, str], Finding] = {}
    skipped: dict[str, str] = {}
    audited = 0
    for lock, report in sorted(reports.items()):
        for dependency in report.get("dependencies", []):
            if dependency.get("skip_reason"):
                skipped[dependency["name"]] = dependency["skip_reason"]
                continue
            audited += 1
            for vuln in dependency.get("vulns", []):
                key = (dependency["name"], dependency["version"], vuln["id"])
                known = merged.get(key)
                merged[key] = Finding(
                    package=dependency["name"],
                    version=dependency["version"],
                    id=vuln["id"],
                    aliases=tuple(vuln.get("aliases", ())),
                    fix_versions=tuple(vuln.get("fix_versions", ())),
                    locks=(*(known.locks if known else ()), lock),
                )
    if skipped and not audited:
        example = next(iter(skipped.values()))
        raise ServiceUnavailable(f"the service knows none of the {len(skipped)} locked packages ({example})")
    return list(merged.values()), skipped


def judge(
    findings: list[Finding], accepted: list[Accepted], today: date
) -> tuple[list[tuple[Finding, Accepted]], list[tuple[Finding, Accepted | None]], list[Accepted]]:
    """(findings accepted now, with their entry; findings that fail the audit, with an expired entry if one
    named them; entries that name no finding at all)."""
    passed: list[tuple[Finding, Accepted]] = []
    failing: list[tuple[Finding, Accepted | None]] = []
    matched: set[Accepted] = set()
    for finding in findings:
        entry = next((a for a in accepted if a.package == canonical(finding.package) and a.id in finding.names()), None)
        if entry is not None:
            matched.add(entry)
        if entry is not None and entry.until >= today:
            passed.append((finding, entry))
        else:
            failing.append((finding, entry))
    return passed, failing, [a for a in accepted if a not in matched]


def ensure_pip_audit() -> Path:
    """pip-audit from requirements/audit.txt (hashes) in a virtualenv of its own, made again when the lock
    changed: its dependencies are not the project's."""
    pip_audit = AUDIT_VENV / "bin" / "pip-audit"
    lock = LOCKS / "audit.txt"
    if not pip_audit.exists() or lock.stat().st_mtime > pip_audit.stat().st_mtime:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(AUDIT_VENV)], check=True)
        install = subprocess.run(
            [str(AUDIT_VENV / "bin" / "pip"), "install", "--quiet", "--require-hashes", "-r", str(lock)],
            capture_output=True,
            text=True,
        )
        if install.returncode != 0:
            tail = " | ".join(install.stderr.strip().splitlines()[-3:])
            raise AuditError(f"pip-audit could not be installed from {lock.name}: {tail}")
        pip_audit.touch()
    return pip_audit


def audit_lock(pip_audit: Path, lock: Path) -> dict:
    """pip-audit's JSON report of one lock (exit 1 only means it found something)."""
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "report.json"
        run = subprocess.run(
            [str(pip_audit), "-r", str(lock), "--require-hashes", "--disable-pip", "--progress-spinner", "off"]
            + ["--aliases", "on", "--desc", "off", "-f", "json", "-o", str(output)],
            capture_output=True,
            text=True,
        )
        if output.exists() and output.stat().st_size:
            return json.loads(output.read_text())
    tail = " | ".join(run.stderr.strip().splitlines()[-3:])
    if re.search(r"ConnectionError|ServiceError|timed out|Max retries|Name or service not known", run.stderr):
        raise ServiceUnavailable(f"pip-audit could not reach the service while auditing {lock.name}: {tail}")
    raise AuditError(f"pip-audit failed on {lock.name} (exit {run.returncode}): {tail}")


def main() -> int:
    locks = sorted(LOCKS.glob("*.txt"))
    try:
        accepted = read_accepted()
        probe(*pinned_release(LOCKS / "audit.txt", "pip-audit"))
        pip_audit = ensure_pip_audit()
        findings, skipped = findings_of({lock.name: audit_lock(pip_audit, lock) for lock in locks})
    except ServiceUnavailable as exc:
        print(f"dependency audit skipped: the vulnerability service cannot be asked: {exc}")
        return 0
    except AuditError as exc:
        print(f"dependency audit failed: {exc}", file=sys.stderr)
        return 1
    passed, failing, unused = judge(findings, accepted, date.today())
    for name, why in sorted(skipped.items()):
        print(f"audit: not audited: {name}: {why}")
    for finding, entry in passed:
        print(f"audit: accepted until {entry.until}: {finding.package} {finding.version} {finding.id}: {entry.reason}")
    for entry in unused:
        print(f"audit: {ACCEPTED_FILE.name} accepts {entry.id} ({entry.package}) but no lock has it: remove it")
    for finding, expired in failing:
        fix = ", ".join(finding.fix_versions) or "none yet"
        note = f"; its acceptance ended {expired.until}" if expired else ""
        print(
            f"audit: FINDING {finding.package} {finding.version} {finding.id} "
            f"({', '.join(finding.aliases) or 'no aliases'}); fixed in {fix}; in {', '.join(finding.locks)}{note}",
            file=sys.stderr,
        )
    print(
        f"dependency audit: {len(locks)} locks, {len(findings)} finding(s), {len(passed)} accepted, "
        f"{len(failing)} failing"
    )
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
