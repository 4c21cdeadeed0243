"""The drift test's reference sample: a directory of images the model is trusted on,
embedded by the compiled model exactly as a worker embeds what it serves (the zoo's
handler, run in-process), saved for the archive (`make archive DRIFT_REFERENCE=<dir>`).

    python -m scripts.building.drift_reference mobilenet_v2 IMAGES_DIR --output drift_reference.pt
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from handlers.service import read_embedded_metadata
from scripts.building.inprocess import load_handler
from scripts.zoo import REPO, get_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def image_files(directory: Path) -> list[Path]:
    """The images of `directory` (by suffix), in name order; at least 2."""
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory of images")
    files = sorted(path for path in directory.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"{directory} holds {len(files)} images; a drift sample needs at least 2")
    return files


def embed_images(model: str, files: list[Path], artifact: Path | None = None) -> torch.Tensor:
    """Images -> the compiled model's features Tensor[len(files), D]: each image decoded,
    prepared and run through the model by the served handler, whose drift monitor takes
    them as a worker takes its first images. An image the handler refuses is an error."""
    settings = {"drift": True, "drift_reference_size": len(files), "warmup": False, "metrics": False}
    with tempfile.TemporaryDirectory(prefix="embed-") as work_dir:
        handler, context = load_handler(model, Path(work_dir), artifact=artifact, handler_settings=settings)
        try:
            batch = context.system_properties["batch_size"]
            for start in range(0, len(files), batch):
                chunk = files[start : start + batch]
                context.statuses.clear()
                bodies = handler.handle([{"body": path.read_bytes()} for path in chunk], context)
                for index, (path, body) in enumerate(zip(chunk, bodies, strict=True)):
                    if context.status(index) != 200:
                        raise ValueError(f"{path}: the {model} handler answered {context.status(index)}: {body!r:.200}")
            return handler.drift.reference
        finally:
            handler.drift.close()


def artifact_of(model: str) -> Path:
    return REPO / "build" / get_model(model).artifact


def write_reference(model: str, images: Path, output: Path, artifact: Path | None = None) -> torch.Tensor:
    """Embed the images of `images` (a directory; its subdirectory named after the model
    when there is one) and save them with what the handler checks before using them."""
    if (images / model).is_dir():
        images = images / model
    files = image_files(images)
    artifact = artifact or artifact_of(model)
    features = embed_images(model, files, artifact)
    weights = read_embedded_metadata(artifact)["weights"]
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "features": features,
            "model": model,
            "weights_sha256": weights["sha256"],  # the handler refuses a reference of other weights
            "images": [path.name for path in files],
            "source": str(images),
        },
        output,
    )
    return features


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Embed a directory of images as a model's drift reference.")
    parser.add_argument("model", help="a model name from scripts/zoo.py")
    parser.add_argument("images", type=Path, help="directory of reference images (or of <model>/ subdirectories)")
    parser.add_argument("--output", type=Path, required=True, help="the reference file to write")
    parser.add_argument("--artifact", type=Path, help="the compiled model (default: build/<model>.pt or .pt2)")
    return parser


def main(args: argparse.Namespace) -> None:
    try:
        features = write_reference(args.model, args.images, args.output, args.artifact)
    except (KeyError, ValueError, OSError) as err:
        sys.exit(f"error: {err}")
    print(f"{args.output}: {len(features)} images, {features.shape[1]} features each")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
