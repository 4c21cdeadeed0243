"""Variants of one model measured side by side in one run: each archived by the project's
one recipe with its own settings, served alone in a TorchServe of its own, one after the
other, for several rounds (the spread between rounds is the machine's noise), at 8
closed-loop clients. Used by scripts/bench/scaling.py and scripts/bench/metrics_cost.py."""

import datetime
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import yaml

from scripts.bench.endtoend import images, measure
from scripts.bench.report import machine
from scripts.build.archive import build_archive
from scripts.serve.server import Server, local_torchserve
from scripts.zoo import REPO, get_model


def model_config(model: str) -> dict:
    return yaml.safe_load(get_model(model).config_file.read_text())


def archive_variants(model: str, store: Path, variants: dict[str, dict]) -> dict[str, str]:
    """{label: settings} -> {label: archive name}: the model's YAML with each variant's
    TorchServe keys and `handler:` keys laid over it."""
    spec, base = get_model(model), model_config(model)
    names = {}
    for label, settings in variants.items():
        config = {**base, **settings, "handler": {**base.get("handler", {}), **settings.get("handler", {})}}
        config_file = store / f"{model}_{label}.yaml"
        config_file.write_text(yaml.safe_dump(config))
        build_archive(spec, REPO / "build" / spec.artifact, store, f"{model}_{label}", config_file)
        names[label] = f"{model}_{label}"
    return names


def scale(server: Server, name: str, workers: int) -> None:
    path = f"/models/{name}?min_worker={workers}&max_worker={workers}&synchronous=true"
    server.manage("PUT", path).raise_for_status()
    ready = [w for w in server.workers(name) if w["status"] == "READY"]
    if len(ready) != workers:
        raise RuntimeError(f"{name}: {len(ready)} ready workers after scaling to {workers}")


def run_variant(store: Path, name: str, label: str, workers: list[int] | None, clients: int, duration: float):
    """One TorchServe serving only this variant: a point at each worker count (scaled
    through the management API), or one point as configured (workers=None)."""
    points, body = [], images()["small"]
    registry = Path(tempfile.mkdtemp(prefix="workers-"))  # no other server's workers counted
    with local_torchserve(store, [name], env={"TS_ZOO_WORKER_REGISTRY": str(registry)}) as server:
        for count in workers or [None]:
            if count is not None:
                scale(server, name, count)
            point = measure(label, server.inference, server.keys.header("inference"), name, "small", body, clients,
                            duration)  # fmt: skip
            points.append({**asdict(point), "workers": count, "variant": label})
            print(f"  {label:5} {count or '-'} workers: {point.req_per_s:6.1f} req/s, p99 {point.p99_ms:6.1f} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
    return points


def measured(model: str, variants: dict[str, dict], rounds: int, workers: list[int] | None, clients: int,
             duration: float) -> dict:  # fmt: skip
    """run_rounds, with what a report says about the run."""
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "model": model,
        "workers": workers,
        "clients": clients,
        "duration_s": duration,
        "image": "451x300 JPEG",
        "rounds": run_rounds(model, variants, rounds, workers, clients, duration),
    }


def run_rounds(model: str, variants: dict[str, dict], rounds: int, workers: list[int] | None, clients: int,
               duration: float) -> list[list[dict]]:  # fmt: skip
    """Every variant, one after the other, `rounds` times -> each round's points. Each round
    starts one variant later (A B C, B C A, C A B, ...): a drift of the machine's speed
    during the run then favours no variant."""
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as workdir:
        store = Path(workdir)
        order = list(archive_variants(model, store, variants).items())
        rounds_points = []
        for index in range(rounds):
            turn = order[index % len(order) :] + order[: index % len(order)]
            points = [p for label, name in turn for p in run_variant(store, name, label, workers, clients, duration)]
            rounds_points.append(points)
        return rounds_points


def medians(rounds: list[list[dict]]) -> dict[tuple[str, int | None], dict[str, float]]:
    """(variant, workers) -> the median req/s and p99 over the rounds."""
    every = [point for points in rounds for point in points]
    keys = {(p["variant"], p["workers"]) for p in every}
    return {
        key: {
            stat: statistics.median(p[stat] for p in every if (p["variant"], p["workers"]) == key)
            for stat in ("req_per_s", "p99_ms")
        }
        for key in keys
    }
