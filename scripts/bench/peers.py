"""Ours against LitServe, seconds apart, with where each server's CPU goes per request:
the answer to "why not 1.2x LitServe" in numbers -> the peers section of docs/benchmarks.md.

    python -m scripts.bench.peers              # make bench-peers

Per model: our archive in a TorchServe and LitServe (scripts/bench/litserve_app.py, the
same compiled file, the same workers and threads, its batching at the best setting of the
last `make bench`) run at once, ours warmed by minutes of load first (TorchServe's Java
frontend goes on compiling its hot paths for minutes); the load (the 451x300 JPEG,
closed-loop clients) switches between them every slice, at each concurrency, for several cycles in rotating order. The
shared machine's speed drifts over minutes; servers measured seconds apart compare far
better than servers measured minutes apart. The server not loaded is stopped (SIGSTOP)
meanwhile: LitServe's processes poll their queues, about half a core while idle. CPU time
per request is read from /proc for each server's processes (TorchServe: its Java frontend
and its workers apart) and for the load generator; beside them, the CPU the compiled model
alone needs per image on the same processes, threads and batch (endtoend.ceiling, in
every cycle with both servers stopped).

On saturated cores req/s = cores / CPU per request, so the ratio of two servers' req/s is
the inverse ratio of their CPU per request (plus whatever idles a core): a server can be
1.2x another only by spending at most 1/1.2 of its CPU per request.
"""

import argparse
import datetime
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from functools import partial
from pathlib import Path

import yaml

from scripts.bench.batch_delay import litserve_settings
from scripts.bench.cpu import stopped
from scripts.bench.endtoend import ceiling, images, litserve_request, litserve_server, measure
from scripts.bench.loadgen import closed_loop_raw
from scripts.bench.report import ceiling_cpu_ms, cpu_shortfall, lone_client_breakdown, machine, publish
from scripts.bench.side_by_side import FRONTEND_WARMUP_S, WARMUP_S
from scripts.serve.server import local_torchserve
from scripts.zoo import REPO, get_model, handler_module

MODELS = ("mobilenet_v2", "resnet18")
CONCURRENCY = (1, 8, 32)
LOADED = (8, 32)  # where the target holds: ours / LitServe req/s >= TARGET (issue 15)
TARGET = 1.2
SERVERS = ("ours", "litserve")


def serve_both(stack: ExitStack, model: str, settings: tuple[int, float]) -> dict[str, dict]:
    """Our TorchServe and LitServe for `model`, both started -> {server: how to load it}."""
    body = images()["small"]
    registry = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="workers-")))  # only ours counted
    ours = stack.enter_context(
        local_torchserve(REPO / "model_store", [model], env={"TS_ZOO_WORKER_REGISTRY": str(registry)})
    )
    litserve = stack.enter_context(litserve_server(model, *settings))
    headers, form = litserve_request(body)
    return {
        "ours": {"url": ours.inference, "headers": ours.keys.header("inference"), "body": body, "method": "PUT",
                 "session": ours.process.pid, "metrics": ours.metrics, "stages": None},
        "litserve": {"url": litserve.url, "headers": headers, "body": form, "method": "POST",
                     "session": litserve.session, "metrics": None, "stages": litserve.stages},
    }  # fmt: skip


def others(servers: dict[str, dict], label: str | None) -> list[int]:
    """The sessions of every server but `label`'s (None: all), to stop while it is measured."""
    return [server["session"] for name, server in servers.items() if name != label]


