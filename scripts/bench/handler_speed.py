"""Handler-level throughput against the model alone, on any device: our handler driven
in-process with a fake TorchServe context (no Java), fed batches of real-photo JPEGs,
versus the compiled model fed ready-made tensors on the same device. On a GPU this
shows how much of the model's speed survives decoding, preprocessing and
postprocessing (target: >= 0.7x at batch 32), for each compile target and precision.

    python -m scripts.bench.handler_speed --device cuda --compilers torchscript aoti \\
        --precisions fp32 bf16 fp16 --json docs/handler_speed.json   # builds each variant, then measures it
    python -m scripts.bench.handler_speed --render docs/handler_speed.json   # its section of docs/benchmarks.md

Without --compilers each model is built with its own compiler (the zoo's table); with
--artifact, a file compiled elsewhere (scripts/bench/gpu.py --keep) is measured as it is.
Before timing, each variant answers a photo stored turned with EXIF orientation 6: the GPU's
JPEG decoder is not the CPU's, and a phone photo must be read upright on both.
"""

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from handlers.observers import STAGES
from handlers.service import read_embedded_metadata
from scripts.bench.alone import images_per_second, synchronized
from scripts.bench.doc import DOCUMENT, markdown_table, publish
from scripts.building.compile import PRECISIONS, compile_model
from scripts.building.inprocess import load_handler
from scripts.families import family
from scripts.samples.photos import encode, photo
from scripts.zoo import COMPILERS, REPO, get_model

MODELS = ("resnet50", "yolov5s", "face_pixelizer")
RATIO_TARGET = 0.7  # on a GPU, the handler keeps at least this share of the model's img/s ...
TARGET_BATCH = 32  # ... at this batch size


def measure(
    model: str, batch: int, device: torch.device, seconds: float, artifact: Path | None = None, settings=None
) -> dict:
    """img/s of the model alone and of the handler around it, on `artifact`; then, apart, the
    handler's stage timers with the device synchronised at each stage (ms per batch). `settings`:
    handler settings over the model's own (e.g. jpeg_encoder)."""
    with tempfile.TemporaryDirectory() as model_dir:
        gpu_id = (device.index or 0) if device.type == "cuda" else None
        handler, context = load_handler(
            model, Path(model_dir), batch_size=batch, gpu_id=gpu_id, artifact=artifact, handler_settings=settings
        )
        height, width = handler.metadata["input_size"]
        tensors = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, device=handler.device)
        jpeg = bytearray(encode(photo("chelsea"), "JPEG", quality=90))
        requests = [{"body": jpeg} for _ in range(batch)]
        with torch.inference_mode():
            model_only = images_per_second(lambda: handler.engine.model(tensors), batch, handler.device, seconds)
        handled = images_per_second(lambda: handler.handle(requests, context), batch, handler.device, seconds)
        failed = sorted({code for code, _ in context.statuses.values() if code != 200})
        if failed:
            raise RuntimeError(f"{model}: the handler answered {failed} for the benchmark's photo")
        orientation = exif_orientation(handler, context)
        context.metrics.clear()
        with synchronised_stages(handler):
            images_per_second(lambda: handler.handle(requests, context), batch, handler.device, seconds / 2)
    stage_ms = {stage: statistics.mean(ms) for stage, ms in context.metrics.stage_ms().items()}
    return {"model": model, "batch": batch, "device": str(handler.device), "model_img_per_s": model_only,
            "handler_img_per_s": handled, "ratio": handled / model_only, "stage_ms": stage_ms,
            "exif_orientation": orientation}  # fmt: skip


def exif_orientation(handler, context) -> str:
    """How the handler reads a photo stored turned with EXIF orientation 6 (a viewer turns it
    90 degrees clockwise): "applied" when its answer is at least twice as near the answer to the
    photo turned in its pixels as to the answer to the stored pixels read as they are,
    "ignored" the reverse, else "undecided" (this model's answers cannot tell them apart)."""
    upright = photo("chelsea")  # 451x300: wider than high, turned it is not
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; the tag undoes it
    tagged, turned, untagged = (
        handler.handle([{"body": encode(image, "JPEG", orientation, quality=95)}], context)[0]
        for image, orientation in ((stored, 6), (upright, None), (stored, None))
    )
    near, far = answer_distance(tagged, turned, max(upright.size)), answer_distance(tagged, untagged, max(upright.size))
    return "applied" if 2 * near < far else "ignored" if 2 * far < near else "undecided"


