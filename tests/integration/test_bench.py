"""The benchmark's quick mode (what CI runs): it starts our TorchServe, the built-in
handler's and the FastAPI baseline, measures each, and reports -- no speed is asserted
here (shared CI machines are noisy; docs/benchmarks.md holds the measured numbers)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.zoo import REPO
from tests.simulated_device import offline, with_machine_site

pytestmark = pytest.mark.integration


def run_quick(module: str, report: Path, timeout: float) -> tuple[str, dict]:
    """`python -m <module> --quick --json <report>` from the repo root -> (stdout, report)."""
    command = [sys.executable, "-m", module, "--quick", "--json", str(report)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(report.read_text())


def test_quick_benchmark_runs_and_reports(tmp_path):
    stdout, report = run_quick("scripts.bench.endtoend", tmp_path / "bench.json", 300)
    servers = {(p["server"], p["concurrency"]) for p in report["points"]}
    assert servers == {(s, c) for s in ("ours", "built-in", "fastapi", "litserve") for c in (1, 8)}
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in report["points"])
    assert all(p["worker_cpu_ms"] > 0 for p in report["points"])  # every server's processes were accounted
    ours = [p for p in report["points"] if p["server"] == "ours"]
    assert all(p["queue_ms"] is not None and p["stage_ms"]["forward"] > 0 for p in ours)  # TorchServe's counters
    assert all(p["frontend_cpu_ms"] > 0 for p in ours)  # TorchServe's Java frontend, apart
    assert report["ceilings"]["mobilenet_v2"]["served"] > 0
    assert "ours" in stdout and ">= 2x built-in" in stdout  # the targets are reported


def test_quick_metrics_cost_interleaves_three_servers(tmp_path):
    """The interleaved comparison of scripts/bench/metrics_cost.py, briefly: three servers at
    once, each loaded in turn while the others are paused."""
    command = [sys.executable, "-m", "scripts.bench.metrics_cost", "--cycles", "2", "--slice", "2", "--warmup", "2",
               "--output", "-", "--json", str(tmp_path / "cost.json")]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = json.loads((tmp_path / "cost.json").read_text())["rounds"]
    assert [sorted(p["variant"] for p in cycle) for cycle in rounds] == [["all_on", "metrics_only", "off"]] * 2
    assert all(p["requests"] > 0 and p["errors"] == 0 for cycle in rounds for p in cycle)
    assert "| median |" in result.stdout


def test_the_gpu_run_goes_through_a_simulated_device_on_the_cpu(tmp_path):
    """scripts/bench/gpu_device.sh as on a lent GPU machine, on the CPU: offline, TorchServe's
    scripts not beside the interpreter (pip --target's layout), no nvidia-ml-py, AOTInductor
    refused -- the model compiled afresh falls back to TorchScript; the model alone, a no-op
    TorchServe archived with the model's settings, ours (with another count of workers too)
    and LitServe are measured; then the handler in-process on the same file, with the EXIF
    check; the JSONs and the sections land under $OUT and judge the targets."""
    env = with_machine_site(offline(tmp_path), tmp_path / "machine-site")
    env.update(BATCHES="2", SECONDS_EACH="1", BUILT=str(tmp_path / "built"))
    command = ["bash", "scripts/bench/gpu_device.sh", "mobilenet_v2", "--device", "cpu", "--compiler", "aoti",
               "--quick", "--clients", "1", "2", "--seconds", "1", "--workers", "1", "2"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiling with aoti for cpu failed" in result.stderr and "TorchScript next" in result.stderr
    out = tmp_path / "out"
    (measured,) = json.loads((out / "benchmarks_gpu.json").read_text())["models"]
    assert measured["compiler"] == "torchscript" and measured["alone_img_per_s"] > 0
    assert measured["artifact"] == str(tmp_path / "built" / "mobilenet_v2.pt") and measured["workers"] == 2
    assert {(p["server"], p["concurrency"]) for p in measured["points"]} == {
        (server, clients) for server in ("no-op", "ours", "litserve") for clients in (1, 2)
    } | {("ours, workers=1", 1)}
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in measured["points"])
    assert all(p["mean_batch"] >= 1 for p in measured["points"] if p["server"].startswith("ours"))
    (row,) = json.loads((out / "handler_speed.json").read_text())["rows"]
    assert row["batch"] == 2 and row["compiler"] == "torchscript" and row["exif_orientation"] == "applied"
    section = (out / "benchmarks.md").read_text()
    assert "mobilenet_v2 (torchscript)" in section and "x LitServe:" in section
    assert "0 errors at 2 clients: 0 yes" in section and "workers per GPU at 1 clients, req/s: 1: " in section
    assert "| mobilenet_v2 | torchscript | fp32 | 2 |" in section
    assert "mobilenet_v2 torchscript fp32: applied" in section


def test_a_device_run_out_of_time_stops_with_what_it_has_and_says_why(tmp_path):
    """The call's budget is shared out before the run starts: with none left, scripts/bench/gpu.py
    is stopped at once and the in-process step, having no compiled file, says so."""
    env = {**with_machine_site(offline(tmp_path), tmp_path / "machine-site"), "BUDGET": "1"}
    command = ["bash", "scripts/bench/gpu_device.sh", "mobilenet_v2", "--device", "cpu", "--quick"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 124, result.stderr[-3000:]  # timeout's status: out of time
    assert "no compiled mobilenet_v2 to measure in-process" in result.stderr