def run(cycles: int, slice_s: float, warmup: float) -> dict:
    measured = {}
    for model in MODELS:
        settings = litserve_settings(model)
        points, ceilings = [], []
        with ExitStack() as stack:
            servers = serve_both(stack, model, settings)
            for label, server in servers.items():  # ours: the frontend JIT's first minutes, not measured
                with stopped(*others(servers, label)):
                    closed_loop_raw(server["url"], f"/predictions/{model}", server["headers"], server["body"], 8,
                                    warmup if label == "ours" else WARMUP_S, method=server["method"])  # fmt: skip
            for cycle in range(cycles):
                with stopped(*others(servers, None)):
                    ceilings.append(ceiling(model, 3))  # the model alone, in the same minute as the servers
                for clients in CONCURRENCY:
                    turn = SERVERS[cycle % 2 :] + SERVERS[: cycle % 2]
                    for label in turn:
                        server = servers[label]
                        with stopped(*others(servers, label)):
                            point = measure(label, server["url"], server["headers"], model, "small", server["body"],
                                            clients, slice_s, metrics=server["metrics"], session=server["session"],
                                            warmup=1, method=server["method"], stages=server["stages"])  # fmt: skip
                        points.append({**asdict(point), "cycle": cycle + 1})
        measured[model] = {"litserve_settings": list(settings), "ceilings": ceilings, "points": points}
        print(f"{model}: done", file=sys.stderr, flush=True)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "cores": handler_module("cpu_threads").usable_cores(),
        "cycles": cycles,
        "slice_s": slice_s,
        "warmup_s": warmup,
        "models": measured,
    }


def cpu_per_request(point: dict) -> float:
    """All the server's CPU per request (a peer's is all "workers": scripts/bench/cpu.py)."""
    return (point["frontend_cpu_ms"] or 0.0) + point["worker_cpu_ms"]


def model_cpu_ms(ceilings: list[dict]) -> float:
    """CPU ms per image of the compiled model alone, on the served processes, threads and
    batch: the median of the cycles' measurements."""
    return statistics.median(map(ceiling_cpu_ms, ceilings))


def server_median(points: list[dict], server: str, value: Callable[[dict], float]) -> float:
    """The median of `value` over one server's points."""
    return statistics.median(value(p) for p in points if p["server"] == server)


def summary(results: dict, model: str, clients: int) -> dict[str, float]:
    """Medians over the cycles of one model at one concurrency."""
    points = [p for p in results["models"][model]["points"] if p["concurrency"] == clients]
    median = partial(server_median, points)

    ratios = []
    for cycle in {p["cycle"] for p in points}:
        pair = {p["server"]: p["req_per_s"] for p in points if p["cycle"] == cycle}
        ratios.append(pair["ours"] / pair["litserve"])
    parts = {
        "frontend": median("ours", lambda p: p["frontend_cpu_ms"]),
        "workers": median("ours", lambda p: p["worker_cpu_ms"]),
    }
    return {
        **parts,
        "ours_cpu": parts["frontend"] + parts["workers"],  # the parts' medians, so that the parts add up
        "ours_rps": median("ours", lambda p: p["req_per_s"]),
        "litserve_rps": median("litserve", lambda p: p["req_per_s"]),
        "ratio": statistics.median(ratios),
        "ratios": sorted(ratios),
        "ours_p50": median("ours", lambda p: p["p50_ms"]),
        "litserve_p50": median("litserve", lambda p: p["p50_ms"]),
        "litserve_cpu": median("litserve", cpu_per_request),
        "ours_client": median("ours", lambda p: p["client_cpu_ms"]),
        "litserve_client": median("litserve", lambda p: p["client_cpu_ms"]),
    }


def lone_breakdown(results: dict, model: str) -> str:
    """Where a lone client's request spends its time, ours and LitServe's, in words."""
    points = [p for p in results["models"][model]["points"] if p["concurrency"] == 1]
    delay = yaml.safe_load(get_model(model).config_file.read_text())["maxBatchDelay"]
    timeout = results["models"][model]["litserve_settings"][1] * 1000
    ours, litserve = ([p for p in points if p["server"] == server] for server in SERVERS)
    return lone_client_breakdown(ours, litserve, delay, timeout)


def shortfall(results: dict, model: str, clients: int, model_ms: float) -> str:
    """Why ours is below TARGET x LitServe's req/s at `clients`, over the cycles (cpu_shortfall)."""
    return cpu_shortfall(model, clients, summary(results, model, clients), model_ms, results["cores"], TARGET)


