"""How close 8 clients get to the compiled model alone, three runs in a row, for
mobilenet_v2 and face_pixelizer, with where every request's CPU time goes (TorchServe's
Java frontend, the workers, the load generator on the same cores); then TorchServe's
frontend settings side by side on mobilenet_v2 -> the ceiling section of docs/benchmarks.md.

    python -m scripts.bench.ceiling              # make bench-ceiling

Each model is served by one TorchServe for all the runs, as in service: warmed first by
minutes of load (the Java frontend's JIT settles only then), and stopped (SIGSTOP) while
anything else is measured. Each run: the ceiling (scripts/bench/endtoend.py::ceiling: as
many processes as workers, each with the worker's batch and threads, on ready-made
tensors, every server stopped), then the model served at 8 clients. The frontend
settings: one warmed TorchServe each, the load switched between them (run_interleaved).
"""

import argparse
import datetime
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from scripts.bench.endtoend import ceiling, images, measure
from scripts.bench.report import machine, publish
from scripts.bench.side_by_side import FRONTEND_WARMUP_S, run_interleaved, serve_apart, stopped_but, warm_each
from scripts.zoo import REPO, handler_module

MODELS = ("mobilenet_v2", "face_pixelizer")
CLIENTS = 8
TARGET = 0.8
# TorchServe frontend settings (config.properties) tried on mobilenet_v2; TorchServe's
# defaults: Netty threads = cores for the HTTP side and for the worker side, heap buffers.
FRONTEND_VARIANTS = {
    "as configured": {},
    "1 Netty thread each side": {"number_of_netty_threads": "1", "netty_client_threads": "1"},
    "4 Netty threads each side": {"number_of_netty_threads": "4", "netty_client_threads": "4"},
    "direct buffers": {"prefer_direct_buffer": "true"},
}


def run(runs: int, cycles: int, duration: float, warmup: float) -> dict:
    body = images()["small"]
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as workdir, ExitStack() as stack:
        store = Path(workdir)
        for model in MODELS:
            (store / f"{model}.mar").symlink_to(REPO / "model_store" / f"{model}.mar")
        servers = serve_apart(stack, store, {model: model for model in MODELS})
        warm_each(servers, body, CLIENTS, warmup)  # a server in service: its frontend's JIT has settled
        measured = []
        for index in range(runs):
            for model, (server, _name) in servers.items():
                with stopped_but(servers, None):  # the model alone, on an otherwise idle machine
                    limit = ceiling(model, 5)
                with stopped_but(servers, model):
                    point = measure("ours", server.inference, server.keys.header("inference"), model, "small", body,
                                    CLIENTS, duration, session=server.process.pid, warmup=1)  # fmt: skip
                measured.append({"run": index + 1, "model": model, "ceiling": limit, "ours": asdict(point)})
                print(f"run {index + 1}, {model}: {point.req_per_s:.1f} / {limit['served']:.1f} = "
                      f"{point.req_per_s / limit['served']:.2f}x", file=sys.stderr, flush=True)  # fmt: skip
    names = {label.replace(" ", "_"): label for label in FRONTEND_VARIANTS}  # archive names take no spaces
    variants = {name: {} for name in names}  # the same archive, another server setting each
    overrides = {name: FRONTEND_VARIANTS[label] for name, label in names.items()}
    frontend = run_interleaved(MODELS[0], variants, cycles, CLIENTS, duration, overrides, warmup)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "cores": handler_module("cpu_threads").usable_cores(),
        "duration_s": duration,
        "warmup_s": warmup,
        "runs": measured,
        "frontend": [
            {**p, "round": cycle + 1, "variant": names[p["variant"]]}
            for cycle, points in enumerate(frontend["rounds"])
            for p in points
        ],
    }


def cpu_budget(entry: dict, cores: int) -> dict[str, float]:
    """One run's CPU per request (ms): what each part spent, what the model alone needs
    per image on the same processes and threads, and what the target allows in all."""
    limit, ours = entry["ceiling"], entry["ours"]
    return {
        "frontend": ours["frontend_cpu_ms"],
        "workers": ours["worker_cpu_ms"],
        "clients": ours["client_cpu_ms"],
        "model": 1000 * limit["workers"] * limit["threads"] / limit["served"],
        "allowed": 1000 * cores / (TARGET * limit["served"]),
    }


