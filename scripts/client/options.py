"""What the client's commands share: the per-request parameters as options, the
connection options, and the client they make (REST or gRPC)."""

import argparse
from pathlib import Path

from scripts.client.rest import ZooClient

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# Every per-request parameter of the zoo's handlers (tests/unit/test_client.py checks the list):
# option -> (parameter, help). A model refuses one it does not take (HTTP 400).
PARAMETERS = {
    "--top-k": ("top_k", "classifiers: predictions per image"),
    "--confidence": ("confidence", "detectors and faces: minimum score"),
    "--iou": ("iou", "detectors and faces: NMS IoU threshold"),
    "--format": ("format", "detectors and faces: json | image"),
    "--max-detections": ("max_detections", "detectors: most boxes per image"),
    "--classes": ("classes", "detectors: comma-separated class names or indices to keep"),
    "--preset": ("preset", "faces: thorough (CenterFace, the photo's resolution) | fast (RetinaFace, 640)"),
    "--input-size": ("input_size", "faces: letterbox long side (a multiple of 32)"),
    "--max-faces": ("max_faces", "faces: most faces per image"),
    "--mode": ("mode", "faces: mosaic | blur"),
    "--shape": ("shape", "faces: box | ellipse (inscribed in the grown box)"),
    "--blocks": ("blocks", "faces: mosaic cells across a face's longer side"),
    "--block-size": ("block_size", "faces: mosaic cell size in pixels (instead of --blocks)"),
    "--margin": ("margin", "faces: box growth per side, as a fraction of its size"),
    "--upscale-to": ("upscale_to", "faces, thorough: enlarge a smaller photo (at most 2x) to this long side"),
    "--enlarged-view": (
        "enlarged_view",
        "faces, thorough: also see the photo at 2x (under 400 px: its first view at 2x), for faces under ~24 px "
        "(true | false)",
    ),
    "--reduced-view": (
        "reduced_view",
        "faces, thorough: also see a large photo at 640 px, for faces over ~700 px (true | false)",
    ),
}


class UsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


def request_parameters(args: argparse.Namespace) -> dict[str, str]:
    values = {param: getattr(args, param) for param, _ in PARAMETERS.values()}
    return {param: str(value) for param, value in values.items() if value is not None}


def make_client(args: argparse.Namespace):
    options = {"retries": args.retries}
    if args.protocol == "grpc":
        from scripts.client.grpc_client import GrpcClient

        return GrpcClient.from_config(args.config, args.key_file, args.token, **options)
    return ZooClient.from_config(args.config, args.key_file, args.token, **options)


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("config.properties"),
                        help="the server's config.properties (its addresses)")  # fmt: skip
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"),
                        help="TorchServe's key file (read, and refreshed when the key expires)")  # fmt: skip
    parser.add_argument("--token", help="an inference key to send instead (also $TS_ZOO_TOKEN)")
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--retries", type=int, default=5, help="retries of a dead or missing worker's answer")
