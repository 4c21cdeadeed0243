"""Handler-level throughput against the model alone, on any device: our handler driven
in-process with a fake TorchServe context (no Java), fed batches of real-photo JPEGs,
versus the compiled model fed ready-made tensors on the same device. On a GPU this
shows how much of the model's speed survives decoding, preprocessing and
postprocessing (target: >= 0.6x at batch 32), for each compile target and precision.

    python -m scripts.bench.handler_speed --device cuda     # the archives' builds (make archive DEVICE=cuda)
    python -m scripts.bench.handler_speed --device cuda --compilers torchscript aoti \\
        --precisions fp32 bf16 fp16 --json docs/handler_speed.json   # builds each variant, then measures it
    python -m scripts.bench.handler_speed --render docs/handler_speed.json   # its section of docs/benchmarks.md
"""

import argparse
import contextlib
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

from scripts.bench.harness import images_per_second, synchronized
from scripts.bench.photos import encode, photo
from scripts.bench.report import markdown_table, publish
from scripts.build.compile import RECIPES, compile_model
from scripts.build.inprocess import load_handler
from scripts.zoo import REPO, get_model

MODELS = ("resnet50", "yolov5s", "face_pixelizer")
COMPILERS = {"torchscript": ".pt", "aoti": ".pt2"}
PRECISIONS = ("fp32", "bf16", "fp16")
RATIO_TARGET = 0.6  # on a GPU, the handler keeps at least this share of the model's img/s ...
TARGET_BATCH = 32  # ... at this batch size
STAGES = ("decode", "preprocess", "forward", "postprocess")


def measure(model: str, batch: int, device: torch.device, seconds: float, artifact: Path | None = None) -> dict:
    """img/s of the model alone and of the handler around it, on `artifact` (default: the
    archive's build); then, apart, where the handler's time goes: its own stage timers with
    the device synchronised at each stage's start and end (ms per batch), so that a stage
    is charged with its own GPU work."""
    with tempfile.TemporaryDirectory() as model_dir:
        gpu_id = (device.index or 0) if device.type == "cuda" else None
        handler, context = load_handler(model, Path(model_dir), batch_size=batch, gpu_id=gpu_id, artifact=artifact)
        height, width = handler.metadata["input_size"]
        tensors = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, device=handler.device)
        jpeg = bytearray(encode(photo("chelsea"), "JPEG", quality=90))
        requests = [{"body": jpeg} for _ in range(batch)]
        with torch.inference_mode():
            model_only = images_per_second(lambda: handler.model(tensors), batch, handler.device, seconds)
        handled = images_per_second(lambda: handler.handle(requests, context), batch, handler.device, seconds)
        failed = sorted({code for code, _ in context.statuses.values() if code != 200})
        if failed:
            raise RuntimeError(f"{model}: the handler answered {failed} for the benchmark's photo")
        context.metrics.clear()
        with synchronised_stages(handler):
            images_per_second(lambda: handler.handle(requests, context), batch, handler.device, seconds / 2)
    return {
        "model": model,
        "batch": batch,
        "device": str(handler.device),
        "model_img_per_s": model_only,
        "handler_img_per_s": handled,
        "ratio": handled / model_only,
        "stage_ms": {stage: statistics.mean(ms) for stage, ms in context.metrics.stage_ms().items()},
    }


@contextlib.contextmanager
def synchronised_stages(handler):
    """The handler's stage timer (BatchedImageHandler._timed) waiting for the device at each
    stage's start and end, for the block: on a GPU, work a stage queued is otherwise
    paid for by whichever later stage first reads a result."""
    timed = handler._timed

    @contextlib.contextmanager
    def synchronised(context, stage):
        synchronized(handler.device)
        with timed(context, stage):
            yield
            synchronized(handler.device)

    handler._timed = synchronised
    try:
        yield
    finally:
        del handler._timed  # the class's own again


