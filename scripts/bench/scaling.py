"""Scaling a model's workers through the management API, with CPU threads fixed at load
(the previous behaviour: cores ÷ the YAML's worker count, whatever the live count) and
following the busy workers on the machine (handlers/runtime.py::ThreadBudget), side by
side in one run -> the scaling section of docs/benchmarks.md.

    python -m scripts.bench.scaling                  # resnet18, 1 -> 2 -> 4 workers, 8 clients
    python -m scripts.bench.scaling --quick          # a short run that only shows it works
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from scripts.bench.endtoend import images, measure
from scripts.bench.report import SCALING_BEGIN, SCALING_END, with_section
from scripts.build.archive import build_archive
from scripts.serve.server import Server, local_torchserve
from scripts.zoo import REPO, get_model

# The two ways a worker may size its CPU thread pool.
POLICIES = {
    "fixed": "threads fixed at load: cores ÷ the YAML's workers (before)",
    "live": "threads follow the busy workers alive (now)",
}


def fixed_threads(config: dict) -> int:
    """What a worker took before: usable cores ÷ max(minWorkers, maxWorkers) of its YAML."""
    workers = max(int(config.get("minWorkers", 1)), int(config.get("maxWorkers", 1)))
    return max(1, len(os.sched_getaffinity(0)) // workers)


def archive_variants(model: str, store: Path) -> dict[str, str]:
    """The model archived twice by the project's one recipe: as configured (live threads),
    and with num_threads pinned to what the previous code computed -> {policy: name}."""
    spec = get_model(model)
    config = yaml.safe_load(spec.config_file.read_text())
    pinned = {**config, "handler": {**config.get("handler", {}), "num_threads": fixed_threads(config)}}
    pinned_file = store / f"{model}_fixed.yaml"
    pinned_file.write_text(yaml.safe_dump(pinned))
    artifact = REPO / "build" / spec.artifact
    build_archive(spec, artifact, store, f"{model}_fixed", pinned_file)
    build_archive(spec, artifact, store, f"{model}_live")
    return {"fixed": f"{model}_fixed", "live": f"{model}_live"}


def scale(server: Server, name: str, workers: int) -> None:
    path = f"/models/{name}?min_worker={workers}&max_worker={workers}&synchronous=true"
    response = server.manage("PUT", path)
    response.raise_for_status()
    ready = [w for w in server.workers(name) if w["status"] == "READY"]
    if len(ready) != workers:
        raise RuntimeError(f"{name}: {len(ready)} ready workers after scaling to {workers}")


def run_policy(store: Path, name: str, policy: str, workers: list[int], body: bytes, clients: int, duration: float):
    """One TorchServe serving only this variant, scaled up step by step under load."""
    points = []
    registry = Path(tempfile.mkdtemp(prefix="workers-"))  # no other server's workers counted
    with local_torchserve(store, [name], env={"TS_ZOO_WORKER_REGISTRY": str(registry)}) as server:
        headers = server.keys.header("inference")
        for count in workers:
            scale(server, name, count)
            point = measure(policy, server.inference, headers, name, "small", body, clients, duration)
            points.append({**asdict(point), "workers": count, "policy": policy})
            print(f"  {policy:5} {count} workers: {point.req_per_s:6.1f} req/s, p99 {point.p99_ms:6.1f} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
    return points


def render_section(results: dict) -> str:
    """The markdown of the scaling section: every round's points, then the medians over
    rounds, on which the target is judged (one round's points move by +-15 % on a shared
    2-core machine)."""
    workers, rounds = results["workers"], results["rounds"]

    def row(label: str, count: int, fixed: dict, live: dict, base: float) -> str:
        return (
            f"| {label} | {count} | {fixed['req_per_s']:.1f} | {fixed['p99_ms']:.0f} | {live['req_per_s']:.1f} | "
            f"{live['p99_ms']:.0f} | {live['req_per_s'] / fixed['req_per_s']:.2f}x | "
            f"{live['req_per_s'] / base - 1:+.0%} |"
        )

    rows = []
    for index, points in enumerate(rounds, start=1):
        by = {(p["policy"], p["workers"]): p for p in points}
        base = by[("live", workers[0])]["req_per_s"]
        rows += [row(str(index), n, by[("fixed", n)], by[("live", n)], base) for n in workers]
    medians = {
        (policy, n): {
            key: statistics.median(
                p[key] for points in rounds for p in points if (p["policy"], p["workers"]) == (policy, n)
            )
            for key in ("req_per_s", "p99_ms")
        }
        for policy in POLICIES
        for n in workers
    }
    base = medians[("live", workers[0])]["req_per_s"]
    rows += [row("median", n, medians[("fixed", n)], medians[("live", n)], base) for n in workers]
    worst = min(medians[("live", n)]["req_per_s"] / base - 1 for n in workers[1:])
    verdict = "holds" if worst >= -0.10 else "MISSED"
    return "\n".join([
        "## Scaling workers through the management API",
        "",
        f"`make bench-scaling` ({results['date']}, {results['machine']}): `{results['model']}` served alone, "
        f"scaled with `PUT /models/<name>?min_worker=N&max_worker=N&synchronous=true` to {workers} workers, "
        f"{results['clients']} closed-loop clients sending the {results['image']}, {results['duration_s']:g} s per "
        "point after a 3 s warm-up. Both variants come from the same compiled model and archive recipe, each in a "
        f"TorchServe of its own, one after the other, {len(rounds)} rounds in one run:",
        "",
        f"- **fixed** -- {POLICIES['fixed']}: `num_threads: {results['fixed_threads']}` in its YAML, exactly what "
        "the previous code computed for this model (2 cores ÷ `maxWorkers: 1`), whatever the live worker count;",
        f"- **live** -- {POLICIES['live']}: cores ÷ the CPU workers alive on the machine that served a batch in "
        "the last 10 s (`handlers/runtime.py::ThreadBudget`).",
        "",
        "| round | workers | fixed req/s | fixed p99 ms | live req/s | live p99 ms | live ÷ fixed | live vs 1 worker |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Target: scaling up never lowers throughput by more than 10 %, judged on the medians: **{verdict}** "
        f"(worst median change from {workers[0]} worker with live threads: {worst:+.0%}). With fixed threads, "
        f"{workers[-1]} workers run {workers[-1] * results['fixed_threads']} busy threads on 2 cores and "
        "throughput collapses; with live threads each worker takes its share, and what is left of a loss is "
        "the same work split into smaller batches (8 clients over more workers) plus more processes "
        "sharing the 2 cores with TorchServe's frontend and the clients.",
    ])  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=15, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=3, help="fixed, live, fixed, live, ...: run-to-run spread")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s points, 1 -> 2 workers; no doc")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    return parser


def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.workers, args.duration, args.rounds = [1, 2], 3, 1
    body = images()["small"]
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "model": args.model,
        "workers": args.workers,
        "clients": args.clients,
        "duration_s": args.duration,
        "image": "451x300 JPEG",
        "fixed_threads": fixed_threads(yaml.safe_load(get_model(args.model).config_file.read_text())),
        "rounds": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as workdir:
        store = Path(workdir)
        names = archive_variants(args.model, store)
        for _ in range(args.rounds):
            points = []
            for policy, name in names.items():
                points += run_policy(store, name, policy, args.workers, body, args.clients, args.duration)
            results["rounds"].append(points)
    section = render_section(results)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.quick:
        document = args.output.read_text() if args.output.exists() else ""
        args.output.write_text(with_section(document, f"{SCALING_BEGIN}\n{section}\n{SCALING_END}"))
        print(f"wrote the scaling section of {args.output}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
