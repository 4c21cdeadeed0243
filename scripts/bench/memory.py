"""Resident memory of the whole server with every archive (`torchserve --models all`): the
Java frontend and each model's workers, at idle and again idle after a soak, for two
servers side by side in one run -- the archives as built (idle workers give the memory
their batches freed back: `release_memory_after_s`) and the same archives with that off
(0, what every worker did before) -> the memory section of docs/benchmarks.md.

    python -m scripts.bench.memory               # make bench-memory: idle, 10-minute soak, idle

RSS counts the pages a process has in memory, shared ones (torch's libraries, mapped by
every worker) in full in each process; PSS splits each shared page between the processes
that map it, so the PSS of all processes adds up to what the server really occupies.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from scripts.bench.cpu import process_cpu
from scripts.bench.loadgen import run_load
from scripts.bench.report import machine, publish
from scripts.bench.side_by_side import archive_variants
from scripts.bench.soak import DEFAULT_MODELS, request_mix
from scripts.serve.server import Server, local_torchserve
from scripts.zoo import MODELS, REPO

VARIANTS = {"release": "idle workers give freed memory back (as built)", "keep": "release_memory_after_s: 0"}
SETTLE_S = 15.0  # after load: longer than release_memory_after_s (2 s), and the frontend's GC


def process_memory(pid: int) -> dict[str, float]:
    """MiB of RSS, PSS and USS (pages only this process maps) from /proc/<pid>/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "uss": fields["Private_Clean"] + fields["Private_Dirty"],
    }


def frontend_pid(session: int, proc: Path = Path("/proc")) -> int:
    """The Java frontend of the TorchServe whose launcher leads `session`."""
    for entry in proc.iterdir():
        try:
            name, owner, _cpu = process_cpu((entry / "stat").read_text()) if entry.name.isdigit() else ("", 0, 0)
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not readable
            continue
        if name == "java" and owner == session:
            return int(entry.name)
    raise RuntimeError(f"no Java frontend in session {session}")


def snapshot(server: Server, names: dict[str, str]) -> dict:
    """{"frontend": memory, "models": {model: [memory of each worker]}} of one server."""
    models = {}
    for model, name in names.items():
        models[model] = [{"pid": w["pid"], **process_memory(w["pid"])} for w in server.workers(name)]
    return {"frontend": process_memory(frontend_pid(server.process.pid)), "models": models}


def totals(snap: dict) -> dict[str, float]:
    processes = [snap["frontend"], *(w for workers in snap["models"].values() for w in workers)]
    return {kind: sum(p[kind] for p in processes) for kind in ("rss", "pss", "uss")}


def run(soak_s: float, concurrency: int) -> dict:
    models = [spec.name for spec in MODELS]
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as workdir:
        store = Path(workdir)
        names = {"release": {}, "keep": {}}
        for model in models:
            (store / f"{model}.mar").symlink_to(REPO / "model_store" / f"{model}.mar")
            names["release"][model] = model
            off = archive_variants(model, store, {"keep": {"handler": {"release_memory_after_s": 0}}})
            names["keep"][model] = off["keep"]
        with (
            local_torchserve(store, list(names["release"].values())) as release,
            local_torchserve(store, list(names["keep"].values())) as keep,
        ):
            servers = {"release": release, "keep": keep}
            time.sleep(SETTLE_S)
            idle = {label: snapshot(server, names[label]) for label, server in servers.items()}
            print_totals("idle", idle)
            loads = {}
            threads = [
                threading.Thread(target=soak, args=(server, names[label], soak_s, concurrency, loads, label))
                for label, server in servers.items()
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            time.sleep(SETTLE_S)
            after = {label: snapshot(server, names[label]) for label, server in servers.items()}
            print_totals("after the soak", after)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "soak_s": soak_s,
        "concurrency": concurrency,
        "soak_models": list(DEFAULT_MODELS),
        "loads": loads,
        "idle": idle,
        "after_soak": after,
    }


