"""GPU serving in one run, on any CUDA machine: for resnet50, yolov5s and face_pixelizer,
archives built for the GPU (their GPU profile, bf16), and for each
(a) the compiled model alone at the served batch size, on ready-made tensors;
(b) TorchServe with a no-op handler archived with the same settings, fed the same bodies:
    what the frontend passes (the ceiling any handler is served under);
(c) our archive at 1, 32, 128 and 512 closed-loop clients: req/s, p50, p99, errors,
    images per forward pass, GPU busy (NVML), and where a request's time goes; then, at 128
    clients, with 1 and 4 workers on the GPU as well (scaled through the management API; each
    worker takes the cores ÷ the busy workers as CPU threads): how many to serve with;
(d) LitServe serving the same compiled file on the same GPU (scripts/bench/litserve_app.py),
    its batching tuned at 128 clients, at the same concurrencies
-> its section of docs/benchmarks.md (the GPU, driver, torch, date; the targets) and the raw
numbers in docs/benchmarks_gpu.json. The in-process handler against the model is
scripts/bench/handler_speed.py (`make bench-gpu` runs both).

    python -m scripts.bench.gpu                            # make bench-gpu (~3 min a model on an H200)
    python -m scripts.bench.gpu --models resnet50 --compiler torchscript   # one model, TorchScript
    python -m scripts.bench.gpu --device cpu --quick       # the whole run on the CPU, briefly (CI)
    bash scripts/bench/gpu_device.sh resnet50              # on a lent GPU machine, offline: one model
"""

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch

from scripts.bench.alone import model_throughput
from scripts.bench.doc import about_the_run, markdown_table, publish
from scripts.bench.harness import Target, as_form, images, litserve, measure, scale, torchserve
from scripts.building.archive import ARCHIVE_VERSION, build_archive
from scripts.building.profiles import model_config
from scripts.child_process import console_script
from scripts.zoo import COMPILERS, REPO, get_model

MODELS = ("resnet50", "yolov5s", "face_pixelizer")
CLIENTS = (1, 32, 128, 512)
# Workers per GPU tried at 128 clients beside the profile's own count (the CPU threads follow:
# cores ÷ busy workers each, handlers/observers.py's ThreadBudget).
WORKER_COUNTS = (1, 2, 4)
# LitServe's batching, (max_batch_size, batch_timeout s), tried at 128 clients; the best is measured.
LITSERVE_SETTINGS = ((16, 0.005), (32, 0.005), (64, 0.01))
# The targets at 128 clients: >= this share of min(model alone, no-op ceiling), >= this x LitServe.
OF_CEILING, OVER_LITSERVE, P99_OVER_P50 = 0.5, 1.2, 3.0


def compile_for(model: str, device: str, compiler: str | None, workdir: Path, build: bool) -> tuple[Path, str]:
    """`model` and its companions compiled for `device` (bf16 on a GPU) into `workdir` ->
    (the model's file, its compiler); on the CPU, build/'s file unless `build`. Weights found
    offline or random (a speed measurement), never downloaded mid-run. A compiler
    whose output does not load there (torch 2.11's AOTInductor crashes loading a CUDA
    package: ../shared/gpu/README.md) is said so, and TorchScript compiles it instead."""
    spec = get_model(model)
    if device == "cpu" and not build:
        return REPO / "build" / spec.artifact, spec.compiler
    precision = [] if device == "cpu" else ["--precision", "bf16"]
    for attempt in dict.fromkeys((compiler or spec.compiler, "torchscript")):
        output = workdir / f"{model}{COMPILERS[attempt]}"
        failed = 0
        for name, path in {model: output, **spec.companion_files(output)}.items():
            command = [sys.executable, "-m", "scripts.building.compile", name, "--output", str(path),
                       "--device", device, "--no-download", *precision]  # fmt: skip
            failed = failed or subprocess.run(command, cwd=REPO).returncode
        if not failed:
            return output, attempt
        then = "TorchScript next" if attempt != "torchscript" else "giving up"
        print(f"{model}: compiling with {attempt} for {device} failed (exit status {failed}); {then}",
              file=sys.stderr, flush=True)  # fmt: skip
    raise RuntimeError(f"{model} could not be compiled for {device}")


def noop_archive(model: str, store: Path, profile: str) -> str:
    """scripts/bench/noop_handler.py archived with `model`'s TorchServe settings -> its name."""
    name = f"{model}_noop"
    config = {key: value for key, value in model_config(get_model(model), profile).items() if key != "handler"}
    (store / f"{name}.yaml").write_text(json.dumps(config))  # JSON is YAML
    command = [console_script("torch-model-archiver"), "--model-name", name,
               "--version", ARCHIVE_VERSION, "--handler", str(REPO / "scripts" / "bench" / "noop_handler.py"),
               "--config-file", str(store / f"{name}.yaml"), "--export-path", str(store), "--force"]  # fmt: skip
    subprocess.run(command, check=True)
    return name