def render_section(results: dict) -> str:
    cores = results["cores"]
    rows, ratios = [], {model: [] for model in MODELS}
    for entry in results["runs"]:
        ours, limit = entry["ours"], entry["ceiling"]
        ratio = ours["req_per_s"] / limit["served"]
        ratios[entry["model"]].append(ratio)
        cpu = cpu_budget(entry, cores)
        rows.append(
            f"| {entry['run']} | {entry['model']} | {limit['served']:.1f} | {ours['req_per_s']:.1f} | {ratio:.2f}x | "
            f"{cpu['frontend']:.2f} | {cpu['workers']:.2f} | {cpu['clients']:.2f} | {cpu['model']:.2f} |"
        )
    met = all(min(values) >= TARGET for values in ratios.values())
    why = []
    for model in MODELS:
        budgets = [cpu_budget(e, cores) for e in results["runs"] if e["model"] == model]
        median = {key: statistics.median(b[key] for b in budgets) for key in budgets[0]}
        spent = median["frontend"] + median["workers"] + median["clients"]
        rest = spent - median["model"]
        why.append(
            f"- **{model}**: at {TARGET:g}x its ceiling a request may cost {median['allowed']:.1f} ms of CPU in all "
            f"({cores} cores ÷ {TARGET:g}x the ceiling's img/s); the model alone takes {median['model']:.1f} of "
            f"them, leaving {median['allowed'] - median['model']:.1f} ms for everything else. Measured: "
            f"{spent:.1f} ms per request in all, {rest:.1f} ms beyond the model: the frontend "
            f"{median['frontend']:.1f}, the load generator {median['clients']:.1f}, and in the workers "
            f"{median['workers'] - median['model']:.1f} (decoding, preprocessing, answering, TorchServe's "
            "Python worker loop)."
        )
    variants = []
    for label in FRONTEND_VARIANTS:
        points = [p for p in results["frontend"] if p["variant"] == label]
        rates = " / ".join(f"{p['req_per_s']:.1f}" for p in points)
        variants.append(
            f"| {label} | {rates} | {statistics.median(p['req_per_s'] for p in points):.1f} | "
            f"{statistics.median(p['frontend_cpu_ms'] for p in points):.2f} | "
            f"{statistics.median(p['p99_ms'] for p in points):.0f} |"
        )
    return "\n".join([
        "## How close to the ceiling, three runs in a row",
        "",
        f"`make bench-ceiling` (`scripts/bench/ceiling.py`, {results['date']}, {results['machine']}): each run "
        f"measures the ceiling (the compiled model alone, as many processes as workers, the served batch and "
        f"threads, ready-made tensors) and then the model served alone at {CLIENTS} clients "
        f"({results['duration_s']:g} s; each model has one TorchServe for all three runs, warmed by "
        f"{results['warmup_s']:g} s of the same load first, as a server in service: the Java frontend's JIT "
        "goes on compiling for minutes, and stopped while anything else is measured). CPU ms per request, read from "
        "/proc: TorchServe's Java frontend, its workers, and the load generator, which shares the cores; "
        "*model alone*: the CPU the ceiling's processes spend per image.",
        "",
        "| run | model | ceiling img/s | ours req/s | ratio | frontend | workers | clients | model alone |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Target (>= {TARGET:g}x in three consecutive runs, both models): **{'met' if met else 'MISSED'}**.",
        "Where the CPU goes (medians of the runs):",
        "",
        *why,
        "",
        f"TorchServe's frontend settings, mobilenet_v2 at {CLIENTS} clients: one TorchServe per setting, each "
        f"warmed by {results['warmup_s']:g} s of load, the load switched between them every "
        f"{results['duration_s']:g} s in rotating order, the others stopped meanwhile (req/s of each cycle, median):",
        "",
        "| frontend setting | req/s per cycle | median req/s | frontend CPU ms/request | p99 ms |",
        "| --- | --- | --- | --- | --- |",
        *variants,
    ])  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=3, help="cycles of the frontend settings")
    parser.add_argument("--warmup", type=float, default=FRONTEND_WARMUP_S, help="seconds of load on each server first")
    parser.add_argument("--duration", type=float, default=15, help="seconds per point")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path)
    return parser


def main(args: argparse.Namespace) -> None:
    results = run(args.runs, args.cycles, args.duration, args.warmup)
    publish("ceiling", render_section(results), results, args.output, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
