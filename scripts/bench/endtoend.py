"""End to end: our archives served by TorchServe against the compiled model alone (the
ceiling), TorchServe's built-in image_classifier handler under its defaults, a naive
single-process FastAPI app and LitServe with its batching tuned -- in one run, on one
machine, with the same real-photo JPEGs -> its section of docs/benchmarks.md (targets,
tables, where the time goes: scripts/bench/endtoend_report.py), docs/benchmarks.png and
the raw numbers in docs/benchmarks.json.

    python -m scripts.bench.endtoend            # make bench (~30 min on 2 cores)
    python -m scripts.bench.endtoend --quick    # CI: mobilenet_v2 only, short points, no doc
"""

import argparse
import json
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from scripts.bench import endtoend_report as report
from scripts.bench import harness
from scripts.bench.alone import ceiling, served_settings
from scripts.bench.doc import about_the_run, publish
from scripts.bench.harness import Target, as_form, images, measure, peer, torchserve
from scripts.building.archive import ARCHIVE_VERSION
from scripts.building.inprocess import load_handler
from scripts.child_process import console_script
from scripts.serve.server import free_ports
from scripts.zoo import REPO, get_model

CONCURRENCY = (1, 8, 32)
CLASSIFIERS = ("mobilenet_v2", "resnet18")  # the models every peer serves too
OTHERS = ("efficientnet_lite0", "yolov5s", "face_pixelizer")  # ours and the model alone
# LitServe's batching, (max_batch_size, batch_timeout s), tried at 8 clients; the best is measured.
LITSERVE_SETTINGS = ((1, 0.0), (4, 0.002), (4, 0.005), (8, 0.005), (8, 0.01), (16, 0.01))


class LogitsOnly(torch.nn.Module):
    """A compiled classifier without its drift features: the one logits tensor that
    TorchServe's built-in handler expects."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def builtin_archive(store: Path, model: str) -> str:
    """The same compiled TorchScript file archived with TorchServe's image_classifier handler
    and no model config: TorchServe's defaults for everything -> the archive's name."""
    name = f"{model}_builtin"
    logits_only = store / f"{name}.pt"
    compiled = torch.jit.load(str(REPO / "build" / f"{model}.pt"), map_location="cpu")
    torch.jit.save(torch.jit.script(LogitsOnly(compiled)), str(logits_only))
    command = [
        console_script("torch-model-archiver"),
        "--model-name",
        name,
        "--version",
        ARCHIVE_VERSION,
        "--serialized-file",
        str(logits_only),
        "--handler",
        "image_classifier",
        "--extra-files",
        str(REPO / "index_to_name.json"),
        "--export-path",
        str(store),
        "--force",
    ]
    subprocess.run(command, check=True)
    return name


def fastapi(model: str):
    """scripts/bench/fastapi_app.py serving torchvision's eager architecture of `model`."""
    (port,) = free_ports(1)
    command = [
        sys.executable,
        "-m",
        "scripts.bench.fastapi_app",
        "--model",
        get_model(model).architecture,
        "--port",
        str(port),
    ]
    return peer("fastapi", command, port, "/docs", timeout=120)


def litserve(model: str, max_batch_size: int, batch_timeout: float):
    """LitServe serving `model`'s compiled file with these batching settings, as many
    workers and threads each as our archive."""
    _batch, workers, threads = served_settings(model)
    return harness.litserve(model, max_batch_size, batch_timeout, workers, threads)


def tune_litserve(model: str, body: bytes, seconds: float, settings=LITSERVE_SETTINGS) -> dict:
    """LitServe's batching `settings` tried at 8 clients -> {"tried": [...], "best": [batch, timeout]}."""
    tried = []
    for max_batch_size, batch_timeout in settings:
        with litserve(model, max_batch_size, batch_timeout) as target:
            point = measure(target, model, as_form(target, body), 8, seconds)
        tried.append(
            {
                "max_batch_size": max_batch_size,
                "batch_timeout": batch_timeout,
                "req_per_s": point.req_per_s,
                "p50_ms": point.p50_ms,
            }
        )
    best = max(tried, key=lambda t: t["req_per_s"])
    return {"tried": tried, "best": [best["max_batch_size"], best["batch_timeout"]]}