def build_variant(model: str, compiler: str, precision: str, device: torch.device, directory: Path) -> dict:
    """Compile `model` with `compiler` in `precision` for `device` (checked against the fp32
    eager model, as make archive checks it) -> what was built, and how long it took."""
    spec = get_model(model)
    weights = RECIPES[spec.family].resolve_weights(spec, download=False)
    path = directory / f"{model}-{compiler}-{precision}{COMPILERS[compiler]}"
    started = time.perf_counter()
    metadata = compile_model(spec, weights, path, precision, str(device))
    return {
        "artifact": path,
        "compile_s": time.perf_counter() - started,
        "weights": metadata["weights"]["name"],
        "random_weights": weights.is_random,
        "parity_max_abs_diff": metadata["parity_max_abs_diff"],
    }


def device_description(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if cuda else "CPU",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cpus": os.cpu_count(),
    }


def run_variants(args: argparse.Namespace, device: torch.device) -> dict:
    """Every model x compiler x precision built and measured at every batch size, each variant
    in a process of its own: one whose compiler or loader crashes the interpreter (torch
    2.11's AOTInductor CUDA loader did) is recorded as failed with where it died, and the
    rest go on. The results are written after each variant: a run cut short keeps them."""
    results = {**device_description(device), "seconds": args.seconds, "rows": [], "failures": []}
    if args.append and args.json and args.json.exists():  # another run's variants, same machine and day
        results = json.loads(args.json.read_text())
    for model in args.models:
        for compiler in args.compilers:
            for precision in args.precisions:
                variant = {"model": model, "compiler": compiler, "precision": precision}
                rows, error = run_variant_process(args, **variant)
                results["rows"] += rows
                print("\n".join(map(row_line, rows)), flush=True)
                if error:
                    print(f"  {model} {compiler} {precision}: {error}", flush=True)
                    results["failures"].append({**variant, "error": error})
                save(results, args.json)
    if any(f["compiler"] == "aoti" for f in results["failures"]):
        add_probe(args, results)
    return results


def add_probe(args: argparse.Namespace, results: dict) -> None:
    """aoti_probe's outcome in a child process ("ok", or how it failed) into `results`."""
    results["aoti_probe"] = run_child(args, ["--probe-child"])[1] or "ok"
    save(results, args.json)


def run_variant_process(args: argparse.Namespace, model: str, compiler: str, precision: str) -> tuple[list, str | None]:
    """measure_variant in a child process -> (its rows, its error or how it died)."""
    return run_child(args, ["--variant", model, compiler, precision])


def run_child(args: argparse.Namespace, mode: list[str]) -> tuple[list, str | None]:
    """This script in a child process in `mode` -> (the rows it wrote, its error or how it died)."""
    with tempfile.TemporaryDirectory(prefix="handler-speed-") as workdir:
        output = Path(workdir) / "child.json"
        command = [
            sys.executable, "-X", "faulthandler", "-m", "scripts.bench.handler_speed", "--device", args.device,
            *mode, "--batches", *map(str, args.batches), "--seconds", str(args.seconds), "--json", str(output),
        ]  # fmt: skip
        done = subprocess.run(command, cwd=REPO, stderr=subprocess.PIPE, text=True, check=False)
        sys.stderr.write(done.stderr)
        found = json.loads(output.read_text()) if output.exists() else {"rows": [], "error": None}
    if done.returncode != 0 and not found["error"]:
        found["error"] = death(done.returncode, done.stderr)
    return found["rows"], found["error"]


def aoti_probe(args: argparse.Namespace, device: torch.device) -> None:
    """A one-layer model through torch.export + AOTInductor and torch's own package loader:
    tells a crash of AOTInductor itself on this machine from one of the zoo's models."""
    result = {"rows": [], "error": None}
    model, example = torch.nn.Linear(8, 4).to(device).eval(), torch.randn(2, 8, device=device)
    with tempfile.TemporaryDirectory(prefix="aoti-probe-") as workdir:
        try:
            with torch.inference_mode():
                program = torch.export.export(model, (example,))
            package = torch._inductor.aoti_compile_and_package(program, package_path=f"{workdir}/probe.pt2")
            torch._inductor.aoti_load_package(package)(example)
        except Exception as err:
            traceback.print_exc()
            result["error"] = f"{type(err).__name__}: {err}"
    save(result, args.json)


