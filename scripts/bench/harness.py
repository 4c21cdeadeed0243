"""The harness every benchmark composes: a server to load (our archives in a TorchServe of
their own, TorchServe's defaults, or a peer server), one measured point of closed-loop
load on it (scripts/bench/loadgen.py) with the CPU time its processes spent, and the
counters TorchServe and our handler export; servers paused while another is measured.

CPU time comes from psutil, per process tree: on a shared machine throughput drifts
15-20 % from minute to minute, CPU seconds per request far less.
"""

import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
import ts

from handlers.observers import BATCH_IMAGES, REGISTRY_ENV, STAGE_SECONDS
from scripts.bench.loadgen import Request, closed_loop, multipart, percentile
from scripts.bench.nvml import GpuSampler
from scripts.building import profiles
from scripts.child_process import running
from scripts.samples.photos import encode, photo
from scripts.serve.server import LOG_CONFIG, free_ports, local_torchserve
from scripts.zoo import REPO, get_model

# TorchServe's own defaults for what our config.properties tunes, and its own logging.
TORCHSERVE_DEFAULTS = {
    "metrics_mode": "log",
    "metrics_config": str(Path(ts.__file__).parent / "configs" / "metrics.yaml"),
}
# TorchServe's cumulative latency counters per model (metrics_mode=prometheus), microseconds.
QUEUE, INFERENCE = "ts_queue_latency_microseconds", "ts_inference_latency_microseconds"
# The Java frontend compiles its hottest paths in its first seconds of load: not measured.
WARMUP_S = 10.0


@dataclass(frozen=True)
class Target:
    """A server while it runs: where to send, how, and the root of its processes."""

    server: str  # "ours", "built-in", "fastapi", "litserve", or a variant's label
    url: str
    pid: int
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/octet-stream"})
    method: str = "PUT"
    metrics: str | None = None  # TorchServe's metrics address (Prometheus), for its counters
    manage: Callable[..., requests.Response] | None = None  # TorchServe's management API (Server.manage)


@dataclass
class Point:
    server: str
    model: str
    concurrency: int
    requests: int
    req_per_s: float  # answered with a 200: errors are counted apart, never as throughput
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    mean_ms: float
    image: str = "small"
    frontend_cpu_ms: float = 0.0  # CPU ms per request of TorchServe's Java frontend
    worker_cpu_ms: float = 0.0  # ... of the rest of the server's processes (a peer: all of them)
    queue_ms: float | None = None  # TorchServe: mean wait in its job queue
    inference_ms: float | None = None  # TorchServe: mean time from its queue to the worker's answer
    mean_batch: float | None = None  # ours: images per forward pass
    gpu_busy: float | None = None  # % of the time the GPU ran a kernel (NVML), where there is one
    stage_ms: dict[str, float] | None = None  # ours: ms per request in each stage of the handler


def images() -> dict[str, bytes]:
    """small: skimage's cat, 451x300; large: its retina photo, 1411x1411 (2 MP)."""
    return {"small": encode(photo("chelsea"), "JPEG", quality=90), "large": encode(photo("retina"), "JPEG", quality=90)}


def model_config(model: str, profile: str = "cpu") -> dict:
    return profiles.model_config(get_model(model), profile)


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of process `pid` and its descendants: {"frontend": the Java
    processes' (TorchServe's frontend), "workers": the others'}."""
    totals = {"frontend": 0.0, "workers": 0.0}
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times, name = process.cpu_times(), process.name()
        except psutil.NoSuchProcess:  # ended meanwhile
            continue
        totals["frontend" if name == "java" else "workers"] += times.user + times.system
    return totals


@contextmanager
def paused(*pids: int) -> Iterator[None]:
    """These processes and their descendants stopped (SIGSTOP) meanwhile, then continued:
    an idle server (LitServe's processes poll their queues, half a core) takes no CPU from
    the one measured beside it. Waits until each has stopped: the signal takes effect at a
    process's next entry into the kernel."""
    processes = [p for pid in pids for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]]
    for process in processes:
        process.suspend()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive_and_running(p) for p in processes):
        time.sleep(0.001)
    try:
        yield
    finally:
        for process in processes:
            try:
                process.resume()
            except psutil.NoSuchProcess:
                pass


def alive_and_running(process: psutil.Process) -> bool:
    try:
        return process.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def torchserve_counters(metrics_url: str | None, model: str) -> dict[str, float]:
    """TorchServe's cumulative queue and inference latency (microseconds) for `model`, and our
    handler's seconds per stage (handlers/observers.py's STAGE_SECONDS, keyed by the stage)."""
    if metrics_url is None:
        return {}
    text = requests.get(f"{metrics_url}/metrics", timeout=10).text
    counters = {}
    for name in (QUEUE, INFERENCE):
        match = re.search(rf'^{name}{{model_name="{model}".*}} (\S+)$', text, re.M)
        counters[name] = float(match.group(1)) if match else 0.0
    for labels, value in re.findall(rf"^{STAGE_SECONDS}_sum{{(.*)}} (\S+)$", text, re.M):
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if label.get("ModelName") == model:
            counters[label["stage"]] = counters.get(label["stage"], 0.0) + float(value)
    for suffix in ("sum", "count"):  # images, forward passes
        for labels, value in re.findall(rf"^{BATCH_IMAGES}_{suffix}{{(.*)}} (\S+)$", text, re.M):
            if dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("ModelName") == model:
                counters[f"ts_batch_{suffix}"] = counters.get(f"ts_batch_{suffix}", 0.0) + float(value)
    return counters