def answer_distance(first: bytes | str, second: bytes | str, side: int) -> float:
    """How far apart two answers are. JPEG answers: the mean absolute difference of their
    pixels (infinite for two sizes). JSON answers: over every value either holds (lists of
    objects keyed by their first text, e.g. a label, so that order does not count), the
    difference of numbers -- scores (up to 1) as they are, larger ones (pixels) as a share of
    the photo's `side` -- and 1 for a text, or a value, only one of them has."""
    if isinstance(first, bytes) and first[:2] == b"\xff\xd8" and isinstance(second, bytes):
        images = [Image.open(io.BytesIO(answer)).convert("RGB") for answer in (first, second)]
        if images[0].size != images[1].size:
            return math.inf
        arrays = [np.asarray(image, dtype=np.int16) for image in images]
        return float(np.abs(arrays[0] - arrays[1]).mean())
    a, b = flattened(json.loads(first)), flattened(json.loads(second))
    total = 0.0
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            total += abs(x - y) / (1 if max(abs(x), abs(y)) <= 1 else side)
        else:
            total += x != y
    return total


def flattened(value, path: str = "") -> dict[str, object]:
    """A JSON value -> {path: number or text}; a list's objects keyed by their first text and
    its occurrence ("predictions/tabby#0"), other items by their index."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        seen, items = Counter(), []
        for index, item in enumerate(value):
            name = next((v for v in item.values() if isinstance(v, str)), None) if isinstance(item, dict) else None
            items.append((index if name is None else f"{name}#{seen[name]}", item))
            seen[name] += 1
    else:
        return {path: value}
    return {key: leaf for name, item in items for key, leaf in flattened(item, f"{path}/{name}").items()}


@contextlib.contextmanager
def synchronised_stages(handler):
    """The handler's stage timer waiting for the device at each stage's start and end, for the
    block: work a stage queued on a GPU is otherwise paid for by the next stage that reads it."""
    observers = handler.observers
    timed = observers.timed

    @contextlib.contextmanager
    def synchronised(stage):
        synchronized(handler.device)
        with timed(stage):
            yield
            synchronized(handler.device)

    observers.timed = synchronised
    try:
        yield
    finally:
        del observers.timed  # the class's own again


def build_variant(model: str, compiler: str, precision: str, device: torch.device, directory: Path) -> dict:
    """Compile `model` with `compiler` in `precision` for `device` (checked against the fp32
    eager model, as make archive checks it) -> what was built, and how long it took."""
    spec = get_model(model)
    weights = family(spec.family).recipe.resolve_weights(spec, download=False)
    path = directory / f"{model}-{compiler}-{precision}{COMPILERS[compiler]}"
    started = time.perf_counter()
    metadata = compile_model(spec, weights, path, precision, str(device))
    return {"artifact": path, "compile_s": time.perf_counter() - started, "weights": metadata["weights"]["name"],
            "random_weights": weights.is_random, "parity_max_abs_diff": metadata["parity_max_abs_diff"]}  # fmt: skip


def prebuilt(path: Path) -> dict:
    """What build_variant tells of a file compiled elsewhere, from the metadata it carries."""
    metadata = read_embedded_metadata(path)
    return {"artifact": path, "compile_s": None, "weights": metadata["weights"]["name"],
            "random_weights": metadata["weights"]["name"] == "random",
            "parity_max_abs_diff": metadata["parity_max_abs_diff"]}  # fmt: skip


def variants(args: argparse.Namespace, model: str) -> list[tuple[str, str]]:
    """The (compiler, precision) pairs to measure `model` in: --artifact's own, else every pair asked for."""
    if args.artifact:
        return [(compiler_of(args.artifact), read_embedded_metadata(args.artifact)["precision"])]
    return [(compiler, precision) for compiler in args.compilers or [get_model(model).compiler]
            for precision in args.precisions]  # fmt: skip


def compiler_of(path: Path) -> str:
    """The compiler whose files end as `path` does."""
    return next(name for name, suffix in COMPILERS.items() if suffix == path.suffix)


