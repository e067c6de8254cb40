"""Every workflow definition in the repository is standard ASL: asl-validator (npm, tools/asl) and statelint
(PyPI) accept it unchanged, with their default checks (ARNs, floats, unique state names, paths)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ASL_VALIDATOR = ROOT / "tools" / "asl" / "node_modules" / ".bin" / "asl-validator"
_SKIP_DIRS = {".venv", "node_modules", ".git", "var", "build"}


def definitions() -> list[Path]:
    """Every JSON file holding a state machine (StartAt and States at the top), sidecars and maps excluded, and
    ``*.engine.json`` (a definition in the engine's form, as a version is stored: not ASL)."""
    found = []
    for path in sorted(ROOT.rglob("*.json")):
        if _SKIP_DIRS & set(path.relative_to(ROOT).parts) or path.name.endswith(".engine.json"):
            continue
        try:
            document = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(document, dict) and "StartAt" in document and "States" in document:
            found.append(path)
    return found


DEFINITIONS = definitions()


def test_the_order_workflow_is_among_the_definitions_checked() -> None:
    assert ROOT / "orchestrator" / "workflow.json" in DEFINITIONS


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_statelint_accepts(path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "statelint", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"statelint rejects {path}:\n{run.stdout}{run.stderr}"


def test_asl_validator_accepts_every_definition() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: asl-validator (tools/asl) cannot run; apt-get install nodejs npm")
    if not ASL_VALIDATOR.exists():
        pytest.fail("tools/asl/node_modules is missing: run scripts/bootstrap (npm ci in tools/asl)")
    command = [str(ASL_VALIDATOR)]
    for path in DEFINITIONS:
        command += ["--json-path", str(path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"asl-validator rejects:\n{run.stdout}{run.stderr}"
