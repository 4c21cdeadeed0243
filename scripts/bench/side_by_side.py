"""Variants of one model measured side by side in one run: each archived by the project's
one recipe with its own settings, served alone in a TorchServe of its own, one after the
other, for several rounds (the spread between rounds is the machine's noise), at 8
closed-loop clients, each point after 10 s of the same load (the Java frontend compiles
its hottest paths in its first seconds, and goes on for minutes: FRONTEND_WARMUP_S). CPU
time per request of the frontend and the workers is read from /proc beside req/s: on a
shared machine it varies far less than throughput. Used by scripts/bench/scaling.py and
scripts/bench/metrics_cost.py."""

import datetime
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import yaml

from scripts.bench.cpu import stopped
from scripts.bench.endtoend import images, measure
from scripts.bench.loadgen import closed_loop_raw
from scripts.bench.report import machine
from scripts.build.archive import build_archive
from scripts.serve.server import Server, local_torchserve
from scripts.zoo import REPO, get_model

WARMUP_S = 10.0
# The Java frontend's JIT goes on compiling for minutes: its CPU per request fell from 2.6
# to 0.65 ms over the first ~3 minutes of load in `make bench-peers` (mobilenet_v2, 8-32
# clients). Where the frontend's share matters, servers are warmed this long first.
FRONTEND_WARMUP_S = 120.0


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


def run_variant(store: Path, name: str, label: str, workers: list[int] | None, clients: int, duration: float,
                overrides: dict[str, str] | None = None):  # fmt: skip
    """One TorchServe serving only this variant: a point at each worker count (scaled
    through the management API), or one point as configured (workers=None). `overrides`:
    config.properties settings of this server."""
    points, body = [], images()["small"]
    registry = Path(tempfile.mkdtemp(prefix="workers-"))  # no other server's workers counted
    env = {"TS_ZOO_WORKER_REGISTRY": str(registry)}
    with local_torchserve(store, [name], overrides=overrides, env=env) as server:
        for count in workers or [None]:
            if count is not None:
                scale(server, name, count)
            point = measure(label, server.inference, server.keys.header("inference"), name, "small", body, clients,
                            duration, session=server.process.pid, warmup=WARMUP_S)  # fmt: skip
            points.append({**asdict(point), "workers": count, "variant": label})
            print(f"  {label:5} {count or '-'} workers: {point.req_per_s:6.1f} req/s, p99 {point.p99_ms:6.1f} ms, "
                  f"CPU ms/request: frontend {point.frontend_cpu_ms:.2f}, workers {point.worker_cpu_ms:.2f}",
                  file=sys.stderr, flush=True)  # fmt: skip
    return points


def measured(model: str, variants: dict[str, dict], rounds: int, workers: list[int] | None, clients: int,
             duration: float) -> dict:  # fmt: skip
    """run_rounds, with what a report says about the run."""
    rounds_points = run_rounds(model, variants, rounds, workers, clients, duration)
    return {**about_the_run(model, clients, duration), "workers": workers, "rounds": rounds_points}


def about_the_run(model: str, clients: int, duration: float) -> dict:
    """What a report says about a side-by-side run besides its points."""
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "model": model,
        "clients": clients,
        "duration_s": duration,
        "image": "451x300 JPEG",
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


def run_interleaved(model: str, variants: dict[str, dict], cycles: int, clients: int, slice_s: float,
                    overrides: dict[str, dict[str, str]] | None = None, warmup: float = WARMUP_S) -> dict:  # fmt: skip
    """Every variant served at once, each by a TorchServe of its own, the load switched
    from one to the next every `slice_s` seconds for `cycles` cycles (the order rotating):
    the machine's speed drifts over minutes, so variants measured seconds apart compare
    far better than variants measured minutes apart. Only the loaded server runs: the
    others are stopped meanwhile (cpu.stopped; each has its own worker registry, so its
    workers do not count as busy). `overrides`: {label: config.properties settings of
    that variant's server}; `warmup`: seconds of load on each server first."""
    body = images()["small"]
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as workdir, ExitStack() as stack:
        store = Path(workdir)
        servers = serve_apart(stack, store, archive_variants(model, store, variants), overrides)
        warm_each(servers, body, clients, warmup)
        order, rounds = list(servers), []
        for cycle in range(cycles):
            points = []
            for label in order[cycle % len(order) :] + order[: cycle % len(order)]:
                server, name = servers[label]
                with stopped_but(servers, label):
                    point = measure(label, server.inference, server.keys.header("inference"), name, "small", body,
                                    clients, slice_s, session=server.process.pid, warmup=1)  # fmt: skip
                points.append({**asdict(point), "workers": None, "variant": label})
            rounds.append(points)
            print(f"  cycle {cycle + 1}: " + ", ".join(f"{p['variant']} {p['req_per_s']:.1f} req/s" for p in points),
                  file=sys.stderr, flush=True)  # fmt: skip
    return {**about_the_run(model, clients, slice_s), "warmup_s": warmup, "rounds": rounds}


def serve_apart(stack: ExitStack, store: Path, names: dict[str, str],
                overrides: dict[str, dict[str, str]] | None = None) -> dict[str, tuple[Server, str]]:  # fmt: skip
    """{label: archive name} -> {label: (its TorchServe, the name)}: each archive served by a
    TorchServe of its own (with `overrides[label]`, config.properties settings, if any) and
    a worker registry of its own, so that one server's workers never count as busy in
    another's thread budget."""
    servers = {}
    for label, name in names.items():
        registry = store / f"workers-{label}"
        registry.mkdir()
        env = {"TS_ZOO_WORKER_REGISTRY": str(registry)}
        settings = (overrides or {}).get(label)
        servers[label] = (stack.enter_context(local_torchserve(store, [name], overrides=settings, env=env)), name)
    return servers


def warm_each(servers: dict[str, tuple[Server, str]], body: bytes, clients: int, seconds: float) -> None:
    """Load each server in turn for `seconds`, the others stopped: the frontend JIT's first
    minutes are not measured."""
    for label, (server, name) in servers.items():
        with stopped_but(servers, label):
            closed_loop_raw(server.inference, f"/predictions/{name}", server.keys.header("inference"), body, clients,
                            seconds)  # fmt: skip


def stopped_but(servers: dict[str, tuple[Server, str]], label: str | None):
    """Every server of `servers` but `label`'s (None: all) stopped meanwhile (cpu.stopped)."""
    return stopped(*(server.process.pid for other, (server, _name) in servers.items() if other != label))


def medians(rounds: list[list[dict]]) -> dict[tuple[str, int | None], dict[str, float]]:
    """(variant, workers) -> the median req/s, p99 and CPU ms per request over the rounds."""
    every = [point for points in rounds for point in points]
    keys = {(p["variant"], p["workers"]) for p in every}
    return {
        key: {
            stat: statistics.median(p[stat] for p in every if (p["variant"], p["workers"]) == key)
            for stat in ("req_per_s", "p99_ms", "frontend_cpu_ms", "worker_cpu_ms")
        }
        for key in keys
    }
