"""The ImageNet classifiers: eager models with their weights, and the real photos
their compiled versions are checked on -- prepared by the handler's own function, which
is first checked to reproduce the weights' own evaluation preprocessing (resize with its
interpolation, centre crop), so that a model is never served on the wrong input."""

import re

import torch
import torchvision
from PIL import Image

from handlers.classifier_handler import ClassifierHandler
from handlers.imaging import resize_center_crop
from scripts.families import Family, Recipe
from scripts.families.weights import RANDOM_SEED, Weights, WeightsError, resolve_classifier_weights
from scripts.nets.efficientnet_lite import efficientnet_lite0
from scripts.nets.features import ClassifierWithFeatures
from scripts.nets.inputs import ImageNetInput
from scripts.samples.photos import photo_array
from scripts.zoo import ModelSpec

# Real photos from scikit-image (public domain / CC0): a cat and a portrait.
PARITY_PHOTOS = ("chelsea", "astronaut")


# The photos as the handler prepares them and as the weights' own evaluation did (PIL), at
# most this far apart on average (gray levels): the right interpolation measures under 0.003
# on the parity photos, the wrong one (bilinear for bicubic, or the reverse) 1.1 to 1.6.
INPUT_TOLERANCE = 0.3


def tf_port_names(state_dict: dict) -> dict:
    """EfficientNet-PyTorch's parameter names (the TensorFlow ports: _conv_stem, _blocks.N.
    _depthwise_conv, ...) -> scripts/nets/efficientnet_lite.py's."""
    renames = [(r"^_conv_stem\.", "stem.conv."), (r"^_bn0\.", "stem.bn."), (r"^_conv_head\.", "head.conv."),
               (r"^_bn1\.", "head.bn."), (r"^_fc\.", "fc."), (r"\._expand_conv\.", ".expand.conv."),
               (r"\._bn0\.", ".expand.bn."), (r"\._depthwise_conv\.", ".depthwise.conv."),
               (r"\._bn1\.", ".depthwise.bn."), (r"\._project_conv\.", ".project.conv."),
               (r"\._bn2\.", ".project.bn."), (r"^_blocks\.", "blocks.")]  # fmt: skip
    renamed = {}
    for name, tensor in state_dict.items():
        for pattern, replacement in renames:
            name = re.sub(pattern, replacement, name)
        renamed[name] = tensor
    return renamed


# Networks of scripts/nets (not torchvision's), and how their weights' names map onto them.
NETS = {"efficientnet_lite0": (efficientnet_lite0, tf_port_names)}


def build_classifier(spec: ModelSpec, weights: Weights) -> torch.nn.Module:
    torch.manual_seed(RANDOM_SEED)  # makes random initialisation reproducible
    if spec.architecture in NETS:
        network, names = NETS[spec.architecture]
        model, state_dict = network(), None if weights.is_random else names(weights.state_dict)
    else:
        model, state_dict = torchvision.models.get_model(spec.architecture, weights=None), weights.state_dict
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as err:
            raise WeightsError(f"{weights.origin} does not fit {spec.architecture}: {err}") from err
    return model.eval()


def parity_photos() -> list[torch.Tensor]:
    return [torch.from_numpy(photo_array(name)).permute(2, 0, 1).contiguous() for name in PARITY_PHOTOS]


def parity_batch(preset: dict) -> torch.Tensor:
    """The parity photos as the handler prepares them (handlers/imaging.py::resize_center_crop,
    with the preset the compiled model's metadata carries): uint8 RGB, which the compiled
    model normalises itself."""
    prepare = resize_center_crop
    size, crop, interpolation = preset["resize_size"], preset["crop_size"], preset["interpolation"]
    return torch.stack([prepare(image, size, crop, interpolation) for image in parity_photos()])


def check_classifier_input(weights: Weights) -> float | None:
    """The handler's input for the parity photos (its resize with the preset the metadata
    records, normalised with its mean and std) against the weights' own evaluation transform
    on the same photos (torchvision's, or the one their source declares, on PIL images): the
    largest mean difference of a photo, in gray levels; ValueError beyond INPUT_TOLERANCE.
    None for random weights: they have no preprocessing of their own."""
    if weights.transform is None:
        return None
    preset = weights.preset
    mean, std = (torch.tensor(preset[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    served = (parity_batch(preset).float() / 255 - mean) / std
    pictures = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in parity_photos()]
    reference = torch.stack([weights.transform(picture) for picture in pictures])
    if served.shape != reference.shape:
        raise ValueError(
            f"the handler makes {tuple(served.shape[1:])} inputs, the weights expect {tuple(reference.shape[1:])}"
        )
    difference = ((served - reference).abs() * std * 255).mean(dim=(1, 2, 3)).max().item()
    if difference > INPUT_TOLERANCE:
        raise ValueError(
            f"the handler's input ({preset['interpolation']} resize to {preset['resize_size']}, crop "
            f"{preset['crop_size']}, mean {preset['mean']}) is {difference:.2f} gray levels from the weights' own "
            f"preprocessing on average (tolerance {INPUT_TOLERANCE})"
        )
    return difference


def classifier_input(weights: Weights) -> ImageNetInput:
    return ImageNetInput(weights.preset["mean"], weights.preset["std"])


def classifier_metadata(spec: ModelSpec, weights: Weights) -> dict:
    preset = weights.preset
    return {
        "task": "classification",
        "architecture": spec.architecture,
        "input_size": [preset["crop_size"], preset["crop_size"]],
        "resize_size": preset["resize_size"],
        "interpolation": preset["interpolation"],
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
    handler=ClassifierHandler,
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
        check_input=check_classifier_input,
    ),
)
