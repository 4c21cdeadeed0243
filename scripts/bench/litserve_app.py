"""The modern peer: LitServe (Lightning AI) serving the same compiled classifier file as
our archive, with LitServe's own dynamic batching (`max_batch_size`, `batch_timeout`),
its inference workers (`workers_per_device`) with the CPU threads split between them as
ours are, and the image decoded and resized with torchvision.io / transforms.v2 on uint8
tensors. Clients POST the photo as a multipart form, LitServe's documented way to send
a file (it parses JSON or forms only).

    python -m scripts.bench.litserve_app --model mobilenet_v2 --port 8091 --max-batch-size 8 --batch-timeout 0.005
"""

import argparse
import os
import sys

import litserve as ls
import torch
import torchvision.transforms.v2.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from scripts.zoo import REPO, get_model, handler_module

RESIZE, CROP = 256, 224  # as our classifier handler prepares an image (the compiled metadata)


class ClassifierAPI(ls.LitAPI):
    def __init__(self, model: str, threads: int, **kwargs):
        super().__init__(**kwargs)
        self.model_name, self.threads = model, threads

    def setup(self, device) -> None:
        torch.set_num_threads(self.threads)
        compiled_model = handler_module("compiled_model")  # the same loader as our handler: the same compiled graph
        path = REPO / "build" / get_model(self.model_name).artifact
        self.model, _ = compiled_model.load_compiled_model(path, torch.device("cpu"))

    def decode_request(self, request) -> torch.Tensor:
        data = request["image"].file.read()
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        return F.center_crop(F.resize(image, [RESIZE], antialias=True), [CROP, CROP])

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, images: torch.Tensor):
        """A batch [B, 3, H, W] (LitServe batching), or one image [3, H, W] (max_batch_size 1:
        LitServe then calls neither batch nor unbatch)."""
        single = images.ndim == 3
        with torch.inference_mode():
            logits, _features = self.model(images.unsqueeze(0) if single else images)
            scores, indices = torch.softmax(logits.float(), dim=1).topk(5, dim=1)
        return (scores[0].tolist(), indices[0].tolist()) if single else (scores, indices)

    def unbatch(self, output) -> list:
        scores, indices = output
        return list(zip(scores.tolist(), indices.tolist(), strict=True))

    def encode_response(self, output) -> dict:
        scores, indices = output
        return {"predictions": [{"index": i, "score": s} for i, s in zip(indices, scores, strict=True)]}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2", help="a compiled classifier in build/")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds a partial batch waits")
    parser.add_argument("--workers", type=int, default=1, help="inference processes (workers_per_device)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per worker (default: cores / workers)")
    return parser


def main(args: argparse.Namespace) -> None:
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // args.workers)
    api = ClassifierAPI(args.model, threads, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout,
                        api_path=f"/predictions/{args.model}")  # fmt: skip
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=60)
    print(f"LitServe: {args.model}, {args.workers} workers x {threads} threads, batch {args.max_batch_size}, "
          f"timeout {args.batch_timeout}s", file=sys.stderr, flush=True)  # fmt: skip
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
