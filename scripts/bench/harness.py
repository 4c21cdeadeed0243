"""The timing loop of the handler benchmarks (handlers run in-process by
scripts/build/inprocess.py)."""

import time
from collections.abc import Callable

import torch


def synchronized(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(
    function: Callable[[], object], batch: int, device: torch.device, seconds: float, warmup: int = 3
) -> float:
    """img/s of `function` (one batch per call) over at least `seconds` and 3 calls, after `warmup` calls."""
    for _ in range(warmup):
        function()
    synchronized(device)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or runs < 3:
        function()
        runs += 1
    synchronized(device)
    return runs * batch / (time.perf_counter() - started)
