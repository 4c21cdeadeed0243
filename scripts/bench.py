"""End-to-end benchmark: our archives served by TorchServe against the compiled model
alone (the ceiling), TorchServe's built-in image_classifier handler under default
settings, and a naive single-process FastAPI app -- in one run, on one machine, with
the same real-photo JPEGs. Writes docs/benchmarks.md, docs/benchmarks.png and the
raw numbers in docs/benchmarks.json.

    python -m scripts.bench            # make bench: the full run for the doc (~15 min on 2 cores)
    python -m scripts.bench --quick    # CI: mobilenet_v2 only, short points (< 2 min)
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
import torch
import yaml

from scripts.archive import ARCHIVE_VERSION
from scripts.loadgen import closed_loop_raw, percentile
from scripts.photos import encode, photo
from scripts.server import free_ports, local_torchserve
from scripts.zoo import REPO, get_model

CONCURRENCY = (1, 8, 32)
CLASSIFIERS = ("mobilenet_v2", "resnet18")
OTHERS = ("yolov5s", "face_pixelizer")
# TorchServe's own defaults for what our config.properties tunes (docs/configuration.md).
TORCHSERVE_DEFAULTS = {"vmargs": "", "metrics_mode": "log"}


@dataclass
class Point:
    server: str  # "ours", "built-in", "fastapi"
    model: str
    image: str  # "small" or "large"
    concurrency: int
    requests: int
    req_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    log_bytes_per_request: float | None = None


def images() -> dict[str, bytes]:
    """small: skimage's cat, 451x300; large: its retina photo, 1411x1411 (2 MP)."""
    from PIL import Image
    from skimage import data as photos

    return {
        "small": encode(photo("chelsea"), "JPEG", quality=90),
        "large": encode(Image.fromarray(photos.retina()), "JPEG", quality=90),
    }


# --- the ceiling: the compiled model alone ---------------------------------------------


def served_settings(model: str) -> tuple[int, int]:
    """(batchSize, intra-op threads) the archive serves with."""
    from runtime import threads_per_worker, usable_cores

    config = yaml.safe_load(get_model(model).config_file.read_text())
    handler_threads = config.get("handler", {}).get("num_threads")
    threads = handler_threads or threads_per_worker(usable_cores(), config["maxWorkers"])
    return config["batchSize"], threads


def ceiling(model: str, seconds: float) -> dict:
    """img/s of the served compiled file (loaded as the handler loads it) on ready-made
    input tensors, at the served batch size and thread count, and at batch 1."""
    from runtime import load_compiled_model

    spec = get_model(model)
    batch, threads = served_settings(model)
    torch.set_num_threads(threads)
    compiled, metadata = load_compiled_model(REPO / "build" / spec.artifact, torch.device("cpu"))
    height, width = metadata["input_size"]
    result = {"batch": batch, "threads": threads, "compiler": metadata["compiler"]}
    for size in sorted({1, batch}):
        inputs = torch.rand(size, 3, height, width)
        with torch.inference_mode():
            for _ in range(3):
                compiled(inputs)
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                compiled(inputs)
                runs += 1
        result[f"b{size}_img_per_s"] = runs * size / (time.perf_counter() - started)
    result["served_img_per_s"] = result[f"b{batch}_img_per_s"]
    return result


# --- servers ------------------------------------------------------------------------


def builtin_store(store: Path, models: list[str]) -> list[str]:
    """The same compiled TorchScript files archived with TorchServe's image_classifier
    handler and no model config: TorchServe's defaults for everything."""
    names = []
    for model in models:
        name = f"{model}_builtin"
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name", name, "--version", ARCHIVE_VERSION,
            "--serialized-file", str(REPO / "build" / f"{model}.pt"),
            "--handler", "image_classifier",
            "--extra-files", str(REPO / "index_to_name.json"),
            "--export-path", str(store), "--force",
        ]  # fmt: skip
        subprocess.run(command, check=True)
        names.append(name)
    return names


@contextmanager
def fastapi_server(architecture: str):
    (port,) = free_ports(1)
    command = [sys.executable, "-m", "scripts.bench_fastapi", "--model", architecture, "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                requests.get(f"{url}/docs", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(server, base, headers, model, image, body, concurrency, duration, logs: Path | None = None) -> Point:
    logged_before = directory_bytes(logs) if logs else 0
    outcomes = closed_loop_raw(
        base, f"/predictions/{model}", headers, body, concurrency, duration, max_requests=100_000
    )
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
    )
    if logs:
        time.sleep(1.5)  # let asynchronous log appenders flush
        point.log_bytes_per_request = (directory_bytes(logs) - logged_before) / max(1, len(outcomes))
    print(f"  {point}", file=sys.stderr, flush=True)
    return point


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def sweep(server, base, headers, models, bodies, concurrencies, duration, logs=None) -> list[Point]:
    points = []
    for model in models:
        requests.put(f"{base}/predictions/{model}", data=bodies["small"], headers=headers, timeout=120)  # warm-up
        for image, body in bodies.items():
            levels = concurrencies if image == "small" else [c for c in concurrencies if c == 8] or concurrencies[-1:]
            for concurrency in levels:
                points.append(measure(server, base, headers, model, image, body, concurrency, duration, logs))
    return points


