"""bench.timeline as a person runs it: a few orders one at a time on a traced private installation. It asserts
that every saga's path is found hop by hop in the spans, never how long a hop took."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.timeline import PATH

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_every_hop_of_every_saga_is_found_in_the_spans(servers: None, tmp_path: Path) -> None:
    out = tmp_path / "timeline.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.timeline", "--count", "3", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    sagas = json.loads(out.read_text())["sagas"]
    assert len(sagas) == 3
    for hops in sagas:
        assert [(h["message"], h["service"]) for h in hops] == PATH
        assert all(h["handle_ms"] > 0 and h["relay_ms"] >= 0 for h in hops)
        assert all(h["broker_ms"] > 0 for h in hops[:-1]) and hops[-1]["broker_ms"] is None
    assert "shares: handle" in done.stdout
