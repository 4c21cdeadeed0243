"""The benchmark's quick mode (what CI runs): it starts our TorchServe, the built-in
handler's and the FastAPI baseline, measures each, and reports -- no speed is asserted
here (shared CI machines are noisy; docs/benchmarks.md holds the measured numbers)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.zoo import REPO

pytestmark = pytest.mark.integration


def run_quick(module: str, report: Path, timeout: float) -> tuple[str, dict]:
    """`python -m <module> --quick --json <report>` from the repo root -> (stdout, report)."""
    command = [sys.executable, "-m", module, "--quick", "--json", str(report)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(report.read_text())


def test_quick_benchmark_runs_and_reports(tmp_path):
    stdout, report = run_quick("scripts.bench.endtoend", tmp_path / "bench.json", 420)
    servers = {(p["server"], p["concurrency"]) for p in report["points"]}
    assert servers == {(s, c) for s in ("ours", "built-in", "fastapi", "litserve") for c in (1, 8)}
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in report["points"])
    peer = [p for p in report["points"] if p["server"] in ("litserve", "fastapi")]  # their counters were read
    assert all(p["stage_ms"]["decode"] > 0 and p["stage_ms"]["forward"] > 0 for p in peer)
    assert report["ceilings"]["mobilenet_v2"]["served"] > 0
    assert "ours" in stdout and ">= 2x built-in" in stdout  # the targets are reported


def test_quick_scaling_benchmark_scales_through_the_management_api(tmp_path):
    """The side-by-side machinery of scripts/bench/scaling.py and metrics_cost.py, briefly."""
    stdout, report = run_quick("scripts.bench.scaling", tmp_path / "scaling.json", 600)
    (points,) = report["rounds"]
    assert {(p["variant"], p["workers"]) for p in points} == {(v, n) for v in ("fixed", "live") for n in (1, 2)}
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in points)
    assert "| median | 2 |" in stdout