def sweep(target: Target, model: str, body: bytes, clients, seconds: float) -> list[dict]:
    return [asdict(measure(target, model, as_form(target, body), count, seconds)) for count in clients]


def run_model(model: str, args: argparse.Namespace, body: bytes, workdir: Path, save=lambda result: None) -> dict:
    """`model` measured as the module says; `save(result so far)` after each step: a run cut
    short keeps what it measured (on a lent GPU, the compiled file's path first of all)."""
    profile = "cpu" if args.device == "cpu" else "gpu"
    config = model_config(get_model(model), profile)
    artifact, compiler = compile_for(model, args.device, args.compiler, workdir, args.build)
    store = workdir / f"store-{model}"
    store.mkdir(exist_ok=True)
    build_archive(get_model(model), artifact, store, profile=profile)
    batch, workers = config["batchSize"], config["maxWorkers"]
    channels_last = config["handler"].get("channels_last", False)
    alone = model_throughput(artifact, [batch], args.seconds, args.device, channels_last)[batch][0]
    result = {"model": model, "compiler": compiler, "artifact": str(artifact), "batch": batch, "workers": workers,
              "alone_img_per_s": alone, "points": []}  # fmt: skip
    save(result)
    with torchserve(store, [noop_archive(model, store, profile)], "no-op") as target:
        result["points"] += sweep(target, f"{model}_noop", body, args.clients, args.seconds)
    save(result)
    with torchserve(store, [model]) as target:
        result["points"] += sweep(target, model, body, args.clients, args.seconds)
        save(result)
        for count in (count for count in args.workers if count != workers):
            scale(target, model, count)
            labelled = replace(target, server=f"ours, workers={count}")
            (point,) = sweep(labelled, model, body, [args.clients[-2]], args.seconds)
            result["points"].append({**point, "workers": count})
            save(result)
    tried = []
    for batching in LITSERVE_SETTINGS[:1] if args.quick else LITSERVE_SETTINGS:
        with litserve(model, *batching, workers, device=args.device, artifact=artifact) as target:
            tried.append((sweep(target, model, body, [args.clients[-2]], args.seconds)[0]["req_per_s"], batching))
    result["litserve"] = {"tried": tried, "best": max(tried)[1]}
    with litserve(model, *result["litserve"]["best"], workers, device=args.device, artifact=artifact) as target:
        result["points"] += sweep(target, model, body, args.clients, args.seconds)
    save(result)
    return result


def save(path: Path, results: dict, result: dict) -> None:
    """The results with the model being measured: what is measured so far survives a crash or a time limit."""
    path.write_text(json.dumps({**results, "models": [*results["models"], result]}, indent=1))


def gpu_description(device: str) -> str:
    if not device.startswith("cuda"):
        return f"no GPU (a dry run on the CPU, {torch.get_num_threads()} threads)"
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
    except Exception as err:  # no nvidia-ml-py there: the run goes on without the driver's version
        driver = f"unknown ({type(err).__name__}: nvidia-ml-py missing or NVML unusable)"
    return f"one {torch.cuda.get_device_name(device)}, driver {driver}, CUDA {torch.version.cuda}"


def verdicts(result: dict, clients: tuple[int, ...]) -> list[str]:
    """The targets, judged from this model's points."""
    at = {(p["server"], p["concurrency"]): p for p in result["points"]}
    busiest, middle, most = clients[-2], clients[1] if len(clients) > 2 else clients[0], clients[-1]
    ours, noop, peer_ = at[("ours", busiest)], at[("no-op", busiest)], at[("litserve", busiest)]
    ceiling = min(result["alone_img_per_s"], noop["req_per_s"])
    checks = [
        (f"at {busiest} clients >= {OF_CEILING}x min(model alone, no-op)", ours["req_per_s"] / ceiling, OF_CEILING),
        (f"at {busiest} clients >= {OVER_LITSERVE}x LitServe", ours["req_per_s"] / peer_["req_per_s"], OVER_LITSERVE),
    ]
    lines = [f"{text}: {ratio:.2f}x {'yes' if ratio >= goal else '**no**'}" for text, ratio, goal in checks]
    errors, spread = at[("ours", most)]["errors"], at[("ours", middle)]["p99_ms"] / at[("ours", middle)]["p50_ms"]
    lines.append(f"0 errors at {most} clients: {errors} {'yes' if errors == 0 else '**no**'}")
    lines.append(
        f"at {middle} clients p99 <= {P99_OVER_P50}x p50: {spread:.1f}x {'yes' if spread <= P99_OVER_P50 else '**no**'}"
    )
    lines.append(workers_verdict(result, busiest))
    stages = ", ".join(f"{stage} {ms:.2f}" for stage, ms in (ours["stage_ms"] or {}).items())
    lines.append(f"ours at {busiest} clients, ms per request: queue {ours['queue_ms']:.1f}, in the worker "
                 f"{ours['inference_ms']:.1f}; handler stages {stages}")  # fmt: skip
    return lines