def soak(server: Server, names: dict[str, str], seconds: float, concurrency: int, loads: dict, label: str) -> None:
    """The soak's mix (real photos and bad requests) on the soak's models, under this server's names."""
    mix = [replace(request, model=names[request.model]) for request in request_mix(list(DEFAULT_MODELS), 4)]
    outcomes = run_load(server.inference, server.keys.header("inference"), mix, concurrency, seconds)
    loads[label] = {"requests": len(outcomes), "unexpected": sum(outcome.unexpected for outcome in outcomes)}


def print_totals(moment: str, snaps: dict) -> None:
    for label, snap in snaps.items():
        total = totals(snap)
        print(f"{moment}, {label}: RSS {total['rss']:.0f} MiB, PSS {total['pss']:.0f} MiB", file=sys.stderr, flush=True)


def render_section(results: dict) -> str:
    moments = {"idle": "idle", "after_soak": "after the soak"}
    rows = []
    for model in results["idle"]["release"]["models"]:
        cells = []
        for moment in moments:
            for label in ("keep", "release"):
                workers = results[moment][label]["models"][model]
                cells.append(f"{sum(w['rss'] for w in workers):.0f}")
        count = len(results["idle"]["release"]["models"][model])
        rows.append(f"| {model} | {count} | " + " | ".join(cells) + " |")
    frontend = [f"{results[m][label]['frontend']['rss']:.0f}" for m in moments for label in ("keep", "release")]
    rows.append("| Java frontend | - | " + " | ".join(frontend) + " |")
    for kind in ("rss", "pss"):
        cells = [f"**{totals(results[m][label])[kind]:.0f}**" for m in moments for label in ("keep", "release")]
        rows.append(f"| **total {kind.upper()}** | | " + " | ".join(cells) + " |")

    def change(moment: str, kind: str) -> float:
        before, after = (totals(results[moment][label])[kind] for label in ("keep", "release"))
        return 100 * (after - before) / before

    worker_uss = statistics.median(
        w["uss"] for workers in results["idle"]["release"]["models"].values() for w in workers
    )
    idle_change = change("idle", "rss")
    loads = results["loads"]
    return "\n".join([
        "## Memory of the whole server",
        "",
        f"`make bench-memory` (`scripts/bench/memory.py`, {results['date']}, {results['machine']}): two "
        "TorchServes with every archive at once, side by side: *keep* = every worker keeps what its "
        "batches freed (`release_memory_after_s: 0`, what every worker did before), *release* = the "
        "archives as built (a worker idle for 2 s gives it back). MiB of resident memory, each model's "
        f"workers together; *idle* {SETTLE_S:g} s after every worker was ready, *after the soak* "
        f"{SETTLE_S:g} s after {results['soak_s'] / 60:g} minutes of the soak's mix ("
        f"{', '.join(results['soak_models'])}, real photos and bad requests, {results['concurrency']} clients "
        f"per server; {loads['keep']['requests']} and {loads['release']['requests']} requests, "
        f"{loads['keep']['unexpected'] + loads['release']['unexpected']} answered unexpectedly).",
        "",
        "| model | workers | idle, keep | idle, release | after the soak, keep | after the soak, release |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Total RSS at idle: {idle_change:+.1f} % (PSS {change('idle', 'pss'):+.1f} %); after the soak: "
        f"{change('after_soak', 'rss'):+.1f} % (PSS {change('after_soak', 'pss'):+.1f} %). Target (total RSS at "
        f"idle -20 %): **{'met' if idle_change <= -20 else 'MISSED'}**. RSS counts torch's shared "
        "libraries in every worker; PSS shares them out, so the PSS total is what the server occupies. "
        f"A worker's own memory (USS, median at idle): {worker_uss:.0f} MiB.",
    ])  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak", type=float, default=600, help="seconds of load between the two readings")
    parser.add_argument("--concurrency", type=int, default=8, help="soak clients per server")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path)
    return parser


def main(args: argparse.Namespace) -> None:
    results = run(args.soak, args.concurrency)
    publish("memory", render_section(results), results, args.output, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