def render_section(results: dict) -> str:
    rows, why, lone_clients, met = [], [], [], True
    for model, entry in results["models"].items():
        model_ms = model_cpu_ms(entry["ceilings"])
        for clients in CONCURRENCY:
            s = summary(results, model, clients)
            met = met and (clients not in LOADED or s["ratio"] >= TARGET)
            rows.append(
                f"| {model} | {clients} | {s['ours_rps']:.1f} | {s['litserve_rps']:.1f} | **{s['ratio']:.2f}x** "
                f"({s['ratios'][0]:.2f}-{s['ratios'][-1]:.2f}) | {s['ours_p50']:.0f} / {s['litserve_p50']:.0f} | "
                f"{s['ours_cpu']:.2f} ({s['frontend']:.2f} + {s['workers']:.2f}) | {s['litserve_cpu']:.2f} | "
                f"{s['ours_client']:.2f} / {s['litserve_client']:.2f} | {model_ms:.2f} |"
            )
        lone = summary(results, model, 1)
        lone_clients.append(
            f"- **{model}** {lone['ours_p50']:.1f} ms (ours) vs {lone['litserve_p50']:.1f} ms (LitServe): "
            f"{'met' if round(lone['ours_p50'], 1) <= round(lone['litserve_p50'], 1) else 'MISSED'}. "
            + lone_breakdown(results, model)
        )
        why += [shortfall(results, model, clients, model_ms) for clients in LOADED
                if summary(results, model, clients)["ratio"] < TARGET]  # fmt: skip
    settings = ", ".join(
        f"{model} max_batch_size {entry['litserve_settings'][0]}, batch_timeout "
        f"{entry['litserve_settings'][1] * 1000:g} ms"
        for model, entry in results["models"].items()
    )
    return "\n".join([
        "## Ours against LitServe, where the CPU goes",
        "",
        f"`make bench-peers` (`scripts/bench/peers.py`, {results['date']}, {results['machine']}): per model, "
        "our archive in a TorchServe and LitServe serving the same compiled file with the same workers and "
        f"threads ({settings}: its best in `make bench`'s tuning) run at once, ours warmed by "
        f"{results['warmup_s']:g} s of load first (TorchServe's Java frontend goes on compiling for minutes), "
        f"LitServe (Python, nothing to compile) by {WARMUP_S:g} s; "
        f"the load switches between them every {results['slice_s']:g} s (after 1 s of warm-up), at each "
        f"concurrency, for {results['cycles']} cycles in rotating order, so the two are always compared "
        "seconds apart; the one not loaded is stopped (SIGSTOP) meanwhile: LitServe's processes poll their "
        "queues, about half a core while idle. Medians over the cycles (the ratio's range in brackets). CPU ms "
        "per request from /proc: ours = TorchServe's Java frontend + its workers; LitServe = all its processes "
        "(its API server and inference workers); the load generator's own; *model alone* = the CPU the "
        "compiled model needs per image on the same processes, threads and batch, measured in every cycle with "
        "both servers stopped (median).",
        "",
        "| model | clients | ours req/s | LitServe req/s | ours / LitServe | p50 ms ours / LitServe | "
        "ours CPU ms/req (frontend + workers) | LitServe CPU ms/req | load generator ours / LitServe | "
        "model alone ms/img |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "A lone client, p50 (target: ours <= LitServe's), and where a lone request's time goes (each point's mean, "
        "the median over the cycles; ours from TorchServe's and the handler's own metrics):",
        "",
        *lone_clients,
        "",
        f"Target (ours >= {TARGET:g}x LitServe's req/s at {' and '.join(map(str, LOADED))} clients): "
        f"**{'met' if met else 'MISSED'}**."
        + (" Why, in this run's numbers (on saturated cores req/s = cores / CPU per request, so the req/s ratio "
           "is the inverse of the CPU ratio):" if why else ""),
        *(["", *why] if why else []),
    ])  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--slice", type=float, default=10, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=FRONTEND_WARMUP_S, help="seconds of load on our server first")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path)
    return parser


def main(args: argparse.Namespace) -> None:
    results = run(args.cycles, args.slice, args.warmup)
    publish("peers", render_section(results), results, args.output, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
