"""The system-metrics collector TorchServe runs (scripts/serve/system_metrics.py): the
lines it prints in the frontend's format, GPUs from NVML (a fake one here), none without."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from scripts.serve import system_metrics
from scripts.setup.venv import COLLECTOR_NAME
from scripts.zoo import REPO
from tests.fakes.nvml import fake_pynvml as fake_nvml

FAKE_NVML = Path(fake_nvml.__file__).parent
# What TorchServe's frontend parses (org.pytorch.serve.metrics.Metric.parse).
LINE = re.compile(r"^(\w+)\.(\w+):([0-9.]+)\|#([^|]*)\|#hostname:([^,]+),(\d+)$")


@pytest.mark.parametrize(
    "visible, expected",
    [(None, [(0, 0), (1, 1)]), ("1", [(0, 1)]), ("1,0", [(0, 1), (1, 0)]), ("", []), ("7", []),
     ("GPU-3f2a", [(0, 0), (1, 1)])],
)  # fmt: skip
def test_the_gpus_counted_are_the_workers_own(visible, expected):
    assert system_metrics.visible_gpus(2, visible) == expected


def test_each_gpu_gets_utilisation_and_memory_in_the_frontend_format():
    lines = [str(metric) for metric in system_metrics.gpu_metrics(fake_nvml, "1")]
    parsed = [LINE.match(line).groups()[:4] for line in lines]
    assert parsed == [
        ("GPUMemoryUtilization", "Percent", "25.0", "Level:Host,device_id:0"),
        ("GPUMemoryUsed", "Megabytes", "2048.0", "Level:Host,device_id:0"),
        ("GPUUtilization", "Percent", "38", "Level:Host,device_id:0"),
    ]


def test_no_driver_means_no_gpu_metrics_and_no_error():
    class Missing(Exception):
        pass

    def refuse():
        raise Missing("NVML Shared Library Not Found")

    assert system_metrics.gpu_metrics(SimpleNamespace(NVMLError=Missing, nvmlInit=refuse), None) == []


@pytest.mark.parametrize("nvml", [False, True])
def test_the_collector_prints_host_metrics_a_blank_line_then_each_process_memory(nvml):
    """Run as the frontend runs it: by the venv's Python, with worker pids on stdin."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE_NVML)] * nvml + [str(REPO)])}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    script = REPO / "scripts" / "serve" / "system_metrics.py"
    done = subprocess.run(
        [sys.executable, str(script)], input=f"{os.getpid()}\n", env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == ""
    host, processes = done.stdout.split("\n\n")
    names = [LINE.match(line).group(1) for line in host.splitlines()]
    assert names[:3] == ["CPUUtilization", "MemoryUsed", "MemoryAvailable"]
    assert names.count("GPUUtilization") == (2 if nvml else 0)
    pid, memory = processes.strip().split(":")
    assert int(pid) == os.getpid() and int(memory) > 0


def test_config_properties_runs_the_collector_the_set_up_installs():
    properties = (REPO / "config.properties").read_text()
    assert f"\nsystem_metrics_cmd={COLLECTOR_NAME}\n" in properties
