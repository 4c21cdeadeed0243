"""What observing the models costs: one model served with the handlers' metrics and live
drift test on (the defaults), with metrics only, and with both off, side by side in one
run -> the metrics_cost section of docs/benchmarks.md. Target: at most 5 % lower
throughput with everything on than with everything off.

    python -m scripts.bench.metrics_cost             # mobilenet_v2 (the cheapest model), 8 clients
"""

import argparse
from pathlib import Path

from scripts.bench.report import publish
from scripts.bench.side_by_side import measured, medians
from scripts.zoo import REPO

VARIANTS = {
    "all_on": {},  # metrics and drift, as archived
    "metrics_only": {"handler": {"drift": False}},
    "off": {"handler": {"metrics": False, "drift": False}},
}
TARGET = 0.05  # at most this much lower throughput with everything on


def render_section(results: dict) -> str:
    labels = list(VARIANTS)
    rows = [(str(index), {p["variant"]: p for p in points}) for index, points in enumerate(results["rounds"], 1)]
    median = medians(results["rounds"])
    rows.append(("median", {label: median[(label, None)] for label in labels}))

    def row(label: str, by: dict) -> str:
        cells = [f"{by[v]['req_per_s']:.1f} | {by[v]['p99_ms']:.0f}" for v in labels]
        changes = [f"{by[v]['req_per_s'] / by['off']['req_per_s'] - 1:+.1%}" for v in labels[:-1]]
        return f"| {label} | {' | '.join(cells)} | {' | '.join(changes)} |"

    change = median[("all_on", None)]["req_per_s"] / median[("off", None)]["req_per_s"] - 1
    verdict = "holds" if change >= -TARGET else "MISSED"
    spread = max(run_to_run_spread(results["rounds"], label) for label in labels)
    header = " | ".join(f"{v} req/s | {v} p99 ms" for v in labels)
    return "\n".join([
        "## What metrics and drift detection cost",
        "",
        f"`python -m scripts.bench.metrics_cost` ({results['date']}, {results['machine']}): `{results['model']}` "
        f"as configured, with the handlers' metrics and live drift test on (the defaults), with metrics only "
        f"(`drift: false`) and with both off (`metrics: false`), each in a TorchServe of its own, "
        f"{results['clients']} closed-loop clients sending the 451x300 JPEG, {results['duration_s']:g} s per "
        f"point, {len(results['rounds'])} rounds in one run. With metrics on, each batch sends TorchServe a few "
        "metric lines (stage times, batch fill, outcomes) and each request one (the "
        "top-1 probability), which the frontend parses into its Prometheus registry. With drift on, each "
        "batch's features are copied into the worker's window, and every 100 images a background thread "
        "(at nice 19) runs "
        "the MMD test (the last 100 images vs a reference of 100, 200 permutations) while the worker goes on "
        "serving.",
        "",
        f"| round | {header} | all on vs off | metrics only vs off |",
        "| --- |" + " --- |" * (2 * len(labels) + len(labels) - 1),
        *(row(label, by) for label, by in rows),
        "",
        f"Target: at most {TARGET:.0%} lower throughput with metrics and drift on than with both off, judged on "
        f"the medians: **{verdict}** ({change:+.1%}). The same variant's throughput varied by up to "
        f"{spread:.0%} between the rounds of this run (the machine is shared), hence rounds and medians.",
    ])  # fmt: skip


def run_to_run_spread(rounds: list[list[dict]], variant: str) -> float:
    """max / min - 1 of one variant's req/s over the rounds."""
    rates = [point["req_per_s"] for points in rounds for point in points if point["variant"] == variant]
    return max(rates) / min(rates) - 1


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=15, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=5, help="each variant in turn, N times (spread)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    return parser


def main(args: argparse.Namespace) -> None:
    results = measured(args.model, VARIANTS, args.rounds, None, args.clients, args.duration)
    publish("metrics_cost", render_section(results), results, args.output, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
