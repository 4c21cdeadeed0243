"""End-to-end benchmark: our archives served by TorchServe against the compiled model
alone (the ceiling), TorchServe's built-in image_classifier handler under default
settings, and a naive single-process FastAPI app -- in one run, on one machine, with
the same real-photo JPEGs. Writes docs/benchmarks.md, docs/benchmarks.png and the
raw numbers in docs/benchmarks.json.

    python -m scripts.bench.endtoend            # make bench: the full run for the doc (~20 min on 2 cores)
    python -m scripts.bench.endtoend --quick    # CI: mobilenet_v2 only, short points (< 2 min)
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import requests
import torch
import ts
import yaml

from scripts.bench.cpu import session_cpu
from scripts.bench.harness import images_per_second
from scripts.bench.loadgen import closed_loop_raw, multipart, percentile
from scripts.bench.photos import encode, photo
from scripts.bench.stage_counters import STAGES_ENV, read_stage_counters
from scripts.build.archive import ARCHIVE_VERSION
from scripts.build.inprocess import load_handler
from scripts.serve.server import LOG_CONFIG, free_ports, local_torchserve
from scripts.zoo import COMPILERS, MODELS, REPO, get_model, handler_module

CONCURRENCY = (1, 8, 32)
CLASSIFIERS = ("mobilenet_v2", "resnet18")
OTHERS = ("yolov5s", "face_pixelizer")
HANDLER_BENCH = ("resnet50", "yolov5s", "face_pixelizer")  # the GPU measurement's models
# TorchServe's own defaults for what our config.properties tunes (its docs/configuration.md).
TORCHSERVE_DEFAULTS = {  # and its own logging configuration (log_config=None)
    "metrics_mode": "log",
    "metrics_config": str(Path(ts.__file__).parent / "configs" / "metrics.yaml"),
}
# TorchServe's cumulative Prometheus counters (metrics_mode=prometheus), per model.
COUNTERS = ("ts_queue_latency_microseconds", "ts_inference_latency_microseconds")
CPU = torch.device("cpu")
# LitServe's batching, (max_batch_size, batch_timeout s), tried at 8 clients; the best is measured.
LITSERVE_SETTINGS = ((1, 0.0), (4, 0.002), (4, 0.005), (8, 0.005), (8, 0.01), (16, 0.01))


@dataclass
class Point:
    server: str  # "ours", "built-in" or "fastapi"
    model: str
    image: str  # "small" or "large"
    concurrency: int
    requests: int
    req_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    mean_ms: float | None = None
    log_bytes_per_request: float | None = None
    queue_ms: float | None = None  # TorchServe: mean wait in its job queue
    inference_ms: float | None = None  # TorchServe: mean time from its queue to the worker's answer
    frontend_cpu_ms: float | None = None  # TorchServe: CPU ms per request of its Java frontend
    worker_cpu_ms: float | None = None  # ... and of its workers (scripts/bench/cpu.py); a peer: all of its processes
    client_cpu_ms: float | None = None  # ... and of the load generator itself (on the same cores)
    stage_ms: dict[str, float] | None = None  # ours: ms per request in each stage of the handler (its metrics)


def images() -> dict[str, bytes]:
    """small: skimage's cat, 451x300; large: its retina photo, 1411x1411 (2 MP)."""
    from PIL import Image
    from skimage import data as photos

    return {
        "small": encode(photo("chelsea"), "JPEG", quality=90),
        "large": encode(Image.fromarray(photos.retina()), "JPEG", quality=90),
    }


# --- the ceiling: the compiled model alone ----------------------------------------------


def served_settings(model: str) -> tuple[int, int]:
    """(batchSize, intra-op threads) the archive serves with."""
    cpu_threads = handler_module("cpu_threads")  # importable whoever calls: not only endtoend's main
    config = yaml.safe_load(get_model(model).config_file.read_text())
    handler_threads = config.get("handler", {}).get("num_threads")
    return config["batchSize"], handler_threads or cpu_threads.threads_per_worker(
        cpu_threads.usable_cores(), config["maxWorkers"]
    )


