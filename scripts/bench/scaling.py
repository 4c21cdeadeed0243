"""Scaling a model's workers through the management API, with CPU threads fixed at load
(the previous behaviour: cores ÷ the YAML's worker count, whatever the live count) and
following the busy workers on the machine (handlers/cpu_threads.py::ThreadBudget), side by
side in one run -> the scaling section of docs/benchmarks.md.

    python -m scripts.bench.scaling                  # resnet18, 1 -> 2 -> 4 workers, 8 clients
    python -m scripts.bench.scaling --quick          # a short run that only shows it works
"""

import argparse
import os
from pathlib import Path

from scripts.bench.report import publish
from scripts.bench.side_by_side import measured, medians, model_config
from scripts.zoo import REPO

# The two ways a worker may size its CPU thread pool.
POLICIES = {
    "fixed": "threads fixed at load: cores ÷ the YAML's workers (before)",
    "live": "threads follow the busy workers alive (now)",
}


def fixed_threads(config: dict) -> int:
    """What a worker took before: usable cores ÷ max(minWorkers, maxWorkers) of its YAML."""
    workers = max(int(config.get("minWorkers", 1)), int(config.get("maxWorkers", 1)))
    return max(1, len(os.sched_getaffinity(0)) // workers)


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
        by = {(p["variant"], p["workers"]): p for p in points}
        base = by[("live", workers[0])]["req_per_s"]
        rows += [row(str(index), n, by[("fixed", n)], by[("live", n)], base) for n in workers]
    median = medians(rounds)
    base = median[("live", workers[0])]["req_per_s"]
    rows += [row("median", n, median[("fixed", n)], median[("live", n)], base) for n in workers]
    worst = min(median[("live", n)]["req_per_s"] / base - 1 for n in workers[1:])
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
        "the last 10 s (`handlers/cpu_threads.py::ThreadBudget`).",
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
    threads = fixed_threads(model_config(args.model))
    variants = {"fixed": {"handler": {"num_threads": threads}}, "live": {}}
    results = measured(args.model, variants, args.rounds, args.workers, args.clients, args.duration)
    results["fixed_threads"] = threads
    publish("scaling", render_section(results), results, None if args.quick else args.output, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
