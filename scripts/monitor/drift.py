"""Offline input-drift report: embed two directories of images with a served model's
own features (its compiled file, run by its handler exactly as a worker runs it) and
compare them with the kernel MMD two-sample test (handlers/drift.py): the same features
and the same test as the workers' live drift monitor.

    python -m scripts.monitor.drift REFERENCE_DIR CURRENT_DIR --model resnet18 --plot drift.png

Prints the MMD^2 score and its permutation p-value, and plots the two samples' features
projected on their first two principal components beside the permutation distribution.
"""

import argparse
import sys
from pathlib import Path

import torch

from handlers.drift import mmd_test
from handlers.service import read_embedded_metadata
from scripts.building.drift_reference import artifact_of, embed_images, image_files
from scripts.zoo import get_model


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
    parser.add_argument("--model", default="mobilenet_v2", help="a model of scripts/zoo.py")
    parser.add_argument("--artifact", type=Path, help="its compiled file (default: build/<model>.pt or .pt2)")
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=Path("drift.png"), help="where to write the PNG")
    return parser


def main(args: argparse.Namespace) -> None:
    try:
        artifact = args.artifact or artifact_of(get_model(args.model).name)
        if not artifact.is_file():
            raise ValueError(f"{artifact} is missing: build it with `make models` (or pass --artifact)")
        weights = read_embedded_metadata(artifact)["weights"]["name"]
        reference = embed_images(args.model, image_files(args.reference), artifact)
        current = embed_images(args.model, image_files(args.current), artifact)
    except (KeyError, ValueError, OSError) as err:
        sys.exit(f"error: {err.args[0] if isinstance(err, KeyError) else err}")
    result = mmd_test(reference, current, args.permutations, args.seed)
    plot(reference, current, result, args.plot)
    print(f"{args.model} features ({weights}): reference {len(reference)}, current {len(current)} images")
    print(f"MMD^2 = {result.score:.6f}, p = {result.p_value:.4f} ({args.permutations} permutations, "
          f"bandwidth {result.bandwidth:.3f}); plot: {args.plot}")  # fmt: skip


if __name__ == "__main__":
    main(get_args_parser().parse_args())
