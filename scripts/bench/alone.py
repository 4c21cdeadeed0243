"""The compiled model alone -- the ceiling a server is measured against: a compiled file
loaded as the handler loads it, fed ready-made uint8 batches, on the share of the
machine it is served with (as many processes as workers, each with a worker's threads
and batch size, all at once).

    python -m scripts.bench.alone MODEL --seconds 5      # one of those processes (JSON on stdout)
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from handlers.observers import threads_per_worker, usable_cores
from handlers.service import load_compiled_model
from scripts.bench.harness import model_config
from scripts.zoo import REPO, get_model


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


def served_settings(model: str) -> tuple[int, int, int]:
    """(batchSize, workers, intra-op threads per worker) the archive serves with on this machine."""
    config = model_config(model)
    threads = config.get("handler", {}).get("num_threads") or threads_per_worker(usable_cores(), config["maxWorkers"])
    return config["batchSize"], config["maxWorkers"], threads


def model_throughput(
    path: Path, batches: list[int], seconds: float, device: str = "cpu", channels_last: bool = False
) -> dict[int, tuple[float, float]]:
    """{batch: (img/s, CPU ms per image of this process)} of a compiled file on ready-made
    inputs on `device` (all its threads' CPU: a thread waiting for another spends less than
    the wall time)."""
    device = torch.device(device)
    compiled, metadata = load_compiled_model(path, device)
    height, width = metadata["input_size"]
    result = {}
    for batch in batches:
        # uint8, as the handler sends
        inputs = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, device=device)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(8):  # TorchScript profiles and specialises on the first runs of a shape
                compiled(inputs)
            calls, started = 0, time.process_time()

            def run(inputs=inputs) -> None:
                nonlocal calls
                calls += 1
                compiled(inputs)

            rate = images_per_second(run, batch, device, seconds, warmup=0)
            result[batch] = (rate, 1000 * (time.process_time() - started) / (calls * batch))
    return result


def ceiling(model: str, seconds: float) -> dict:
    """The model alone on the share of the machine it is served with -> img/s at batch 1 and
    at the served batch, and CPU ms per image at the served batch."""
    batch, workers, threads = served_settings(model)
    command = [sys.executable, "-m", "scripts.bench.alone", model, "--seconds", str(seconds)]
    processes = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(workers)]
    parts = [json.loads(process.communicate()[0].strip().splitlines()[-1]) for process in processes]
    return {
        "workers": workers,
        "batch": batch,
        "threads": threads,
        "compiler": get_model(model).compiler,
        "b1": sum(part["1"][0] for part in parts),
        "served": sum(part[str(batch)][0] for part in parts),
        "cpu_ms_per_image": statistics.mean(part[str(batch)][1] for part in parts),
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--seconds", type=float, default=5)
    return parser


def main(args: argparse.Namespace) -> None:
    batch, _workers, threads = served_settings(args.model)
    torch.set_num_threads(threads)
    path = REPO / "build" / get_model(args.model).artifact
    print(json.dumps(model_throughput(path, sorted({1, batch}), args.seconds)))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