# --- where the time goes ------------------------------------------------------------


class _Context:
    """Just enough of TorchServe's context to drive a handler in-process."""

    def __init__(self, model_dir: Path, config: dict, spec_name: str, artifact: str):
        self.model_name = spec_name
        self.manifest = {"model": {"modelName": spec_name, "serializedFile": artifact}}
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": config["batchSize"]}
        self.model_yaml_config = config
        self.times: dict[str, list[float]] = {}
        self.metrics = self

    def add_time(self, name, value, idx=None, unit="ms"):
        self.times.setdefault(name, []).append(value)

    def set_response_content_type(self, idx, value):
        pass

    def set_response_status(self, code=200, phrase="", idx=0):
        pass

    def set_response_header(self, idx, key, value):
        pass


def stage_breakdown(model: str, body: bytes, batches: int = 8) -> dict[str, float]:
    """ms per image spent in each stage of our handler at the served batch size."""
    import importlib
    import shutil

    spec = get_model(model)
    config = yaml.safe_load(spec.config_file.read_text())
    with tempfile.TemporaryDirectory() as model_dir:
        shutil.copy(REPO / "build" / spec.artifact, model_dir)
        shutil.copy(REPO / "index_to_name.json", model_dir)
        context = _Context(Path(model_dir), config, model, spec.artifact)
        family = {"classifier": "classifier_handler", "detector": "detector_handler", "face": "face_pixelizer_handler"}
        module = importlib.import_module(family[spec.family])
        (handler_class,) = [c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__]
        handler = handler_class()
        handler.initialize(context)
        batch = [{"body": bytearray(body)} for _ in range(config["batchSize"])]
        handler.handle(batch, context)  # warm-up
        context.times.clear()
        for _ in range(batches):
            handler.handle(batch, context)
    per_image = {name: sum(values) / (len(values) * config["batchSize"]) for name, values in context.times.items()}
    return {"batch": config["batchSize"], **{k: round(v, 2) for k, v in per_image.items()}}


# --- report -------------------------------------------------------------------------


def render(results: dict) -> str:
    from scripts.bench_report import render_markdown

    return render_markdown(results)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: mobilenet_v2, short points, no doc")
    parser.add_argument("--duration", type=float, help="seconds per point (default 15, quick 3)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "docs")
    return parser


def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "handlers"))  # in-process handler and runtime, as on TorchServe's PYTHONPATH
    duration = args.duration or (3 if args.quick else 15)
    classifiers = ["mobilenet_v2"] if args.quick else list(CLASSIFIERS)
    others = [] if args.quick else list(OTHERS)
    concurrencies = (1, 8) if args.quick else CONCURRENCY
    bodies = images() if not args.quick else {"small": images()["small"]}
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, no GPU",
        "duration_s": duration,
        "quick": args.quick,
        "ceilings": {},
        "breakdown": {},
        "points": [],
    }
    for model in classifiers + others:
        results["ceilings"][model] = ceiling(model, 2 if args.quick else 5)
        results["breakdown"][model] = stage_breakdown(model, bodies["small"], 2 if args.quick else 8)
        print(f"{model}: ceiling {results['ceilings'][model]}, stages {results['breakdown'][model]}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as store_dir:
        store = Path(store_dir)
        for model in classifiers + others:
            (store / f"{model}.mar").symlink_to(REPO / "model_store" / f"{model}.mar")
        with local_torchserve(store, classifiers + others) as server:
            headers = server.keys.header("inference")
            points = sweep("ours", server.inference, headers, classifiers + others, bodies, concurrencies, duration,
                           server.workdir / "logs")  # fmt: skip
            results["points"] += [asdict(p) for p in points]
        names = builtin_store(store, classifiers)
        with local_torchserve(store, names, overrides=TORCHSERVE_DEFAULTS) as server:
            headers = server.keys.header("inference")
            points = sweep("built-in", server.inference, headers, names, bodies, concurrencies, duration,
                           server.workdir / "logs")  # fmt: skip
            results["points"] += [asdict(p) for p in points]
    for model in classifiers:
        with fastapi_server(get_model(model).architecture) as url:
            points = sweep("fastapi", url, {}, [model], {"small": bodies["small"]}, concurrencies, duration)
            results["points"] += [asdict(p) for p in points]
    if args.quick:
        print(json.dumps(results, indent=1))
        return
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "benchmarks.json").write_text(json.dumps(results, indent=1))
    (args.output_dir / "benchmarks.md").write_text(render(results))
    print(f"wrote {args.output_dir / 'benchmarks.md'}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
