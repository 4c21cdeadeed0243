"""A lone client against batching: each model archived with several maxBatchDelay values
(how long TorchServe holds a partial batch for more requests), each served alone, for a
lone client's p50 and 32 clients' req/s; the FastAPI app and LitServe (its best batching
from the last `make bench`, else 8 / 5 ms) measured for a lone client in the same run
-> the batch_delay section of docs/benchmarks.md.

    python -m scripts.bench.batch_delay              # mobilenet_v2 and resnet18, delays 1 2 5 10 ms
"""

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from scripts.bench.endtoend import (
    fastapi_server,
    images,
    litserve_request,
    litserve_server,
    measure,
)
from scripts.bench.report import fastapi_split, lone_client_breakdown, publish
from scripts.bench.side_by_side import about_the_run, archive_variants, model_config
from scripts.serve.server import local_torchserve
from scripts.zoo import REPO, get_model

# ms. Not 0: TorchServe 0.12 takes an archive's maxBatchDelay, or config.properties' per-model
# one, only above 0, and serves 0 as its default of 100 ms (ModelManager, ConfigManager.getJsonIntValue).
DELAYS = (1, 2, 5, 10)


def litserve_settings(model: str, benchmarks: Path = REPO / "docs" / "benchmarks.json") -> tuple[int, float]:
    """LitServe's best batching for `model` in the last `make bench` run, else 8 / 5 ms."""
    try:
        return tuple(json.loads(benchmarks.read_text())["litserve"][model]["best"])
    except (OSError, KeyError, ValueError):
        return 8, 0.005


def check_served_delay(server, name: str, delay: int) -> None:
    """The maxBatchDelay TorchServe reports for `name` is the one measured."""
    served = server.manage("GET", f"/models/{name}").json()[0]["maxBatchDelay"]
    if served != delay:
        raise RuntimeError(f"{name} is served with maxBatchDelay {served} ms, not {delay}")


def run(models: list[str], rounds: int, duration: float) -> dict:
    return {**about_the_run(", ".join(models), 1, duration), "rounds": rounds,
            "models": {model: run_model(model, rounds, duration) for model in models}}  # fmt: skip


def run_model(model: str, rounds: int, duration: float) -> dict:
    body = images()["small"]
    variants = {str(delay): {"maxBatchDelay": delay} for delay in DELAYS}
    points = []
    with tempfile.TemporaryDirectory(prefix="bench-delay-") as workdir:
        names = archive_variants(model, Path(workdir), variants)
        order = list(names.items())
        for index in range(rounds):
            for label, name in order[index % len(order) :] + order[: index % len(order)]:
                with local_torchserve(Path(workdir), [name]) as server:
                    check_served_delay(server, name, int(label))
                    header = server.keys.header("inference")
                    for clients in (1, 32):
                        point = measure(label, server.inference, header, name, "small", body, clients, duration,
                                        metrics=server.metrics)  # fmt: skip
                        points.append({**asdict(point), "delay_ms": int(label)})
                        print(f"  {model} {label} ms, c={clients}: {point.req_per_s:.1f} req/s, "
                              f"p50 {point.p50_ms:.1f} ms", file=sys.stderr, flush=True)  # fmt: skip
    peers = {}
    with fastapi_server(get_model(model).architecture) as peer:
        peers["fastapi"] = asdict(measure("fastapi", peer.url, {}, model, "small", body, 1, duration,
                                          stages=peer.stages))  # fmt: skip
    headers, form = litserve_request(body)
    settings = litserve_settings(model)
    with litserve_server(model, *settings) as peer:
        peers["litserve"] = asdict(measure("litserve", peer.url, headers, model, "small", form, 1, duration,
                                           method="POST", stages=peer.stages))  # fmt: skip
    return {"configured_ms": model_config(model)["maxBatchDelay"], "litserve_settings": settings,
            "points": points, "peers": peers}  # fmt: skip


def render_model(model: str, entry: dict) -> list[str]:
    def median(delay: int, clients: int, stat: str) -> float:
        values = [p[stat] for p in entry["points"] if p["delay_ms"] == delay and p["concurrency"] == clients]
        return statistics.median(values)

    peers, configured = entry["peers"], entry["configured_ms"]
    rows = [
        f"| {delay}{' (configured)' if delay == configured else ''} | {median(delay, 1, 'p50_ms'):.1f} | "
        f"{median(delay, 1, 'p99_ms'):.1f} | {median(delay, 32, 'req_per_s'):.1f} |"
        for delay in DELAYS
    ]
    ours = median(configured, 1, "p50_ms")
    fastapi, litserve = peers["fastapi"]["p50_ms"], peers["litserve"]["p50_ms"]
    met = ours <= fastapi and ours <= litserve
    batch, timeout = entry["litserve_settings"]
    return [
        f"**{model}** (LitServe: batch {batch}, timeout {timeout * 1000:g} ms):",
        "",
        "| maxBatchDelay ms | c=1 p50 ms | c=1 p99 ms | c=32 req/s |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        f"A lone client, p50: ours {ours:.1f} ms (as configured), the FastAPI app {fastapi:.1f} ms, LitServe "
        f"{litserve:.1f} ms. Target (ours <= both): **{'met' if met else 'MISSED'}**.",
        "",
        *lone_lines(entry, timeout * 1000),
    ]


def lone_lines(entry: dict, timeout_ms: float) -> list[str]:
    """Where a lone request's time went, ours (as configured) and LitServe's, in runs that recorded it."""
    configured = entry["configured_ms"]
    ours = [p for p in entry["points"] if p["delay_ms"] == configured and p["concurrency"] == 1]
    if not all(p.get("stage_ms") for p in ours):  # a run from before the metrics were read
        return []
    peers = entry["peers"]
    return [
        lone_client_breakdown(ours, [peers["litserve"]], configured, timeout_ms) + fastapi_split(peers["fastapi"]),
        "",
    ]


def render_section(results: dict) -> str:
    return "\n".join([
        "## A lone client and the batch delay",
        "",
        f"`python -m scripts.bench.batch_delay` ({results['date']}, {results['machine']}): each model "
        "archived with each `maxBatchDelay`, each served alone, a lone client's latency and 32 clients' "
        f"throughput ({results['duration_s']:g} s points, medians of {results['rounds']} rounds); the FastAPI "
        "app and LitServe (its best batching in `make bench`'s tuning) with a lone client in the same run. No "
        "row for 0 ms: TorchServe 0.12 takes an archive's `maxBatchDelay`, or config.properties' per-model one, "
        "only above 0, and serves 0 as its default of 100 ms (checked: each server's delay is read back from "
        "the management API before it is measured). 1 ms is the least a lone request can wait for company.",
        "",
        *(line for model, entry in results["models"].items() for line in render_model(model, entry)),
    ]).rstrip()  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10, help="seconds per point")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path)
    return parser


def main(args: argparse.Namespace) -> None:
    results = run(args.models, args.rounds, args.duration)
    publish("batch_delay", render_section(results), results, args.output, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