def run_variants(args: argparse.Namespace, device: torch.device) -> dict:
    """Every model x compiler x precision built and measured at every batch size, each in a
    process of its own (one that crashes the interpreter is recorded with where it died, and
    the rest go on), the results written after each: a run cut short keeps them."""
    cuda, date = device.type == "cuda", datetime.date.today().isoformat()
    results = {"date": date, "device": torch.cuda.get_device_name(device) if cuda else "CPU",
               "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None, "cpus": os.cpu_count(),
               "seconds": args.seconds, "rows": [], "failures": [],
               "command": "python -m scripts.bench.handler_speed " + " ".join(sys.argv[1:])}  # fmt: skip
    if args.append and args.json and args.json.exists():  # another run's variants, same machine and day
        results = json.loads(args.json.read_text())
    for model in args.models:
        for compiler, precision in variants(args, model):
            variant = {"model": model, "compiler": compiler, "precision": precision}
            rows, error = run_variant_process(args, **variant)
            results["rows"] += rows
            print(f"  {variant}: {[round(r['ratio'], 2) for r in rows]} of the model alone; {error or ''}", flush=True)
            results["failures"] += [{**variant, "error": error}] if error else []
            save(results, args.json)
    return results


def run_variant_process(args: argparse.Namespace, model: str, compiler: str, precision: str) -> tuple[list, str | None]:
    """measure_variant in a child process -> (the rows it wrote, its error or how it died)."""
    with tempfile.TemporaryDirectory(prefix="handler-speed-") as workdir:
        output = Path(workdir) / "child.json"
        command = [
            sys.executable, "-X", "faulthandler", "-m", "scripts.bench.handler_speed", "--device", args.device,
            "--variant", model, compiler, precision, "--batches", *map(str, args.batches),
            "--seconds", str(args.seconds), "--json", str(output),
        ]  # fmt: skip
        if args.setting:
            command += ["--setting", *(f"{key}={value}" for key, value in args.setting)]
        command += ["--artifact", str(args.artifact)] if args.artifact else []
        done = subprocess.run(command, cwd=REPO, stderr=subprocess.PIPE, text=True, check=False)
        sys.stderr.write(done.stderr)
        found = json.loads(output.read_text()) if output.exists() else {"rows": [], "error": None}
    if done.returncode != 0 and not found["error"]:
        found["error"] = death(done.returncode, done.stderr)
    return found["rows"], found["error"]


def death(returncode: int, stderr: str) -> str:
    """How a child process died, and where, from its exit status and faulthandler's trace."""
    how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"
    lines = stderr.splitlines()
    current = [i for i, line in enumerate(lines) if line.startswith("Current thread")]
    where = f" in {lines[current[-1] + 1].strip()}" if current and current[-1] + 1 < len(lines) else ""
    return f"the process died ({how}){where}"


def measure_variant(args: argparse.Namespace, device: torch.device) -> None:
    """One variant (--variant MODEL COMPILER PRECISION) built and measured -> --json: its rows, or its error."""
    model, compiler, precision = args.variant
    result = {"rows": [], "error": None}
    with tempfile.TemporaryDirectory(prefix="handler-speed-") as workdir:
        try:
            built = prebuilt(args.artifact) if args.artifact else build_variant(model, compiler, precision, device,
                                                                                Path(workdir))  # fmt: skip
            described = {"compiler": compiler, "precision": precision, "settings": dict(args.setting or [])}
            described.update((k, v) for k, v in built.items() if k != "artifact")
            for batch in args.batches:
                measured = measure(model, batch, device, args.seconds, built["artifact"], described["settings"])
                result["rows"].append({**measured, **described})
                save(result, args.json)
        except Exception as err:  # recorded for the parent and the doc; the traceback goes to stderr
            traceback.print_exc()
            result["error"] = f"{type(err).__name__}: {err}"
    save(result, args.json)


def key_value(text: str) -> tuple[str, object]:
    """KEY=VALUE -> (KEY, VALUE as YAML reads it: a number, a boolean or a string)."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def save(results: dict, path: Path | None) -> None:
    if path:
        path.write_text(json.dumps(results, indent=1))


def verdict(row: dict) -> str:
    """A row's ratio, with the target's verdict at the target's batch size."""
    judged = "" if row["batch"] != TARGET_BATCH else " yes" if row["ratio"] >= RATIO_TARGET else " **no**"
    return f"{row['ratio']:.2f}{judged}"


def batch_ms(row: dict, stages: tuple[str, ...]) -> list[str]:
    """Where a batch goes, ms: the model alone, the handler's stages, the handler, what the target allows."""
    model_ms, handler_ms = (1000 * row["batch"] / row[key] for key in ("model_img_per_s", "handler_img_per_s"))
    staged = [f"{row['stage_ms'].get(stage, float('nan')):.1f}" for stage in stages]
    variant = f"{named(row)} {row['compiler']} {row['precision']}"
    return [variant, f"{model_ms:.1f}", *staged, f"{handler_ms:.1f}", f"{model_ms / RATIO_TARGET:.1f}"]