def workers_verdict(result: dict, clients: int) -> str:
    """Workers per GPU: the count that served most at `clients` without an error, among those tried."""
    served = next(p for p in result["points"] if (p["server"], p["concurrency"]) == ("ours", clients))
    tried = {result["workers"]: served, **{p["workers"]: p for p in result["points"] if "workers" in p}}
    rates = ", ".join(f"{count}: {p['req_per_s']:.0f}" + (f" ({p['errors']} errors)" if p["errors"] else "")
                      for count, p in sorted(tried.items()))  # fmt: skip
    clean = {count: p["req_per_s"] for count, p in tried.items() if p["errors"] == 0}
    chosen = f"serve with {max(clean, key=clean.get)}" if clean else "every count answered errors"
    return f"workers per GPU at {clients} clients, req/s: {rates} -> {chosen} (the profile has {result['workers']})"


def render(results: dict) -> str:
    lines = [
        "## GPU serving (`make bench-gpu`)",
        "",
        f"{results['date']}, {results['gpu']}, torch {results['torch']}; {results['machine']}. Closed-loop "
        f"clients, {results['seconds']:g} s a point, the 451x300 cat JPEG; archives with their "
        f"{results['profile']} profile, {results['precision']}. Raw numbers: docs/benchmarks_gpu.json.",
    ]
    for result in results["models"]:
        rows = [
            [p["server"], p["concurrency"], f"{p['req_per_s']:.0f}", f"{p['p50_ms']:.1f}", f"{p['p99_ms']:.1f}",
             p["errors"], "" if p["mean_batch"] is None else f"{p['mean_batch']:.1f}",
             "" if p["gpu_busy"] is None else f"{p['gpu_busy']:.0f} %"]
            for p in result["points"]
        ]  # fmt: skip
        lines += ["", f"### {result['model']} ({result.get('compiler', '?')}): batch {result['batch']}, "
                      f"{result['workers']} workers; the model "
                      f"alone {result['alone_img_per_s']:.0f} img/s; LitServe's best batching "
                      f"{tuple(result['litserve']['best'])}", ""]  # fmt: skip
        lines += markdown_table(["server", "clients", "req/s", "p50 ms", "p99 ms", "errors", "batch", "GPU busy"], rows)
        lines += ["", *(f"- {line}" for line in verdicts(result, tuple(results["clients"])))]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--clients", nargs="+", type=int, default=list(CLIENTS))
    parser.add_argument("--seconds", type=float, default=5, help="per point (after up to 3 s of warm-up)")
    parser.add_argument("--workers", nargs="+", type=int, default=list(WORKER_COUNTS),
                        help="workers per GPU tried at the busiest clients but one")  # fmt: skip
    parser.add_argument("--compiler", choices=list(COMPILERS), help="default: each model's own")
    parser.add_argument("--quick", action="store_true", help="one LitServe setting, no doc (with --json)")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "benchmarks_gpu.json")
    parser.add_argument("--build", action="store_true", help="on the CPU too, compile afresh (as on a GPU)")
    parser.add_argument("--out", type=Path, help="write the JSON and the section here instead ($OUT on a lent GPU)")
    parser.add_argument("--keep", type=Path, help="compile into this folder and leave the files there")
    return parser


def main(args: argparse.Namespace) -> None:
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        args.json = args.out / "benchmarks_gpu.json"
    body = images()["small"]
    on_gpu = args.device != "cpu"
    results = {**about_the_run(), "gpu": gpu_description(args.device), "torch": torch.__version__,
               "profile": "GPU" if on_gpu else "CPU", "precision": "bf16" if on_gpu else "fp32",
               "seconds": args.seconds, "clients": args.clients, "models": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as workdir:
        for model in args.models:
            built = args.keep or Path(workdir)
            built.mkdir(parents=True, exist_ok=True)
            results["models"].append(run_model(model, args, body, built, partial(save, args.json, results)))
    # Under --out the section is always written (the lent machine's run); else --quick leaves docs/ alone.
    document = args.out / "benchmarks.md" if args.out else None if args.quick else REPO / "docs" / "benchmarks.md"
    publish("gpu", render(results), results, document, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