def sweep(target: Target, model: str, bodies: dict[str, bytes], concurrencies, seconds: float) -> list[dict]:
    """The small photo at every concurrency, the large one (if any) at 8 clients."""
    runs = [("small", c) for c in concurrencies] + [(image, 8) for image in bodies if image != "small"]
    return [
        asdict(measure(target, model, as_form(target, bodies[image]), c, seconds, image=image)) for image, c in runs
    ]


def stage_breakdown(model: str, body: bytes, batches: int) -> dict[str, float]:
    """ms per image in each stage of our handler, driven in-process at the served batch size."""
    with tempfile.TemporaryDirectory() as model_dir:
        handler, context = load_handler(model, Path(model_dir))
        batch_size = context.model_yaml_config["batchSize"]
        batch = [{"body": bytearray(body)} for _ in range(batch_size)]
        handler.handle(batch, context)  # warm-up
        context.metrics.clear()
        for _ in range(batches):
            handler.handle(batch, context)
    per_image = {name: sum(ms) / (len(ms) * batch_size) for name, ms in context.metrics.stage_ms().items()}
    return {"batch": batch_size, **{name: round(ms, 2) for name, ms in per_image.items()}}


@contextmanager
def our_store(models: list[str]):
    """A temporary model store with our archives of `models` (and room for the built-in's)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        store = Path(workdir)
        for model in models:
            (store / f"{model}.mar").symlink_to(REPO / "model_store" / f"{model}.mar")
        yield store


def run(quick: bool, seconds: float) -> dict:
    classifiers = ["mobilenet_v2"] if quick else list(CLASSIFIERS)
    served = classifiers + ([] if quick else list(OTHERS))
    concurrencies = (1, 8) if quick else CONCURRENCY
    bodies = {"small": images()["small"]} if quick else images()
    results = {
        **about_the_run(),
        "seconds": seconds,
        "quick": quick,
        "points": [],
        "litserve": {},
        "ceilings": {model: ceiling(model, 2 if quick else 5) for model in served},
        "breakdown": {model: stage_breakdown(model, bodies["small"], 2 if quick else 8) for model in served},
    }
    with our_store(served) as store:
        for model in served:  # each in a TorchServe of its own, undisturbed by other models' workers
            with torchserve(store, [model]) as target:
                results["points"] += sweep(target, model, bodies, concurrencies, seconds)
        for model in classifiers:
            with torchserve(store, [builtin_archive(store, model)], "built-in", defaults=True) as target:
                points = sweep(target, f"{model}_builtin", bodies, concurrencies, seconds)
                results["points"] += [{**point, "model": model} for point in points]
    for model in classifiers:
        with fastapi(model) as target:
            results["points"] += sweep(target, model, {"small": bodies["small"]}, concurrencies, seconds)
        tuning = tune_litserve(
            model, bodies["small"], min(seconds, 10), LITSERVE_SETTINGS[3:4] if quick else LITSERVE_SETTINGS
        )
        results["litserve"][model] = tuning
        with litserve(model, *tuning["best"]) as target:
            results["points"] += sweep(target, model, {"small": bodies["small"]}, concurrencies, seconds)
    return results


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: mobilenet_v2, short points, no doc")
    parser.add_argument("--seconds", type=float, help="per point (default 15, quick 3)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "docs")
    parser.add_argument("--json", type=Path, help="write the raw results here too")
    return parser


def main(args: argparse.Namespace) -> None:
    results = run(args.quick, args.seconds or (3 if args.quick else 15))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.quick:
        print("\n".join(report.summary_lines(results)))
        return
    report.plot(results, args.output_dir / "benchmarks.png")
    publish(
        "endtoend",
        report.render(results),
        results,
        args.output_dir / "benchmarks.md",
        args.output_dir / "benchmarks.json",
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