def model_throughput(path: Path, batches: list[int], seconds: float) -> tuple[dict[int, float], dict[int, float]]:
    """img/s of a compiled file, loaded as the handler loads it, on ready-made inputs, and the
    CPU time this process spent per image (ms), by batch size (all its threads: a thread
    waiting for another at a layer's end spends less than the wall time)."""
    from compiled_model import load_compiled_model

    compiled, metadata = load_compiled_model(path, torch.device("cpu"))
    height, width = metadata["input_size"]
    result, cpu_ms = {}, {}
    for batch in batches:
        inputs = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8)  # as the handler sends
        with torch.inference_mode():
            for _ in range(8):  # TorchScript profiles and specialises on the first runs of a shape
                compiled(inputs)
            result[batch], cpu_ms[batch] = rate_and_cpu(partial(compiled, inputs), batch, seconds)
    return result, cpu_ms


def rate_and_cpu(function: Callable[[], object], batch: int, seconds: float) -> tuple[float, float]:
    """(img/s, CPU ms per image of this process) of `function`, one batch per call, warmed up."""
    calls = 0

    def counted() -> None:
        nonlocal calls
        calls += 1
        function()

    started = time.process_time()
    rate = images_per_second(counted, batch, CPU, seconds, warmup=0)
    return rate, 1000 * (time.process_time() - started) / (calls * batch)


def ceiling(model: str, seconds: float) -> dict:
    """The compiled model alone on the share of the machine it is served with: as many
    processes as workers, each with the worker's threads and batch size, all at once."""
    spec = get_model(model)
    batch, threads = served_settings(model)
    workers = yaml.safe_load(spec.config_file.read_text())["maxWorkers"]
    torch.set_num_threads(threads)
    if workers == 1:
        throughput, cpu_ms = model_throughput(REPO / "build" / spec.artifact, sorted({1, batch}), seconds)
    else:
        command = [sys.executable, "-m", "scripts.bench.endtoend", "--model-alone", model, "--duration", str(seconds)]
        processes = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(workers)]
        parts = [json.loads(process.communicate()[0].strip().splitlines()[-1]) for process in processes]
        throughput = {int(b): sum(part["img_per_s"][b] for part in parts) for b in parts[0]["img_per_s"]}
        cpu_ms = {int(b): statistics.mean(part["cpu_ms"][b] for part in parts) for b in parts[0]["cpu_ms"]}
    return {
        "workers": workers,
        "batch": batch,
        "threads": threads,
        "compiler": spec.compiler,
        "b1": throughput[1],
        "served": throughput[batch],
        "cpu_ms_per_image": cpu_ms[batch],  # at the served batch, measured (not threads x wall)
    }


def compile_targets(models: list[str], seconds: float, workdir: Path) -> dict[str, dict]:
    """Both compile targets of each model side by side (the reason for the table's choice)."""
    results = {}
    for model in models:
        spec = get_model(model)
        batch, threads = served_settings(model)
        torch.set_num_threads(threads)
        batches = sorted({1, 2, 4, 8} if spec.family == "classifier" else {1, 2, 4})
        results[model] = {"chosen": spec.compiler}
        for compiler, suffix in COMPILERS.items():
            path = REPO / "build" / spec.artifact
            if compiler != spec.compiler:
                path = workdir / f"{model}{suffix}"
                command = [sys.executable, "-m", "scripts.build.compile", model, "--output", str(path), "--no-download"]
                subprocess.run(command, cwd=REPO, check=True, capture_output=True)
            results[model][compiler] = model_throughput(path, batches, seconds)[0]
        print(f"{model}: {results[model]}", file=sys.stderr, flush=True)
    return results


# --- servers ------------------------------------------------------------------------


class LogitsOnly(torch.nn.Module):
    """A compiled classifier without its drift features: the one logits tensor that
    TorchServe's built-in handler expects."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def builtin_store(store: Path, models: list[str]) -> list[str]:
    """The same compiled TorchScript files archived with TorchServe's image_classifier
    handler and no model config: TorchServe's defaults for everything."""
    names = []
    for model in models:
        name = f"{model}_builtin"
        logits_only = store / f"{name}.pt"
        compiled = torch.jit.load(str(REPO / "build" / f"{model}.pt"), map_location="cpu")
        torch.jit.save(torch.jit.script(LogitsOnly(compiled)), str(logits_only))
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name", name, "--version", ARCHIVE_VERSION,
            "--serialized-file", str(logits_only),
            "--handler", "image_classifier",
            "--extra-files", str(REPO / "index_to_name.json"),
            "--export-path", str(store), "--force",
        ]  # fmt: skip
        subprocess.run(command, check=True)
        names.append(name)
    return names


