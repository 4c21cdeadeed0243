"""Offline input-drift report: embed two directories of images with a classifier's
pooled penultimate features and compare them with the kernel MMD two-sample test
(handlers/drift.py, the same test the handlers will run live).

    python -m scripts.monitor.drift REFERENCE_DIR CURRENT_DIR --model mobilenet_v2 --plot drift.png

Prints the MMD^2 score and its permutation p-value, and plots the two samples' features
projected on their first two principal components beside the permutation distribution.
"""

import argparse
import sys
from pathlib import Path

import torch

from scripts.families.classifiers import build_classifier
from scripts.families.weights import WeightsError, resolve_classifier_weights
from scripts.nets.inputs import ImageNetInput
from scripts.zoo import get_model, handler_module

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 40_000_000  # the handlers' default max_image_pixels


def image_files(directory: Path) -> list[Path]:
    files = sorted(path for path in directory.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"{directory} holds {len(files)} images; the test needs at least 2")
    return files


def feature_extractor(model: str) -> tuple[torch.nn.Module, dict, str]:
    """A classifier up to its pooled penultimate features -> (module taking uint8 RGB
    batches, its preprocessing preset, the weights' name)."""
    spec = get_model(model)
    if spec.family != "classifier":
        raise ValueError(f"{model} is a {spec.family}; drift reports embed images with a classifier")
    weights = resolve_classifier_weights(spec, download=False)
    network = build_classifier(spec, weights)
    head = "fc" if hasattr(network, "fc") else "classifier"  # ResNet / MobileNetV2
    setattr(network, head, torch.nn.Identity())
    preset = weights.preset
    return torch.nn.Sequential(ImageNetInput(preset["mean"], preset["std"]), network).eval(), preset, weights.name


@torch.inference_mode()
def embed(files: list[Path], extractor: torch.nn.Module, preset: dict, batch: int = 16) -> torch.Tensor:
    """Images -> Tensor[len(files), features], preprocessed as the served classifier's handler does."""
    imaging = handler_module("imaging")
    crops = [
        imaging.resize_center_crop(
            imaging.decode_image(path.read_bytes(), MAX_PIXELS), preset["resize_size"], preset["crop_size"]
        )
        for path in files
    ]
    return torch.cat([extractor(torch.stack(crops[i : i + batch])) for i in range(0, len(crops), batch)])


def plot(reference: torch.Tensor, current: torch.Tensor, result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = torch.cat([reference, current]).double()
    centred = pooled - pooled.mean(dim=0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    projected = (centred @ components[:2].T).numpy()
    n = len(reference)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.scatter(projected[:n, 0], projected[:n, 1], s=18, label=f"reference ({n})")
    left.scatter(projected[n:, 0], projected[n:, 1], s=18, marker="x", label=f"current ({len(current)})")
    left.set(title="features, first two principal components", xlabel="PC 1", ylabel="PC 2")
    left.legend()
    right.hist(result.null.numpy(), bins=30, color="grey", label="relabelled samples")
    right.axvline(result.score, color="red", label=f"observed MMD² = {result.score:.4f}")
    right.set(title=f"permutation test: p = {result.p_value:.4f}", xlabel="MMD²", ylabel="count")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="directory of reference images (what the model was trusted on)")
    parser.add_argument("current", type=Path, help="directory of current images")
    parser.add_argument("--model", default="mobilenet_v2", help="a classifier of scripts/zoo.py")
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=Path("drift.png"), help="where to write the PNG")
    return parser


def main(args: argparse.Namespace) -> None:
    drift, imaging = handler_module("drift"), handler_module("imaging")
    try:
        extractor, preset, weights = feature_extractor(args.model)
        reference = embed(image_files(args.reference), extractor, preset)
        current = embed(image_files(args.current), extractor, preset)
    except (ValueError, OSError, WeightsError, imaging.InputError) as err:
        sys.exit(f"error: {err}")
    result = drift.mmd_test(reference, current, args.permutations, args.seed)
    plot(reference, current, result, args.plot)
    print(f"{args.model} features ({weights}): reference {len(reference)}, current {len(current)} images")
    print(f"MMD^2 = {result.score:.6f}, p = {result.p_value:.4f} ({args.permutations} permutations, "
          f"bandwidth {result.bandwidth:.3f}); plot: {args.plot}")  # fmt: skip


if __name__ == "__main__":
    main(get_args_parser().parse_args())