def death(returncode: int, stderr: str) -> str:
    """How a child process died, and where, from its exit status and faulthandler's trace."""
    how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"
    lines = stderr.splitlines()
    current = [i for i, line in enumerate(lines) if line.startswith("Current thread")]
    where = f" in {lines[current[-1] + 1].strip()}" if current and current[-1] + 1 < len(lines) else ""
    return f"the process died ({how}){where}"


def measure_variant(args: argparse.Namespace, device: torch.device) -> None:
    """One variant (--variant MODEL COMPILER PRECISION) built and measured: its rows, or the
    error that stopped it, to --json."""
    model, compiler, precision = args.variant
    result = {"rows": [], "error": None}
    with tempfile.TemporaryDirectory(prefix="handler-speed-") as workdir:
        try:
            built = build_variant(model, compiler, precision, device, Path(workdir))
            described = {"compiler": compiler, "precision": precision}
            described.update((k, v) for k, v in built.items() if k != "artifact")
            for batch in args.batches:
                result["rows"].append({**measure(model, batch, device, args.seconds, built["artifact"]), **described})
                save(result, args.json)
        except Exception as err:  # recorded for the parent and the doc; the traceback goes to stderr
            traceback.print_exc()
            result["error"] = f"{type(err).__name__}: {err}"
    save(result, args.json)


def save(results: dict, path: Path | None) -> None:
    if path:
        path.write_text(json.dumps(results, indent=1))


def row_line(r: dict) -> str:
    variant = f"{r.get('compiler', ''):11} {r.get('precision', ''):4}" if "compiler" in r else ""
    return (f"  {r['model']:15} {variant} batch {r['batch']:3}  model {r['model_img_per_s']:8.1f} img/s"
            f"  handler {r['handler_img_per_s']:8.1f} img/s  ratio {r['ratio']:.2f}")  # fmt: skip


