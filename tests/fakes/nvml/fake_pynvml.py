"""A stand-in for NVML (nvidia-ml-py's `pynvml`) on a machine without a GPU: two GPUs,
GPU i busy 37 + i percent with (i + 1) GiB of 8 GiB used. With this directory on
PYTHONPATH, sitecustomize.py puts it in the place of `pynvml`."""

from types import SimpleNamespace

GIB = 2**30


class NVMLError(Exception):
    pass


def nvmlInit() -> None:
    pass


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return 2


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    return index


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    return SimpleNamespace(used=(handle + 1) * GIB, total=8 * GIB, free=(7 - handle) * GIB)


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=37 + handle, memory=0)
