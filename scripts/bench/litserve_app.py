"""The modern peer: LitServe (Lightning AI) serving the same compiled file as our archive,
with LitServe's own dynamic batching (`max_batch_size`, `batch_timeout`) and inference
workers (`workers_per_device`), on the CPU (threads split between the workers as ours
are) or a GPU. Per request the photo is decoded with torchvision.io (nvJPEG on a GPU)
and prepared as our handler prepares it; per batch one forward pass and the same
post-processing functions as our handlers (top-5; YOLOv5 decoding and NMS; RetinaFace
decoding, mosaic and a JPEG answer), so that what differs is the serving around them.
Clients POST the photo as a multipart form, LitServe's documented way to send a file
(it parses JSON or forms only).

    python -m scripts.bench.litserve_app --model mobilenet_v2 --port 8091 --max-batch-size 8 --batch-timeout 0.005
"""

import argparse
import os
import sys
from pathlib import Path

import litserve as ls
import torch
from fastapi import Response
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from scripts.zoo import REPO, get_model, handler_module


class ZooAPI(ls.LitAPI):
    """The compiled file loaded as our handler loads it; a photo decoded on the device."""

    def __init__(self, artifact: Path, threads: int, device: str, **kwargs):
        super().__init__(**kwargs)
        self.artifact, self.threads, self.where = artifact, threads, torch.device(device)

    def setup(self, device) -> None:
        torch.set_num_threads(self.threads)
        compiled_model = handler_module("compiled_model")  # the same loader as our handler: the same compiled graph
        self.model, self.metadata = compiled_model.load_compiled_model(self.artifact, self.where)

    def decode_request(self, request) -> tuple[torch.Tensor, torch.Tensor, object]:
        """-> (the photo, the model's input, how the one maps into the other)."""
        data = torch.frombuffer(bytearray(request["image"].file.read()), dtype=torch.uint8)
        image = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.where)
        return (image, *self.prepare(image))

    def batch(self, inputs: list[tuple]) -> tuple[list, torch.Tensor, list]:
        images, prepared, geometries = zip(*inputs, strict=True)
        return list(images), torch.stack(prepared), list(geometries)

    def predict(self, inputs: tuple):
        """A batch (LitServe batching), or one request's input (max_batch_size 1: LitServe
        then calls neither batch nor unbatch)."""
        single = inputs[1].ndim == 3
        images, prepared, geometries = self.batch([inputs]) if single else inputs
        with torch.inference_mode():
            *outputs, _features = self.model(prepared)
            answers = self.postprocess(outputs[0] if len(outputs) == 1 else tuple(outputs), images, geometries)
        return answers[0] if single else answers

    def unbatch(self, output) -> list:
        return output


class ClassifierAPI(ZooAPI):
    def prepare(self, image: torch.Tensor) -> tuple[torch.Tensor, None]:
        """As our handler: its own function, with the sizes and interpolation the compiled
        model's metadata records (resnet50's V2 weights resize to 232, EfficientNet-Lite0 bicubic)."""
        metadata = self.metadata
        return handler_module("imaging").resize_center_crop(
            image, metadata["resize_size"], metadata["input_size"][0], metadata.get("interpolation", "bilinear")
        ), None

    def postprocess(self, logits: torch.Tensor, images: list, geometries: list) -> list:
        scores, indices = torch.softmax(logits.float(), dim=1).topk(5, dim=1)
        return list(zip(scores.tolist(), indices.tolist(), strict=True))

    def encode_response(self, output) -> dict:
        scores, indices = output
        return {"predictions": [{"index": i, "score": s} for i, s in zip(indices, scores, strict=True)]}


class DetectorAPI(ZooAPI):
    def prepare(self, image: torch.Tensor) -> tuple:
        return handler_module("imaging").letterbox(
            image, self.metadata["input_size"][0], self.metadata["letterbox_fill"]
        )

    def postprocess(self, predictions: torch.Tensor, images: list, geometries: list) -> list:
        detection, imaging = handler_module("detection"), handler_module("imaging")
        requests = [detection.DetectionRequest(0.25, 0.45, 300)] * len(predictions)
        found = detection.detect_objects_batch(predictions, requests)
        return [
            imaging.unletterbox_boxes(boxes, at).tolist() for (boxes, _, _), at in zip(found, geometries, strict=True)
        ]

    def encode_response(self, output) -> dict:
        return {"detections": output}


class FacePixelizerAPI(ZooAPI):
    def prepare(self, image: torch.Tensor) -> tuple:
        fill = [round(value) for value in reversed(self.metadata["mean_bgr"])]
        return handler_module("imaging").letterbox(image, self.metadata["input_size"][0], fill)

    def postprocess(self, outputs: tuple[torch.Tensor, ...], images: list, geometries: list) -> list:
        faces_module, imaging = handler_module("face_detection"), handler_module("imaging")
        config, size = self.metadata["priors"], self.metadata["input_size"]
        priors = faces_module.prior_boxes(*size, config["min_sizes"], config["steps"], outputs[0].device)
        settings = [faces_module.FaceSettings()] * len(images)
        faces = faces_module.decode_faces_batch(*outputs, priors, tuple(config["variances"]), settings)
        anonymised = []
        for image, found, at in zip(images, faces, geometries, strict=True):
            regions = faces_module.expand_boxes(imaging.unletterbox_boxes(found.boxes, at), 0.15, at.width, at.height)
            anonymised.append(faces_module.pixelate_regions(image, regions, settings[0]))
        return [data.cpu().numpy().tobytes() for data in encode_jpeg(anonymised, quality=90)]

    def encode_response(self, output: bytes) -> Response:
        return Response(content=output, media_type="image/jpeg")


APIS = {"classification": ClassifierAPI, "detection": DetectorAPI, "face_detection": FacePixelizerAPI}


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
    metadata = handler_module("compiled_model").read_embedded_metadata(artifact)
    api = APIS[metadata["task"]](artifact, threads, args.device, max_batch_size=args.max_batch_size,
                                 batch_timeout=args.batch_timeout, api_path=f"/predictions/{args.model}")  # fmt: skip
    accelerator = "cuda" if args.device.startswith("cuda") else "cpu"
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=args.workers, timeout=60)
    print(f"LitServe: {args.model} on {args.device}, {args.workers} workers x {threads} threads, "
          f"batch {args.max_batch_size}, timeout {args.batch_timeout}s", file=sys.stderr, flush=True)  # fmt: skip
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
