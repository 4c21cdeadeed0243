"""Resident memory of the whole server with every archive (`torchserve --models all`): the
Java frontend and each model's workers, at idle and again idle after a soak, for two
servers side by side in one run -- the archives as built now (*after*) and the same
compiled models and settings archived with the handlers of an earlier commit (*before*:
by default the last one before issue 15's memory work) -> the memory section of
docs/benchmarks.md, with what a worker's imports cost, step by step.

    python -m scripts.bench.memory               # make bench-memory: idle, 10-minute soak, idle

RSS counts the pages a process has in memory, shared ones (torch's libraries, mapped by
every worker) in full in each process; PSS splits each shared page between the processes
that map it, so the PSS of all processes adds up to what the server really occupies.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from scripts.bench.cpu import process_cpu
from scripts.bench.loadgen import run_load
from scripts.bench.report import machine, publish
from scripts.bench.soak import DEFAULT_MODELS, request_mix
from scripts.build.archive import build_archive
from scripts.serve.server import Server, local_torchserve
from scripts.zoo import MODELS, REPO

BEFORE = "696eff8"  # the last commit before issue 15's memory work
LABELS = ("before", "after")
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
        if not entry.name.isdigit():
            continue
        try:
            name, owner, _cpu = process_cpu((entry / "stat").read_text())
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


# What a worker holds, step by step, in a fresh interpreter: what the handlers import, and
# what the two modules they no longer import would add (handlers/vision_ops.py, compiled_model.py).
IMPORT_STEPS = (
    ("python", ""),
    ("import torch", "import torch"),
    ("the handlers' modules", "import classifier_handler, detector_handler, face_pixelizer_handler"),
    ("+ import torchvision (as before)", "import torchvision"),
    ("+ import torch._inductor.package (as before, for .pt2)", "import torch._inductor.package"),
)
IMPORT_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
def memory():
    fields = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup").read().splitlines()[1:])
    return {name: int(fields[key].split()[0]) / 1024 for name, key in (("rss", "Rss"), ("anon", "Anonymous"))}
for label, statement in json.loads(sys.argv[2]):
    exec(statement)
    print(json.dumps({"step": label, **memory()}), flush=True)
"""


def import_costs() -> list[dict]:
    """RSS and anonymous memory (MiB) after each of IMPORT_STEPS, in a fresh interpreter."""
    steps = json.dumps(IMPORT_STEPS)
    output = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(REPO / "handlers"), steps],
                            capture_output=True, text=True, check=True, timeout=300).stdout  # fmt: skip
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def handlers_at(ref: str, directory: Path) -> Path:
    """handlers/ as it was at git `ref`, written under `directory`."""
    files = subprocess.run(["git", "-C", str(REPO), "archive", ref, "handlers"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=files.stdout, check=True)
    return directory / "handlers"


def run(before: str, soak_s: float, concurrency: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as workdir:
        store = Path(workdir) / "store"
        store.mkdir()
        old_handlers = handlers_at(before, Path(workdir))
        names = {"before": {}, "after": {}}
        for spec in MODELS:
            (store / f"{spec.name}.mar").symlink_to(REPO / "model_store" / f"{spec.name}.mar")
            names["after"][spec.name] = spec.name
            build_archive(spec, REPO / "build" / spec.artifact, store, f"{spec.name}_before", handlers=old_handlers)
            names["before"][spec.name] = f"{spec.name}_before"
        with (
            local_torchserve(store, list(names["before"].values())) as old,
            local_torchserve(store, list(names["after"].values())) as new,
        ):
            servers = {"before": old, "after": new}
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
        "imports": import_costs(),
        "before": before,
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
    for model in results["idle"]["after"]["models"]:
        cells = []
        for moment in moments:
            for label in LABELS:
                cells.append(f"{sum(w['rss'] for w in results[moment][label]['models'][model]):.0f}")
        rows.append(f"| {model} | {len(results['idle']['after']['models'][model])} | " + " | ".join(cells) + " |")
    frontend = [f"{results[m][label]['frontend']['rss']:.0f}" for m in moments for label in LABELS]
    rows.append("| Java frontend | - | " + " | ".join(frontend) + " |")
    for kind in ("rss", "pss"):
        cells = [f"**{totals(results[m][label])[kind]:.0f}**" for m in moments for label in LABELS]
        rows.append(f"| **total {kind.upper()}** | | " + " | ".join(cells) + " |")

    def change(moment: str, kind: str) -> float:
        before, after = (totals(results[moment][label])[kind] for label in LABELS)
        return 100 * (after - before) / before

    worker_uss = statistics.median(w["uss"] for workers in results["idle"]["after"]["models"].values() for w in workers)
    idle_change = change("idle", "rss")
    loads = results["loads"]
    imports, previous = [], 0.0
    for step in results.get("imports", []):
        imports.append(f"| {step['step']} | {step['rss']:.0f} | {step['anon']:.0f} | {step['anon'] - previous:+.0f} |")
        previous = step["anon"]
    return "\n".join([
        "## Memory of the whole server",
        "",
        f"`make bench-memory` (`scripts/bench/memory.py`, {results['date']}, {results['machine']}): two "
        "TorchServes with every archive at once, side by side: *after* = the archives as built, *before* = "
        f"the same compiled models and settings archived with the handlers of `{results['before']}` (the "
        "last commit before this work). MiB of resident memory (RSS), each model's workers together; "
        f"*idle* {SETTLE_S:g} s after every worker was ready, *after the soak* {SETTLE_S:g} s after "
        f"{results['soak_s'] / 60:g} minutes of the soak's mix ({', '.join(results['soak_models'])}, real "
        f"photos and bad requests, {results['concurrency']} clients per server, both servers at once; "
        f"{loads['before']['requests']} and {loads['after']['requests']} requests, "
        f"{loads['before']['unexpected'] + loads['after']['unexpected']} answered otherwise than expected).",
        "",
        "| model | workers | idle, before | idle, after | after the soak, before | after the soak, after |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Total RSS at idle: {idle_change:+.1f} % (PSS {change('idle', 'pss'):+.1f} %); after the soak: "
        f"{change('after_soak', 'rss'):+.1f} % (PSS {change('after_soak', 'pss'):+.1f} %). Target (total RSS at "
        f"idle -20 %): **{'met' if idle_change <= -20 else 'MISSED'}**. RSS counts torch's shared "
        "libraries in every worker; PSS shares them out, so the PSS total is what the server occupies. "
        f"A worker's own memory (USS, median at idle, after): {worker_uss:.0f} MiB.",
        "",
        "What a worker's interpreter holds, step by step (a fresh interpreter, MiB; anonymous memory is "
        "the process's own, RSS adds the pages of the libraries it maps):",
        "",
        "| step | RSS | anonymous | step's anonymous |",
        "| --- | --- | --- | --- |",
        *imports,
    ])  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help=f"git ref of the handlers to compare with (default {BEFORE})")
    parser.add_argument("--soak", type=float, default=600, help="seconds of load between the two readings")
    parser.add_argument("--concurrency", type=int, default=8, help="soak clients per server")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path)
    return parser


def main(args: argparse.Namespace) -> None:
    results = run(args.before, args.soak, args.concurrency)
    publish("memory", render_section(results), results, args.output, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
