"""TorchServe's system-metrics collector, with the GPUs' metrics read from NVML.

TorchServe's frontend runs a collector every minute (config.properties:
`system_metrics_cmd`, run by the server's Python in TorchServe's home, its site-packages)
and exports what it prints: host CPU, memory and disk, then one line per process with
its memory. TorchServe 0.12's own collector reads the GPUs through the `nvgpu` package
(not a TorchServe dependency; it parses `nvidia-smi`'s table and pulls in pandas and
flask): without it a GPU machine logs a traceback every minute and exports no GPU
metric. This one prints the same lines, with GPUUtilization, GPUMemoryUtilization and
GPUMemoryUsed per GPU from NVML (nvidia-ml-py, the NVIDIA binding, in
requirements-serve.txt), and nothing for GPUs on a machine without an NVIDIA driver.
`scripts/setup/venv.py` installs it into the venv's site-packages as
`zoo_system_metrics.py`, where the frontend finds it.
"""

import logging
import os
import sys
from types import ModuleType

from ts.metrics import system_metrics
from ts.metrics.dimension import Dimension
from ts.metrics.metric import Metric
from ts.metrics.process_memory_metric import check_process_mem_usage

HOST_METRICS = (
    system_metrics.cpu_utilization,
    system_metrics.memory_used,
    system_metrics.memory_available,
    system_metrics.memory_utilization,
    system_metrics.disk_used,
    system_metrics.disk_utilization,
    system_metrics.disk_available,
)


def visible_gpus(count: int, visible: str | None) -> list[tuple[int, int]]:
    """(CUDA index, NVML index) of the GPUs this server's workers can use: those that
    CUDA_VISIBLE_DEVICES lists by index (in its order, as CUDA numbers them), else all."""
    if visible is None or not visible.strip():
        return [(index, index) for index in range(count)] if visible is None else []
    indices = [token.strip() for token in visible.split(",")]
    if not all(token.isdigit() for token in indices):  # UUIDs or MIG names: every GPU
        return [(index, index) for index in range(count)]
    return [(cuda, int(token)) for cuda, token in enumerate(indices) if int(token) < count]


def gpu_metrics(nvml: ModuleType, visible: str | None) -> list[Metric]:
    """The GPUs' utilisation and memory, as TorchServe's collector names them."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:  # no NVIDIA driver: a CPU machine
        return []
    metrics = []
    try:
        for cuda_index, nvml_index in visible_gpus(nvml.nvmlDeviceGetCount(), visible):
            handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            dimensions = [Dimension("Level", "Host"), Dimension("device_id", cuda_index)]
            metrics.append(Metric("GPUMemoryUtilization", 100 * memory.used / memory.total, "percent", dimensions))
            metrics.append(Metric("GPUMemoryUsed", memory.used / 2**20, "MB", dimensions))
            try:
                busy = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
            except nvml.NVMLError:  # not supported on this GPU (some MIG slices)
                continue
            metrics.append(Metric("GPUUtilization", busy, "percent", dimensions))
    finally:
        nvml.nvmlShutdown()
    return metrics


def load_nvml() -> ModuleType | None:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    return pynvml


def main() -> None:
    logging.basicConfig(stream=sys.stdout, format="%(message)s", level=logging.INFO)
    system_metrics.system_metrics.clear()
    for collect in HOST_METRICS:
        collect()
    nvml = load_nvml()
    gpus = gpu_metrics(nvml, os.environ.get("CUDA_VISIBLE_DEVICES")) if nvml else []
    for metric in system_metrics.system_metrics + gpus:
        logging.info(str(metric))
    logging.info("")  # the frontend reads host metrics up to an empty line, then process memory
    check_process_mem_usage(sys.stdin)


if __name__ == "__main__":
    main()