@dataclass(frozen=True)
class Peer:
    """A peer server (FastAPI, LitServe) while it runs: its address, and the session of its
    processes (for their CPU time, scripts/bench/cpu.py)."""

    url: str
    session: int
    stages: Path | None = None  # its processes' stage counters (scripts/bench/stage_counters.py)


@contextmanager
def peer_server(command: list[str], port: int, ready_path: str, start_timeout: float) -> Iterator[Peer]:
    """A peer server started as `command` in a session of its own, with a fresh directory for
    its stage counters (STAGES_ENV) -> a Peer once `ready_path` answers; afterwards its whole
    process group is stopped (LitServe's API server and inference workers too) and the
    counters removed."""
    stages = Path(tempfile.mkdtemp(prefix="peer-stages-"))
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, STAGES_ENV: str(stages)}, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}{ready_path}", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        yield Peer(url, process.pid, stages)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(stages, ignore_errors=True)


def fastapi_server(architecture: str):
    """scripts/bench/fastapi_app.py serving torchvision's eager `architecture` -> a Peer."""
    (port,) = free_ports(1)
    command = [sys.executable, "-m", "scripts.bench.fastapi_app", "--model", architecture, "--port", str(port)]
    return peer_server(command, port, "/docs", start_timeout=120)


def litserve_server(model: str, max_batch_size: int, batch_timeout: float):
    """scripts/bench/litserve_app.py serving `model`'s compiled file with these batching
    settings, its workers and threads as our archive's (the model's YAML) -> a Peer."""
    (port,) = free_ports(1)
    workers = yaml.safe_load(get_model(model).config_file.read_text())["maxWorkers"]
    command = [sys.executable, "-m", "scripts.bench.litserve_app", "--model", model, "--port", str(port),
               "--workers", str(workers), "--threads", str(served_settings(model)[1]),
               "--max-batch-size", str(max_batch_size), "--batch-timeout", str(batch_timeout)]  # fmt: skip
    return peer_server(command, port, "/health", start_timeout=180)


def litserve_request(body: bytes) -> tuple[dict[str, str], bytes]:
    """LitServe's documented way to send a file: a multipart form (it parses JSON or forms only)."""
    return multipart("image", "photo.jpg", body)


def tune_litserve(model: str, body: bytes, duration: float, settings=LITSERVE_SETTINGS) -> dict:
    """LitServe's batching `settings` tried at 8 clients -> {"tried": [...], "best": (batch, timeout)}."""
    headers, form = litserve_request(body)
    tried = []
    for max_batch_size, batch_timeout in settings:
        with litserve_server(model, max_batch_size, batch_timeout) as peer:
            point = measure("litserve", peer.url, headers, model, "small", form, 8, duration, method="POST")
        tried.append({"max_batch_size": max_batch_size, "batch_timeout": batch_timeout, "req_per_s": point.req_per_s,
                      "p50_ms": point.p50_ms})  # fmt: skip
    best = max(tried, key=lambda t: t["req_per_s"])
    return {"tried": tried, "best": [best["max_batch_size"], best["batch_timeout"]]}


def torchserve_counters(metrics_url: str | None, model: str) -> dict[str, float]:
    """TorchServe's cumulative queue and inference latency (microseconds) for a model, and
    our handler's seconds per stage (zoo_stage_seconds_sum, keyed by the stage's name)."""
    if metrics_url is None:
        return {}
    text = requests.get(f"{metrics_url}/metrics", timeout=10).text
    counters = {}
    for name in COUNTERS:
        match = re.search(rf'^{name}{{model_name="{model}".*}} (\S+)$', text, re.M)
        counters[name] = float(match.group(1)) if match else 0.0
    for labels, value in re.findall(r"^zoo_stage_seconds_sum{(.*)} (\S+)$", text, re.M):
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if label.get("ModelName") == model:
            counters[label["stage"]] = counters.get(label["stage"], 0.0) + float(value)
    return counters