def measure(
    target: Target, model: str, body: bytes, clients: int, seconds: float, warmup: float = 3.0, image: str = "small"
) -> Point:
    """One point: `clients` closed-loop clients for `seconds` after `warmup` s of the same
    load, with the server's CPU per request and, from a TorchServe, its queue and inference
    times and our handler's stages per request."""
    mix = [Request(model, image, body, target.headers, target.method)]
    closed_loop(target.url, {}, mix, clients, min(warmup, seconds))
    counters, cpu = torchserve_counters(target.metrics, model), cpu_seconds(target.pid)
    with GpuSampler() as gpu:
        outcomes = closed_loop(target.url, {}, mix, clients, seconds, 1_000_000)
    elapsed = max(o.started + o.latency for o in outcomes) - min(o.started for o in outcomes)
    latencies, count = sorted(o.latency * 1000 for o in outcomes), len(outcomes)
    p50, p90, p99 = (percentile(latencies, q) for q in (50, 90, 99))
    errors = sum(o.status != 200 for o in outcomes)  # not throughput: a broken server answers errors fast
    served = (count - errors) / elapsed
    point = Point(target.server, model, clients, count, served, p50, p90, p99, errors, sum(latencies) / count)
    point.image, point.gpu_busy = image, gpu.busy
    spent = cpu_seconds(target.pid)
    point.frontend_cpu_ms, point.worker_cpu_ms = ((spent[k] - cpu[k]) * 1000 / count for k in ("frontend", "workers"))
    if target.metrics:
        after = torchserve_counters(target.metrics, model)
        point.queue_ms, point.inference_ms = ((after[k] - counters[k]) / 1000 / count for k in (QUEUE, INFERENCE))
        point.stage_ms = {k: (v - counters.get(k, 0.0)) * 1000 / count for k, v in after.items() if k[:3] != "ts_"}
        images, passes = (after.get(k, 0.0) - counters.get(k, 0.0) for k in ("ts_batch_sum", "ts_batch_count"))
        point.mean_batch = images / passes if passes else None
    print(f"  {point}", file=sys.stderr, flush=True)
    return point


@contextmanager
def torchserve(
    store: Path, names: list[str], server: str = "ours", defaults: bool = False, registry: Path | None = None
) -> Iterator[Target]:
    """A TorchServe of its own serving `names` from `store` -> its Target. `defaults`:
    TorchServe's own settings and logging (the built-in handler's baseline). `registry`:
    a worker registry of its own, so that its idle workers never count as busy in another
    server's thread budget (handlers/observers.py)."""
    overrides, log_config = (TORCHSERVE_DEFAULTS, None) if defaults else (None, LOG_CONFIG)
    env = {REGISTRY_ENV: str(registry)} if registry else None
    with local_torchserve(store, names, overrides=overrides, log_config=log_config, env=env) as running:
        yield Target(
            server,
            running.inference,
            running.process.pid,
            running.keys.header("inference"),
            metrics=running.metrics,
            manage=running.manage,
        )


def scale(target: Target, model: str, workers: int) -> None:
    """`model`'s workers on a TorchServe Target set to `workers` through the management API;
    returns once they are ready (each has loaded and warmed up its model)."""
    params = {"min_worker": workers, "max_worker": workers, "synchronous": "true"}
    response = target.manage("PUT", f"/models/{model}", params=params)
    if not response.ok:
        raise RuntimeError(f"scaling {model} to {workers} workers: HTTP {response.status_code} {response.text[:300]}")


@contextmanager
def peer(
    server: str,
    command: list[str],
    port: int,
    ready_path: str,
    timeout: float,
    method: str = "PUT",
    headers: dict[str, str] | None = None,
) -> Iterator[Target]:
    """A peer server started as `command` -> its Target once `ready_path` answers 2xx; a
    peer that exits first (a failed import) is reported at once, with its log."""
    url, log = f"http://127.0.0.1:{port}", Path(tempfile.gettempdir()) / f"zoo-bench-{server}-{port}.log"
    ready = lambda: requests.get(f"{url}{ready_path}", timeout=2).ok  # noqa: E731
    with running(command, ready, timeout, f"the {server} server", REPO, log=log) as process:
        yield Target(server, url, process.pid, headers or {}, method)


# The multipart boundary of the photo sent to LitServe (which takes a file as a form only).
LITSERVE_BOUNDARY = "zoo-bench-photo"


def litserve(model: str, max_batch_size: int, batch_timeout: float, workers: int, threads: int = 0,
             device: str = "cpu", artifact: Path | None = None):  # fmt: skip
    """scripts/bench/litserve_app.py serving `model`'s compiled file (build/'s, or `artifact`)
    on `device` with these batching settings, `workers` inference processes of `threads`
    CPU threads (0: the cores shared out) -> a `peer` Target taking the photo as a form."""
    (port,) = free_ports(1)
    command = [sys.executable, "-m", "scripts.bench.litserve_app", "--model", model, "--port", str(port),
               "--device", device, "--workers", str(workers), "--threads", str(threads),
               "--max-batch-size", str(max_batch_size), "--batch-timeout", str(batch_timeout)]  # fmt: skip
    command += ["--artifact", str(artifact)] if artifact else []
    headers, _form = multipart(b"", name="image", boundary=LITSERVE_BOUNDARY)
    return peer("litserve", command, port, "/health", timeout=300, method="POST", headers=headers)


def as_form(target: Target, body: bytes) -> bytes:
    """The photo as `target` takes it: LitServe's as a multipart form, the others' raw."""
    return multipart(body, name="image", boundary=LITSERVE_BOUNDARY)[1] if target.server == "litserve" else body
