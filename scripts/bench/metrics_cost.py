"""What the handlers' metrics cost: one model served with them on and off (the YAML's
`metrics` setting), side by side in one run -> the metrics_cost section of
docs/benchmarks.md. Target: at most 5 % lower throughput with them on.

    python -m scripts.bench.metrics_cost             # mobilenet_v2 (the cheapest model), 8 clients
"""

import argparse
import json
from pathlib import Path

from scripts.bench.side_by_side import measured, medians, write_section
from scripts.zoo import REPO

VARIANTS = {"on": {}, "off": {"handler": {"metrics": False}}}
TARGET = 0.05  # at most this much lower throughput with metrics on


def render_section(results: dict) -> str:
    rows = []
    for index, points in enumerate(results["rounds"], start=1):
        by = {p["variant"]: p for p in points}
        rows.append((str(index), by["on"], by["off"]))
    median = medians(results["rounds"])
    rows.append(("median", median[("on", None)], median[("off", None)]))
    lines = [
        f"| {label} | {on['req_per_s']:.1f} | {on['p99_ms']:.0f} | {off['req_per_s']:.1f} | {off['p99_ms']:.0f} | "
        f"{on['req_per_s'] / off['req_per_s'] - 1:+.1%} |"
        for label, on, off in rows
    ]
    change = median[("on", None)]["req_per_s"] / median[("off", None)]["req_per_s"] - 1
    verdict = "holds" if change >= -TARGET else "MISSED"
    return "\n".join([
        "## What the metrics cost",
        "",
        f"`python -m scripts.bench.metrics_cost` ({results['date']}, {results['machine']}): `{results['model']}` "
        f"as configured, with the handlers' metrics on and off (`metrics: false` in its YAML), each in a "
        f"TorchServe of its own, {results['clients']} closed-loop clients sending the 451x300 JPEG, "
        f"{results['duration_s']:g} s per point, {len(results['rounds'])} rounds in one run. With metrics on, each "
        "batch sends TorchServe a few metric lines (stage times, batch fill, HandlerTime) and each request one "
        "or two (its outcome, the top-1 probability), which the frontend parses into its Prometheus registry.",
        "",
        "| round | on req/s | on p99 ms | off req/s | off p99 ms | on vs off |",
        "| --- | --- | --- | --- | --- | --- |",
        *lines,
        "",
        f"Target: at most {TARGET:.0%} lower throughput with metrics on, judged on the medians: **{verdict}** "
        f"({change:+.1%}). Live drift detection is not built yet, so it is not part of this measurement.",
    ])  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=15, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=3, help="on, off, on, off, ...: run-to-run spread")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    return parser


def main(args: argparse.Namespace) -> None:
    results = measured(args.model, VARIANTS, args.rounds, None, args.clients, args.duration)
    section = render_section(results)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    write_section(args.output, "metrics_cost", section)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
