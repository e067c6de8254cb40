"""bench.compare as a person runs it: two revisions (HEAD and this checkout) side by side, a few orders each.
It asserts that both runs completed and were reported, never a speed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_two_revisions_run_side_by_side_and_are_compared(servers: None, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    argv = ["HEAD", ".", "--pairs", "1", "--in-flight", "2", "--count", "12", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.compare", *argv], cwd=REPO, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    runs = json.loads(out.read_text())["runs"]
    assert sorted(run["revision"] for run in runs) == [".", "HEAD"]
    for run in runs:
        assert run["exit_code"] == 0 and run["round"] == 1
        assert run["sagas_per_second"] > 0 and run["cpu_ms_per_saga"] > 0 and run["p50_seconds"] > 0
    assert "CPU per saga, . against HEAD:" in done.stdout
    worktrees = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert "orderflow-compare-" not in worktrees, worktrees
