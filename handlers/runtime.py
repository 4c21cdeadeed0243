"""Where and how a worker runs its model: device, CPU threads, loading a compiled model."""

import json
import logging
import os
import warnings
import zipfile
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


def load_compiled_model(path: Path, device: torch.device, optimize: bool = True) -> tuple[object, dict]:
    """Load a model built by scripts/compile.py, with its embedded metadata: a TorchScript
    file (.pt), optimised for inference on CPU (oneDNN-prepacked convolutions -- the step
    that cannot be saved, so it runs here), or an AOTInductor package (.pt2)."""
    path = Path(path)
    metadata = read_embedded_metadata(path)
    if path.suffix == ".pt2":
        built_for = metadata.get("device", "cpu")
        if torch.device(built_for).type != device.type:
            raise ValueError(f"{path.name} was compiled by AOTInductor for {built_for}, not {device}: rebuild it there")
        return torch._inductor.aoti_load_package(str(path)), metadata
    with warnings.catch_warnings():  # torch 2.14 marks torch.jit deprecated
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), map_location=device)
        model.eval()
        if optimize and device.type == "cpu":
            model = torch.jit.optimize_for_inference(model)
    return model, metadata


def read_embedded_metadata(path: Path) -> dict:
    """metadata.json from a TorchScript file or an AOTInductor package (both are zips)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")), None)
            if name is None:
                raise ValueError(f"{path} has no embedded {METADATA_FILE}: it was not built by scripts/compile.py")
            return json.loads(archive.read(name))
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a compiled model (TorchScript or AOTInductor package): {err}") from err
