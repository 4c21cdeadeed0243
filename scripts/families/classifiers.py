"""The ImageNet classifiers: eager models with their weights, and the real photos
their compiled versions are checked on."""

import torch
import torchvision
import torchvision.transforms.v2 as T
from skimage import data as photos

from scripts.families import Family, Recipe
from scripts.families.weights import RANDOM_SEED, Weights, WeightsError, resolve_classifier_weights
from scripts.nets.features import ClassifierWithFeatures
from scripts.nets.inputs import ImageNetInput
from scripts.zoo import ModelSpec

# Real photos from scikit-image (public domain / CC0): a cat and a portrait.
PARITY_PHOTOS = ("chelsea", "astronaut")


def build_classifier(spec: ModelSpec, weights: Weights) -> torch.nn.Module:
    torch.manual_seed(RANDOM_SEED)  # makes random initialisation reproducible
    model = torchvision.models.get_model(spec.architecture, weights=None)
    if not weights.is_random:
        try:
            model.load_state_dict(weights.state_dict)
        except RuntimeError as err:
            raise WeightsError(f"{weights.origin} does not fit {spec.architecture}: {err}") from err
    return model.eval()


def parity_batch(preset: dict) -> torch.Tensor:
    """The parity photos, resized and centre-cropped by torchvision's reference evaluation
    pipeline: uint8 RGB, as the handler feeds the compiled model (which normalises)."""
    transform = T.Compose([T.Resize(preset["resize_size"], antialias=True), T.CenterCrop(preset["crop_size"])])
    images = [torch.from_numpy(getattr(photos, name)()).permute(2, 0, 1) for name in PARITY_PHOTOS]
    return torch.stack([transform(image) for image in images])


def classifier_input(weights: Weights) -> ImageNetInput:
    return ImageNetInput(weights.preset["mean"], weights.preset["std"])


def classifier_metadata(spec: ModelSpec, weights: Weights) -> dict:
    preset = weights.preset
    return {
        "task": "classification",
        "architecture": spec.architecture,
        "input_size": [preset["crop_size"], preset["crop_size"]],
        "resize_size": preset["resize_size"],
        "mean": preset["mean"],
        "std": preset["std"],
        "num_classes": 1000,
        "torchvision_version": torchvision.__version__,
    }


def check_classifier_parity(eager: torch.Tensor, compiled: torch.Tensor, precision: str = "fp32") -> float:
    """Top-5 classes equal and logits allclose; returns the max abs difference.

    fp32: the tolerance is 1e-4 absolute for logits of ordinary size (|logit| <= 1,
    trained models stay within a few tens) and 1e-4 relative beyond: an untrained
    ResNet-152's logits reach 1e7, where float32 rounding alone exceeds any fixed atol.
    bf16/fp16 (8 or 11 mantissa bits): the same top-1 class for every photo and logits
    within 5 % of the largest one.
    """
    difference = (eager - compiled).abs().max().item()
    scale = max(1.0, eager.abs().max().item())
    if precision != "fp32":
        if not torch.equal(eager.argmax(dim=1), compiled.argmax(dim=1)):
            raise ValueError(f"{precision}: the top-1 class differs from fp32 (max |diff| {difference:.3g})")
        if difference > 0.05 * scale:
            raise ValueError(f"{precision}: logits differ by up to {difference:.3g} (> 5 % of {scale:.3g})")
        return difference
    if not torch.equal(eager.topk(5).indices, compiled.topk(5).indices):
        raise ValueError(f"top-5 classes differ between eager and compiled model (max |diff| {difference:.3g})")
    if not torch.allclose(eager, compiled, rtol=0, atol=1e-4 * scale):
        raise ValueError(f"logits differ by up to {difference:.3g} (tolerance {1e-4 * scale:.3g})")
    return difference


FAMILY = Family(
    "classifier",
    handler="classifier_handler.py",
    data_files=("index_to_name.json",),
    recipe=Recipe(
        resolve_classifier_weights,
        build_classifier,
        lambda weights: parity_batch(weights.preset),
        classifier_metadata,
        check_classifier_parity,
        classifier_input,
        ClassifierWithFeatures,
        "penultimate layer, globally average-pooled",
    ),
)