def measure(server, base, headers, model, image, body, concurrency, duration, logs=None, metrics=None,
            session=None, warmup=3.0, method="PUT", stages=None) -> Point:  # fmt: skip
    """One point: `concurrency` closed-loop clients for `duration` s after `warmup` s of the
    same load. With `logs`, bytes logged per request; with `metrics` (TorchServe's metrics
    address), its queue and inference times and our handler's stages; with `stages`
    (a peer's counters, Peer.stages), its decoding and forward times; with `session` (the
    server's session id), CPU per request."""
    closed_loop_raw(base, f"/predictions/{model}", headers, body, concurrency, min(warmup, duration), method=method)
    logged_before = directory_bytes(logs) if logs else 0
    counters_before = torchserve_counters(metrics, model)
    stages_before = read_stage_counters(stages) if stages else {}
    cpu_before = session_cpu(session) if session else {}
    client_before = time.process_time()
    outcomes = closed_loop_raw(base, f"/predictions/{model}", headers, body, concurrency, duration, 100_000,
                               method=method)  # fmt: skip
    elapsed = max(started + latency for started, latency, _ in outcomes) - min(s for s, _, _ in outcomes)
    latencies = sorted(latency * 1000 for _, latency, _ in outcomes)
    point = Point(
        server,
        model.removesuffix("_builtin"),
        image,
        concurrency,
        len(outcomes),
        len(outcomes) / elapsed,
        percentile(latencies, 50),
        percentile(latencies, 90),
        percentile(latencies, 99),
        sum(status != 200 for _, _, status in outcomes),
        statistics.fmean(latencies),
    )
    if session:
        cpu = session_cpu(session)
        point.frontend_cpu_ms, point.worker_cpu_ms = (
            (cpu[part] - cpu_before[part]) * 1000 / len(outcomes) for part in ("frontend", "workers")
        )
        point.client_cpu_ms = (time.process_time() - client_before) * 1000 / len(outcomes)
    if metrics:
        after = torchserve_counters(metrics, model)
        point.queue_ms, point.inference_ms = (
            (after[name] - counters_before[name]) / 1000 / len(outcomes) for name in COUNTERS
        )
        handler_stages = [name for name in after if name not in COUNTERS]
        point.stage_ms = {
            name: (after[name] - counters_before.get(name, 0.0)) * 1000 / len(outcomes) for name in handler_stages
        }
    if stages:
        after = read_stage_counters(stages)
        point.stage_ms = {  # per request, as ours: decode = decode_request, forward = predict
            name: (after[f"{name}_s"] - stages_before[f"{name}_s"]) * 1000 / len(outcomes)
            for name in ("decode", "forward")
        }
    if logs:
        time.sleep(1.5)  # let asynchronous log appenders flush
        point.log_bytes_per_request = (directory_bytes(logs) - logged_before) / max(1, len(outcomes))
    print(f"  {point}", file=sys.stderr, flush=True)
    return point


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def sweep(server_name, base, headers, models, bodies, concurrencies, duration, logs=None, metrics=None,
          session=None, method="PUT", stages=None) -> list[Point]:  # fmt: skip
    """Every model at every concurrency with the small photo, and at 8 with the large one."""
    runs = [
        (model, image, c) for model in models for image in bodies for c in (concurrencies if image == "small" else [8])
    ]
    options = {"logs": logs, "metrics": metrics, "session": session, "method": method, "stages": stages}
    return [
        measure(server_name, base, headers, model, image, bodies[image], c, duration, **options)
        for model, image, c in runs
    ]


def serve_and_sweep(store: Path, names: list[str], label: str, bodies, concurrencies, duration, overrides=None):
    """overrides=TORCHSERVE_DEFAULTS: TorchServe's own settings and logging, for its built-in handler."""
    log_config = None if overrides is TORCHSERVE_DEFAULTS else LOG_CONFIG
    with local_torchserve(store, names, overrides=overrides, log_config=log_config) as server:
        return sweep(label, server.inference, server.keys.header("inference"), names, bodies, concurrencies,
                     duration, server.workdir / "logs", server.metrics, server.process.pid)  # fmt: skip


# --- where the time goes inside our handler -------------------------------------------------


def stage_breakdown(model: str, body: bytes, batches: int) -> dict[str, float]:
    """ms per image spent in each stage of our handler at the served batch size."""
    with tempfile.TemporaryDirectory() as model_dir:
        handler, context = load_handler(model, Path(model_dir))
        batch_size = context.model_yaml_config["batchSize"]
        batch = [{"body": bytearray(body)} for _ in range(batch_size)]
        handler.handle(batch, context)  # warm-up
        context.metrics.clear()
        for _ in range(batches):
            handler.handle(batch, context)
    times = context.metrics.stage_ms()
    per_image = {name: sum(values) / (len(values) * batch_size) for name, values in times.items()}
    return {"batch": batch_size, **{name: round(value, 2) for name, value in per_image.items()}}


