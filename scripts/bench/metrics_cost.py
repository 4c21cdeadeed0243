"""What observing the models costs: one model served with the handlers' metrics and live
drift test on (the defaults), with metrics only, and with both off, all three served at
once and loaded in turn every few seconds (side_by_side.run_interleaved) -> the
metrics_cost section of docs/benchmarks.md. Target: at most 5 % lower throughput with
everything on than with everything off.

    python -m scripts.bench.metrics_cost             # mobilenet_v2 (the cheapest model), 8 clients
"""

import argparse
import statistics
from pathlib import Path

from scripts.bench.report import publish
from scripts.bench.side_by_side import medians, run_interleaved
from scripts.zoo import REPO

VARIANTS = {
    "all_on": {},  # metrics and drift, as archived
    "metrics_only": {"handler": {"drift": False}},
    "off": {"handler": {"metrics": False, "drift": False}},
}
TARGET = 0.05  # at most this much lower throughput with everything on


def cpu_ms(point: dict) -> float:
    """CPU ms per request of the whole server: TorchServe's frontend and its workers."""
    return point["frontend_cpu_ms"] + point["worker_cpu_ms"]


def paired_changes(rounds: list[list[dict]], variant: str) -> tuple[list[float], list[float]]:
    """Per round: (`variant`'s req/s vs off's - 1, the throughput change its CPU per request
    implies on saturated cores: off's CPU / its CPU - 1). Both measured seconds apart."""
    rates, cpu = [], []
    for points in rounds:
        by = {point["variant"]: point for point in points}
        rates.append(by[variant]["req_per_s"] / by["off"]["req_per_s"] - 1)
        cpu.append(cpu_ms(by["off"]) / cpu_ms(by[variant]) - 1)
    return rates, cpu


def render_section(results: dict) -> str:
    labels = list(VARIANTS)
    rounds = results["rounds"]
    median = {label: stats for (label, _), stats in medians(rounds).items()}
    changes = {label: paired_changes(rounds, label) for label in labels[:-1]}

    def row(index: int, points: list[dict]) -> str:
        by = {point["variant"]: point for point in points}
        rates = [f"{by[v]['req_per_s']:.1f}" for v in labels]
        cpu = [f"{cpu_ms(by[v]):.2f}" for v in labels]
        paired = [f"{changes[v][0][index]:+.1%} / {changes[v][1][index]:+.1%}" for v in labels[:-1]]
        return f"| {index + 1} | {' | '.join(rates)} | {' | '.join(cpu)} | {' | '.join(paired)} |"

    rates = " | ".join(f"{median[v]['req_per_s']:.1f}" for v in labels)
    cpu = " | ".join(f"{median[v]['frontend_cpu_ms'] + median[v]['worker_cpu_ms']:.2f}" for v in labels)
    paired = " | ".join(
        f"{statistics.median(changes[v][0]):+.1%} / {statistics.median(changes[v][1]):+.1%}" for v in labels[:-1]
    )
    medians_row = f"| median | {rates} | {cpu} | {paired} |"
    change, cpu_change = (statistics.median(values) for values in changes["all_on"])
    verdict = "holds" if min(change, cpu_change) >= -TARGET else "MISSED"
    spread = max(run_to_run_spread(rounds, label, "req_per_s") for label in labels)
    split = [
        f"| {v} | {median[v]['frontend_cpu_ms']:.2f} | {median[v]['worker_cpu_ms']:.2f} | "
        f"{median[v]['frontend_cpu_ms'] - median['off']['frontend_cpu_ms']:+.2f} | "
        f"{median[v]['worker_cpu_ms'] - median['off']['worker_cpu_ms']:+.2f} |"
        for v in labels
    ]
    return "\n".join([
        "## What metrics and drift detection cost",
        "",
        f"`python -m scripts.bench.metrics_cost` ({results['date']}, {results['machine']}): `{results['model']}` "
        f"as configured, with the handlers' metrics and live drift test on (the defaults), with metrics only "
        f"(`drift: false`) and with both off (`metrics: false`): three TorchServes running at once, "
        f"{results['clients']} closed-loop clients sending the 451x300 JPEG to one of them at a time, switched "
        f"every {results['duration_s']:g} s (after 1 s of warm-up), {len(rounds)} cycles with the order rotating, "
        "after 10 s of load on each (the Java frontend's first seconds). Each cycle compares the three variants "
        "measured seconds apart: the shared machine's speed drifts over minutes, by far more than the cost "
        "measured here. Beside req/s, the CPU time the loaded server (Java frontend and workers, from /proc) "
        "spent per request. With metrics on, each batch sends TorchServe a few metric lines (stage times, batch "
        "fill, outcomes) and each request one (the top-1 probability), which the frontend parses into its "
        "Prometheus registry. With drift on, each batch's features are copied into the worker's window, and every "
        "100 images a background thread (at nice 19) runs the MMD test (the last 100 images vs a reference of "
        "100, 200 permutations) while the worker goes on serving.",
        "",
        f"| cycle | {' | '.join(f'{v} req/s' for v in labels)} | {' | '.join(f'{v} CPU ms/req' for v in labels)} "
        "| all on vs off: req/s / CPU | metrics only vs off: req/s / CPU |",
        "| --- |" + " --- |" * (3 * len(labels) - 1),
        *(row(index, points) for index, points in enumerate(rounds)),
        medians_row,
        "",
        "The CPU columns of the comparisons are the throughput change each variant's CPU per request implies on "
        "saturated cores (off's CPU / the variant's - 1). Where the CPU goes, medians (ms per request):",
        "",
        "| variant | frontend | workers | frontend vs off | workers vs off |",
        "| --- | --- | --- | --- | --- |",
        *split,
        "",
        f"Target: at most {TARGET:.0%} lower throughput with metrics and drift on than with both off, judged on "
        f"the medians of the per-cycle comparisons: **{verdict}**: throughput {change:+.1%}, CPU per request "
        f"{cpu_change:+.1%} as throughput. The same variant's throughput varied by up to {spread:.0%} over the "
        "run: hence the pairing.",
    ])  # fmt: skip


def run_to_run_spread(rounds: list[list[dict]], variant: str, stat: str) -> float:
    """max / min - 1 of one variant's `stat` ("req_per_s", or "cpu_ms" per request) over the rounds."""
    chosen = [point for points in rounds for point in points if point["variant"] == variant]
    values = [cpu_ms(point) if stat == "cpu_ms" else point[stat] for point in chosen]
    return max(values) / min(values) - 1


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8, help="seconds per slice of load on one variant")
    parser.add_argument("--cycles", type=int, default=12, help="each variant in turn, N times")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    return parser


def main(args: argparse.Namespace) -> None:
    results = run_interleaved(args.model, VARIANTS, args.cycles, args.clients, args.duration)
    publish("metrics_cost", render_section(results), results, args.output, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