def render_section(results: dict) -> str:
    """The handler-vs-model table of a run of every variant, with the target's verdict at
    batch TARGET_BATCH, where that batch's time goes, and what failed."""
    rows = results["rows"]
    random_models = sorted({r["model"] for r in rows if r["random_weights"]})
    lines = [
        "## GPU: the handler against the model alone, by compile target and precision",
        "",
        "Measured by `python -m scripts.bench.handler_speed --device cuda --compilers ... --precisions ...` "
        f"on {results['date']} on one **{results['device']}** "
        f"({results['cpus']} CPUs, torch {results['torch']}, CUDA {results['cuda']}); raw results in "
        "`docs/handler_speed.json`. Each variant is compiled on the GPU by `scripts/build/compile.py` (checked "
        "against the fp32 eager model on real photos, as `make archive` checks it), then measured "
        f"{results['seconds']:g} s each way: *model* = the compiled file on ready-made uint8 tensors on the GPU, "
        "*handler* = our handler in-process (fake TorchServe context, no Java) on a batch of the cat photo as "
        "JPEG bytes: nvJPEG decoding, preprocessing on the GPU, the model, postprocessing, the answers. "
        "fp32 runs cuDNN's convolutions in TF32, PyTorch's default (the builds are checked with TF32 off). "
        f"Target: handler >= {RATIO_TARGET}x the model at batch {TARGET_BATCH}.",
    ]
    if random_models:
        lines += [
            "",
            f"Weights: {', '.join(random_models)} ran with **random weights** (no checkpoint can be downloaded "
            "on this machine): their speed is the architecture's, not a trained model's; the others ran with their "
            "trained weights.",
        ]
    table = [
        [
            r["model"],
            r["compiler"],
            r["precision"],
            r["batch"],
            f"{r['model_img_per_s']:.0f}",
            f"{r['handler_img_per_s']:.0f}",
            f"{r['ratio']:.2f}"
            + ("" if r["batch"] != TARGET_BATCH else (" yes" if r["ratio"] >= RATIO_TARGET else " **no**")),
        ]
        for r in rows
    ]
    lines += [
        "",
        *markdown_table(["model", "compiler", "precision", "batch", "model img/s", "handler img/s", "ratio"], table),
    ]
    at_target = [r for r in rows if r["batch"] == TARGET_BATCH]
    if at_target:
        lines += [
            "",
            f"Where a batch of {TARGET_BATCH} goes, ms per batch: the model alone, then the handler's own stage "
            "timers in a separate pass with the GPU synchronised at each stage's start and end (so each stage is "
            "charged with its own GPU work; *forward* includes stacking the batch), the handler's whole time "
            "per batch from its img/s (the rest: reading the requests and building the answers), and the most "
            f"the target allows (the model's time / {RATIO_TARGET}): everything around the forward pass has "
            f"{1 / RATIO_TARGET - 1:.2f}x the model's own time.",
            "",
        ]
        table = [
            [
                f"{r['model']} {r['compiler']} {r['precision']}",
                f"{1000 * r['batch'] / r['model_img_per_s']:.1f}",
                *(f"{r['stage_ms'].get(stage, float('nan')):.1f}" for stage in STAGES),
                f"{1000 * r['batch'] / r['handler_img_per_s']:.1f}",
                f"{1000 * r['batch'] / r['model_img_per_s'] / RATIO_TARGET:.1f}",
            ]
            for r in at_target
        ]
        lines += markdown_table(["variant", "model ms", *STAGES, "handler ms", "target allows ms"], table)
    if results["failures"]:
        lines += ["", "Variants that did not build or run:", ""]
        lines += [f"- {f['model']} {f['compiler']} {f['precision']}: {f['error']}" for f in results["failures"]]
    if "aoti_probe" in results:
        probe = results["aoti_probe"]
        lines += [
            "",
            "AOTInductor itself on this machine: a one-layer `torch.nn.Linear` exported, compiled and loaded by "
            f"torch's own `aoti_load_package` {'ran' if probe == 'ok' else f'failed the same way: {probe}'}"
            + ("." if probe == "ok" else f" -- the failure is torch {results['torch']}'s, not the zoo's models'."),
        ]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, TARGET_BATCH])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument(
        "--compilers", nargs="+", choices=list(COMPILERS), help="build each variant (default: the archives' builds)"
    )
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"], help="with --compilers")
    parser.add_argument("--json", type=Path, help="write the results here (after each variant with --compilers)")
    parser.add_argument("--append", action="store_true", help="add to the variants already in --json")
    parser.add_argument("--variant", nargs=3, metavar=("MODEL", "COMPILER", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--probe", action="store_true", help="only AOTInductor on a one-layer model, added to --json's results"
    )
    parser.add_argument("--render", type=Path, help="only write the doc section from these saved results")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md", help="with --render")
    return parser


def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "handlers"))
    if args.render:
        results = json.loads(args.render.read_text())
        publish("handler_speed", render_section(results), results, args.output, None)
        return
    device = torch.device(args.device)
    if args.variant or args.probe_child:  # a child of run_variants
        # torch 2.14 marks torch.jit deprecated; the TorchScript builds would bury the output.
        warnings.filterwarnings("ignore", message=r".*is deprecated\. Please (switch to|use)", category=FutureWarning)
        (measure_variant if args.variant else aoti_probe)(args, device)
        return
    if args.probe:
        results = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
        add_probe(args, results)
        print(f"AOTInductor on a one-layer model: {results['aoti_probe']}")
        return
    if args.compilers:
        results = run_variants(args, device)
        print(render_section(results))
        return
    results = [measure(model, batch, device, args.seconds) for model in args.models for batch in args.batches]
    print(f"{datetime.date.today()} on {device_description(device)['device']}:")
    for r in results:
        print(row_line(r))
    save(results, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