# --- main ---------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: mobilenet_v2, short points, no doc")
    parser.add_argument("--duration", type=float, help="seconds per point (default 15, quick 3)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "docs")
    parser.add_argument("--json", type=Path, help="also write the raw results here (quick mode)")
    parser.add_argument("--model-alone", metavar="MODEL", help=argparse.SUPPRESS)  # one ceiling worker process
    return parser


def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "handlers"))  # in-process handlers and loader, as on TorchServe's PYTHONPATH
    if args.model_alone:  # one of a ceiling's processes: print its img/s and CPU ms per image by batch
        batch, threads = served_settings(args.model_alone)
        torch.set_num_threads(threads)
        path = REPO / "build" / get_model(args.model_alone).artifact
        img_per_s, cpu_ms = model_throughput(path, sorted({1, batch}), args.duration)
        print(json.dumps({"img_per_s": img_per_s, "cpu_ms": cpu_ms}))
        return
    duration = args.duration or (3 if args.quick else 15)
    classifiers = ["mobilenet_v2"] if args.quick else list(CLASSIFIERS)
    served = classifiers + ([] if args.quick else list(OTHERS))
    concurrencies = (1, 8) if args.quick else CONCURRENCY
    bodies = {"small": images()["small"]} if args.quick else images()
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, no GPU",
        "cores": os.cpu_count(),
        "duration_s": duration,
        "quick": args.quick,
        "ceilings": {model: ceiling(model, 2 if args.quick else 5) for model in served},
        "breakdown": {model: stage_breakdown(model, bodies["small"], 2 if args.quick else 8) for model in served},
        "points": [],
    }
    if not args.quick:
        from scripts.bench.handler_speed import measure as handler_vs_model

        results["handler_vs_model"] = [
            handler_vs_model(model, batch, torch.device("cpu"), 3) for model in HANDLER_BENCH for batch in (1, 8)
        ]
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        if not args.quick:
            results["compile_targets"] = compile_targets([spec.name for spec in MODELS], 3, Path(workdir))
        store = Path(workdir) / "store"
        store.mkdir()
        for model in served:
            (store / f"{model}.mar").symlink_to(REPO / "model_store" / f"{model}.mar")
        # Each model in a TorchServe of its own: what a deployment of it measures, undisturbed
        # by the other models' idle workers.
        for model in served:
            results["points"] += map(asdict, serve_and_sweep(store, [model], "ours", bodies, concurrencies, duration))
        for name in builtin_store(store, classifiers):
            points = serve_and_sweep(store, [name], "built-in", bodies, concurrencies, duration, TORCHSERVE_DEFAULTS)
            results["points"] += map(asdict, points)
    for model in classifiers:
        with fastapi_server(get_model(model).architecture) as peer:
            points = sweep("fastapi", peer.url, {}, [model], {"small": bodies["small"]}, concurrencies, duration,
                           session=peer.session, stages=peer.stages)  # fmt: skip
            results["points"] += map(asdict, points)
    results["litserve"] = {}
    for model in classifiers:
        settings = LITSERVE_SETTINGS[3:4] if args.quick else LITSERVE_SETTINGS  # CI: one, to keep the app working
        tuning = tune_litserve(model, bodies["small"], min(duration, 10), settings)
        results["litserve"][model] = tuning
        headers, form = litserve_request(bodies["small"])
        with litserve_server(model, *tuning["best"]) as peer:
            points = sweep("litserve", peer.url, headers, [model], {"small": form}, concurrencies, duration,
                           session=peer.session, method="POST", stages=peer.stages)  # fmt: skip
            results["points"] += map(asdict, points)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.quick:
        from scripts.bench.report import summary_lines

        print("\n".join(summary_lines(results)))
        return
    from scripts.bench.report import plot, render_markdown, sections_of, with_section

    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "benchmarks.json").write_text(json.dumps(results, indent=1))
    plot(results, args.output_dir / "benchmarks.png")
    document = args.output_dir / "benchmarks.md"
    text = render_markdown(results)
    for name, body in (sections_of(document.read_text()) if document.exists() else {}).items():
        text = with_section(text, name, body)  # the side-by-side benchmarks' sections stay
    document.write_text(text)
    print(f"wrote {args.output_dir / 'benchmarks.md'} and benchmarks.png")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
