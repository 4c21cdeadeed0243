"""Where and how a worker runs its model: device, CPU threads, loading a compiled model."""

import json
import logging
import os
import warnings
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Name of the JSON document scripts/compile.py embeds in every TorchScript file.
METADATA_FILE = "metadata.json"


def select_device(gpu_id: int | None) -> torch.device:
    """The device TorchServe assigned to this worker (`gpu_id`), else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device("cuda", int(gpu_id))
    return torch.device("cpu")


def usable_cores() -> int:
    """CPU cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(cores: int, workers: int) -> int:
    """Intra-op threads so that `workers` busy workers never oversubscribe `cores`."""
    return max(1, cores // max(1, workers))


def configure_threads(requested: int, workers: int) -> int:
    """Set torch's CPU thread pool for this worker and return its size.

    TorchServe leaves torch's default (one thread per core) in every worker, so N
    workers on N cores run N*N threads and throughput collapses. An explicit
    `num_threads` setting wins, then an operator's OMP_NUM_THREADS, then cores/workers.
    """
    if requested:
        threads = requested
    elif os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    else:
        threads = threads_per_worker(usable_cores(), workers)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)  # a worker runs one forward pass at a time
    except RuntimeError:  # already set, or parallel work already ran in this process
        pass
    return threads


def load_compiled_model(path: Path, device: torch.device) -> tuple[torch.jit.ScriptModule, dict]:
    """Load a TorchScript file built by scripts/compile.py, with its embedded metadata."""
    extra_files = {METADATA_FILE: ""}
    with warnings.catch_warnings():  # torch 2.14 marks torch.jit.load deprecated
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), map_location=device, _extra_files=extra_files)
    if not extra_files[METADATA_FILE]:
        raise ValueError(f"{path} has no embedded {METADATA_FILE}: it was not built by scripts/compile.py")
    model.eval()
    return model, json.loads(extra_files[METADATA_FILE])
