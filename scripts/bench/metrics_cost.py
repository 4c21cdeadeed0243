"""What observing the models costs: one model served with the handlers' metrics and live
drift test on (the defaults), with metrics only, and with both off, all three served at
once and loaded in turn every few seconds (`interleaved`) -> its section of
docs/benchmarks.md. Target: at most 5 % lower throughput with everything on than off.

    python -m scripts.bench.metrics_cost             # make bench-metrics: mobilenet_v2, 8 clients
"""

import argparse
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

import yaml

from scripts.bench.doc import DOCUMENT, about_the_run, markdown_table, publish
from scripts.bench.harness import WARMUP_S, images, measure, model_config, paused, torchserve
from scripts.building.archive import build_archive
from scripts.zoo import REPO, get_model

VARIANTS = {
    "all_on": {},  # metrics and drift, as archived
    "metrics_only": {"handler": {"drift": False}},
    "off": {"handler": {"metrics": False, "drift": False}},
}
TARGET = 0.05  # at most this much lower throughput with everything on


def archive_variants(model: str, store: Path, variants: dict[str, dict]) -> dict[str, str]:
    """{label: settings} -> {label: archive name}: the model's archive by the one recipe,
    with each variant's TorchServe keys and `handler:` keys laid over its YAML."""
    spec, base = get_model(model), model_config(model)
    names = {}
    for label, settings in variants.items():
        config = {**base, **settings, "handler": {**base.get("handler", {}), **settings.get("handler", {})}}
        config_file = store / f"{model}_{label}.yaml"
        config_file.write_text(yaml.safe_dump(config))
        build_archive(spec, REPO / "build" / spec.artifact, store, f"{model}_{label}", config_file)
        names[label] = f"{model}_{label}"
    return names


def interleaved(
    model: str, variants: dict[str, dict], cycles: int, clients: int, slice_s: float, warmup: float = WARMUP_S
) -> list[list[dict]]:
    """Every variant served at once, each in a TorchServe of its own, the load switched from
    one to the next every `slice_s` seconds for `cycles` cycles, the order rotating, the
    others paused meanwhile: the machine's speed drifts over minutes, so variants measured
    seconds apart compare far better than variants measured minutes apart. -> each cycle's
    points (dicts with a "variant")."""
    body = images()["small"]
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as workdir, ExitStack() as stack:
        store = Path(workdir)
        names = archive_variants(model, store, variants)
        targets = {}
        for label, name in names.items():
            (store / f"workers-{label}").mkdir()
            targets[label] = stack.enter_context(torchserve(store, [name], label, registry=store / f"workers-{label}"))
        for label in targets:  # each warmed, alone
            with paused(*(t.pid for other, t in targets.items() if other != label)):
                measure(targets[label], names[label], body, clients, warmup, warmup=0)
        rounds = []
        for cycle in range(cycles):
            order = list(targets)[cycle % len(targets) :] + list(targets)[: cycle % len(targets)]
            points = []
            for label in order:
                with paused(*(t.pid for other, t in targets.items() if other != label)):
                    points.append(
                        {**vars(measure(targets[label], names[label], body, clients, slice_s, 1)), "variant": label}
                    )
            rounds.append(points)
        return rounds


def cpu_ms(point: dict) -> float:
    """CPU ms per request of the whole server: TorchServe's frontend and its workers."""
    return point["frontend_cpu_ms"] + point["worker_cpu_ms"]


def changes(cycle: list[dict], variant: str) -> tuple[float, float]:
    """`variant` against "off" measured seconds apart: (its req/s / off's - 1, the throughput
    change its CPU per request implies on saturated cores: off's CPU / its CPU - 1)."""
    by = {point["variant"]: point for point in cycle}
    return by[variant]["req_per_s"] / by["off"]["req_per_s"] - 1, cpu_ms(by["off"]) / cpu_ms(by[variant]) - 1


def render_section(results: dict) -> str:
    labels, rounds = list(VARIANTS), results["rounds"]
    compared = labels[:-1]
    rows = []
    for index, cycle in enumerate(rounds):
        by = {point["variant"]: point for point in cycle}
        rows.append(
            [
                index + 1,
                *(f"{by[v]['req_per_s']:.1f}" for v in labels),
                *(f"{cpu_ms(by[v]):.2f}" for v in labels),
                *("{:+.1%} / {:+.1%}".format(*changes(cycle, v)) for v in compared),
            ]
        )
    medians = {
        v: [statistics.median(c[i] for c in (changes(cycle, v) for cycle in rounds)) for i in (0, 1)] for v in compared
    }
    per_variant = {v: [p for cycle in rounds for p in cycle if p["variant"] == v] for v in labels}
    rows.append(
        [
            "median",
            *(f"{statistics.median(p['req_per_s'] for p in per_variant[v]):.1f}" for v in labels),
            *(f"{statistics.median(cpu_ms(p) for p in per_variant[v]):.2f}" for v in labels),
            *(f"{medians[v][0]:+.1%} / {medians[v][1]:+.1%}" for v in compared),
        ]
    )
    change, cpu_change = medians["all_on"]
    verdict = "holds" if min(change, cpu_change) >= -TARGET else "MISSED"
    header = [
        "cycle",
        *(f"{v} req/s" for v in labels),
        *(f"{v} CPU ms/req" for v in labels),
        *(f"{v} vs off: req/s / CPU" for v in compared),
    ]
    return "\n".join(
        [
            "## What metrics and drift detection cost",
            "",
            f"`make bench-metrics` (`scripts/bench/metrics_cost.py`, {results['date']}, {results['machine']}): "
            f"`{results['model']}` with the handlers' metrics and live drift test on (the defaults), with metrics only "
            "(`drift: false`) and with both off (`metrics: false`): three TorchServes at once, "
            f"{results['clients']} closed-loop clients sending the 451x300 JPEG to one at a time (the others paused), "
            f"switched every {results['slice_s']:g} s, {len(rounds)} cycles with the order rotating, after "
            f"{results['warmup_s']:g} s of load on each. Each cycle compares variants measured seconds apart: the "
            "machine's speed drifts over minutes by more than the cost measured. The CPU column of a comparison is the "
            "throughput change that variant's CPU per request implies on saturated cores.",
            "",
            *markdown_table(header, rows),
            "",
            f"Target: at most {TARGET:.0%} lower throughput with metrics and drift on than with both off (the "
            f"medians of the per-cycle comparisons): **{verdict}**: throughput {change:+.1%}, CPU per request "
            f"{cpu_change:+.1%}.",
        ]
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--slice", type=float, default=8, help="seconds of load on one variant at a time")
    parser.add_argument("--cycles", type=int, default=12, help="each variant in turn, N times")
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds of load on each server first")
    parser.add_argument("--output", type=Path, default=DOCUMENT, help="the document ('-': print only)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    return parser


def main(args: argparse.Namespace) -> None:
    rounds = interleaved(args.model, VARIANTS, args.cycles, args.clients, args.slice, args.warmup)
    results = {
        **about_the_run(),
        "model": args.model,
        "clients": args.clients,
        "slice_s": args.slice,
        "warmup_s": args.warmup,
        "rounds": rounds,
    }
    publish(
        "metrics_cost", render_section(results), results, None if str(args.output) == "-" else args.output, args.json
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
