"""The modern peer: LitServe (Lightning AI) serving the same compiled file as our archive
with our own task and batch engine (handlers/), so that only the server around them
differs: LitServe's dynamic batching (`max_batch_size`, `batch_timeout`) and inference
workers (`workers_per_device`), on the CPU (threads split between the workers as ours
are) or a GPU, in place of TorchServe's frontend and workers. Clients POST the photo as a
multipart form, LitServe's documented way to send a file (it parses JSON or forms only).

    python -m scripts.bench.litserve_app --model mobilenet_v2 --port 8091 --max-batch-size 8 --batch-timeout 0.005
"""

import argparse
import os
import sys
from pathlib import Path

import litserve as ls
import torch
from fastapi import Response

from handlers.edge import About, Request, render
from handlers.engine import BatchEngine
from handlers.service import check_model, load_compiled_model, read_embedded_metadata, select_device
from scripts.families import family
from scripts.zoo import REPO, get_model


class ZooAPI(ls.LitAPI):
    """LitAPI's five verbs around our engine: a request's photo read (`decode_request`),
    a batch run by the engine as a TorchServe worker runs it (`predict`), each result
    rendered by our edge (`encode_response`)."""

    def __init__(self, model: str, artifact: Path, threads: int, device: str, **kwargs):
        super().__init__(**kwargs)
        self.model, self.artifact, self.threads, self.where = model, artifact, threads, device

    def setup(self, device) -> None:
        torch.set_num_threads(self.threads)
        task_class = family(get_model(self.model).family).task
        settings = task_class.settings_class()  # the handler's defaults, as served
        where = select_device(0 if self.where.startswith("cuda") else None)
        model, metadata = load_compiled_model(self.artifact, where, settings.optimize)
        check_model(self.artifact.name, metadata, task_class.name)
        self.task = task_class(settings, metadata, REPO, where)
        self.engine = BatchEngine(self.task, model, where)
        self.engine.warmup(1)
        weights = metadata["weights"]
        provenance = {"weights": weights["name"], "weights_sha256": weights["sha256"]}
        self.about = About(self.model, "1", provenance, settings.max_response_bytes)

    def decode_request(self, request) -> Request:
        return Request(request["image"].file.read())

    def batch(self, inputs: list[Request]) -> list[Request]:
        return inputs

    def predict(self, inputs):
        """A batch (LitServe batching), or one request (max_batch_size 1: LitServe then
        calls neither batch nor unbatch)."""
        single = isinstance(inputs, Request)
        requests = [inputs] if single else inputs
        answers = render(self.engine.run(requests), requests, self.about)
        return answers[0] if single else answers

    def unbatch(self, output) -> list:
        return output

    def encode_response(self, output) -> Response:
        return Response(content=output.body, media_type=output.content_type, status_code=output.status,
                        headers=dict(output.headers))  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2", help="the model's name (its route)")
    parser.add_argument("--artifact", type=Path, help="its compiled file (default: build/'s)")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds a partial batch waits")
    parser.add_argument("--workers", type=int, default=1, help="inference processes (workers_per_device)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per worker (default: cores / workers)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser


def main(args: argparse.Namespace) -> None:
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // args.workers)
    artifact = args.artifact or REPO / "build" / get_model(args.model).artifact
    read_embedded_metadata(artifact)  # a compiled model, or a clear error before LitServe starts
    api = ZooAPI(args.model, artifact, threads, args.device, max_batch_size=args.max_batch_size,
                 batch_timeout=args.batch_timeout, api_path=f"/predictions/{args.model}")  # fmt: skip
    accelerator = "cuda" if args.device.startswith("cuda") else "cpu"
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=args.workers, timeout=60)
    print(f"LitServe: {args.model} on {args.device}, {args.workers} workers x {threads} threads, "
          f"batch {args.max_batch_size}, timeout {args.batch_timeout}s", file=sys.stderr, flush=True)  # fmt: skip
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
