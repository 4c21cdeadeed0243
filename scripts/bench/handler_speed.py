"""Handler-level throughput against the model alone, on any device: our handler driven
in-process with a fake TorchServe context (no Java), fed batches of real-photo JPEGs,
versus the compiled model fed ready-made tensors on the same device. On a GPU this
shows how much of the model's speed survives decoding, preprocessing and
postprocessing (target: >= 0.6x at batch 32).

    make archive DEVICE=cuda     # AOTInductor packages are compiled for the device they run on
    python -m scripts.bench.handler_speed --device cuda --batches 1 8 32
"""

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import torch

from scripts.bench.harness import images_per_second
from scripts.bench.photos import encode, photo
from scripts.build.inprocess import load_handler
from scripts.zoo import REPO

MODELS = ("resnet50", "yolov5s", "face_pixelizer")


def measure(model: str, batch: int, device: torch.device, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as model_dir:
        gpu_id = (device.index or 0) if device.type == "cuda" else None
        handler, context = load_handler(model, Path(model_dir), batch_size=batch, gpu_id=gpu_id)
        height, width = handler.metadata["input_size"]
        tensors = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, device=handler.device)
        jpeg = bytearray(encode(photo("chelsea"), "JPEG", quality=90))
        requests = [{"body": jpeg} for _ in range(batch)]
        with torch.inference_mode():
            model_only = images_per_second(lambda: handler.model(tensors), batch, handler.device, seconds)
        handled = images_per_second(lambda: handler.handle(requests, context), batch, handler.device, seconds)
    return {
        "model": model,
        "batch": batch,
        "device": str(handler.device),
        "model_img_per_s": model_only,
        "handler_img_per_s": handled,
        "ratio": handled / model_only,
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "handlers"))
    device = torch.device(args.device)
    results = [measure(model, batch, device, args.seconds) for model in args.models for batch in args.batches]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{datetime.date.today()} on {name}:")
    for r in results:
        print(f"  {r['model']:15} batch {r['batch']:3}  model {r['model_img_per_s']:8.1f} img/s"
              f"  handler {r['handler_img_per_s']:8.1f} img/s  ratio {r['ratio']:.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