def named(row: dict) -> str:
    """A row's model, with the handler settings it was measured with."""
    return row["model"] + "".join(f" {key}={value}" for key, value in row.get("settings", {}).items())


def render_section(results: dict) -> str:
    """The handler-vs-model table of a run of every variant, with the target's verdict at
    batch TARGET_BATCH, where that batch's time goes, and what failed."""
    rows, stages = results["rows"], STAGES
    random_models = sorted({r["model"] for r in rows if r["random_weights"]})
    table = [[named(r), r["compiler"], r["precision"], r["batch"], f"{r['model_img_per_s']:.0f}",
              f"{r['handler_img_per_s']:.0f}", verdict(r)] for r in rows]  # fmt: skip
    lines = [
        "## GPU: the handler against the model alone, by compile target and precision",
        "",
        f"`{results.get('command', 'python -m scripts.bench.handler_speed --device cuda --compilers ...')}` "
        f"({results['date']}, "
        f"one **{results['device']}**, {results['cpus']} CPUs, torch {results['torch']}, CUDA {results['cuda']}; "
        "raw results in `docs/handler_speed.json`). Each variant compiled on the GPU by `scripts/building/compile.py` "
        f"(checked against the fp32 eager model as `make archive` checks it), then measured {results['seconds']:g} s "
        "each way: *model* = the compiled file on ready-made uint8 tensors on the GPU, *handler* = our handler "
        "in-process (a fake TorchServe context) on a batch of the cat photo as JPEG bytes. fp32 runs cuDNN's "
        f"convolutions in TF32, PyTorch's default. Target: handler >= {RATIO_TARGET}x the model at batch "
        f"{TARGET_BATCH}." + (f" **Random weights**: {', '.join(random_models)}." if random_models else ""),
        "",
        *markdown_table(["model", "compiler", "precision", "batch", "model img/s", "handler img/s", "ratio"], table),
    ]
    read = {
        f"{named(r)} {r['compiler']} {r['precision']}": r["exif_orientation"] for r in rows if r.get("exif_orientation")
    }
    if read:
        lines += ["", "A photo stored turned, with EXIF orientation 6 (a phone's), read upright by the handler "
                  "(`applied`: answered as the photo turned in its pixels, not as the stored pixels): "
                  + "; ".join(f"{variant}: {how}" for variant, how in read.items()) + "."]  # fmt: skip
    at_target = [batch_ms(r, stages) for r in rows if r["batch"] == TARGET_BATCH]
    if at_target:
        lines += ["", f"Where a batch of {TARGET_BATCH} goes, ms per batch (the stages timed in a separate pass with "
                  "the GPU synchronised at each stage's start and end):", "",
                  *markdown_table(["variant", "model", *stages, "handler", "target allows"], at_target)]  # fmt: skip
    failed = [f"- {f['model']} {f['compiler']} {f['precision']}: {f['error']}" for f in results["failures"]]
    return "\n".join(lines + (["", "Variants that did not build or run:", "", *failed] if failed else []))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, TARGET_BATCH])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--compilers", nargs="+", choices=list(COMPILERS), help="default: each model's own")
    parser.add_argument("--precisions", nargs="+", choices=sorted(PRECISIONS), default=["fp32"])
    parser.add_argument("--json", type=Path, help="write the results here, after each variant")
    parser.add_argument("--setting", nargs="+", type=key_value, metavar="KEY=VALUE",
                        help="handler settings over each model's own (e.g. jpeg_encoder=host)")  # fmt: skip
    parser.add_argument("--append", action="store_true", help="add to the variants already in --json")
    parser.add_argument("--artifact", type=Path, help="measure this compiled file (of the one model) as it is")
    parser.add_argument("--variant", nargs=3, metavar=("MODEL", "COMPILER", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--render", type=Path, help="only write the doc section from these saved results")
    parser.add_argument("--output", type=Path, default=DOCUMENT, help="with --render")
    return parser


def main(args: argparse.Namespace) -> None:
    if args.render:
        results = json.loads(args.render.read_text())
        publish("handler_speed", render_section(results), results, args.output, None)
        return
    if args.artifact and not args.variant and len(args.models) != 1:
        sys.exit("--artifact is one model's file: name that model alone with --models")
    device = torch.device(args.device)
    if args.variant:  # a child of run_variants
        # torch 2.14 marks torch.jit deprecated; the TorchScript builds would bury the output.
        warnings.filterwarnings("ignore", message=r".*is deprecated\. Please (switch to|use)", category=FutureWarning)
        measure_variant(args, device)
        return
    print(render_section(run_variants(args, device)))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
