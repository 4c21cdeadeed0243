"""Tiny deterministic models (and the fake TorchServe context of scripts/building/inprocess.py),
so a handler runs exactly as in a worker but without Java, archives or trained weights."""

import json
from pathlib import Path

import pytest
import torch

from handlers.engine import INPUT_FORMAT, OUTPUT_FORMAT
from scripts.building.compile import save_compiled
from scripts.building.inprocess import FakeContext

COLOR_LABELS = ["red", "green", "blue", "gray"]
TINY_METADATA = {
    "task": "classification",
    "model": "tiny",
    "architecture": "TinyColorClassifier",
    "input_size": [32, 32],
    "resize_size": 36,
    "mean": [0.485, 0.456, 0.406],  # ImageNet statistics, as the real classifiers
    "std": [0.229, 0.224, 0.225],
    "num_classes": 4,
    "weights": {"name": "test-fixture", "origin": "tests/handler/conftest.py", "sha256": None},
    "input_format": INPUT_FORMAT,
    "output_format": OUTPUT_FORMAT,
    "feature_size": 3,
}


class TinyColorClassifier(torch.nn.Module):
    """Takes uint8 RGB like every compiled model, normalises with ImageNet statistics, and
    answers logits = (mean normalised R, G, B, 1.0) * 10: a saturated red, green or blue
    image is that colour's class, a mid-gray one is "gray". Exact, so tests can expect
    exact answers. Its features (for the drift test) are the mean normalised R, G, B."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels = ((x.float() / 255 - self.mean) / self.std).mean(dim=(2, 3))  # [B, 3]
        return torch.cat([channels, torch.ones_like(channels[:, :1])], dim=1) * 10.0, channels


NAMES = ["person", "bicycle", "car"]
DETECTOR_METADATA = {
    "task": "detection",
    "model": "tiny-detector",
    "architecture": "RedBoxDetector",
    "input_size": [320, 320],
    "stride": 32,
    "letterbox_fill": 114,
    "num_classes": 3,
    "class_names": NAMES,
    "weights": {"name": "test-fixture", "origin": "tests/handler/test_detector_handler.py", "sha256": None},
    "input_format": INPUT_FORMAT,
    "output_format": OUTPUT_FORMAT,
    "feature_size": 3,
}


class RedBoxDetector(torch.nn.Module):
    """YOLOv5-shaped output [B, 3, 5 + 3] in input pixels: row 0 the box around all
    pure-red pixels as a "car" (score 0.9); row 1 the same box shifted by one pixel
    with a lower score (NMS must drop it); row 2 the same box as a "person" scoring
    0.5 (class-aware NMS keeps it). No red pixels: objectness 0. Features: the mean R, G, B."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float() / 255  # uint8 RGB in, as every compiled model
        red = (x[:, 0] > 0.8) & (x[:, 1] < 0.2) & (x[:, 2] < 0.2)  # [B, H, W]
        height, width = red.shape[1], red.shape[2]
        xs = torch.arange(width, dtype=x.dtype).view(1, 1, width).expand_as(red)
        ys = torch.arange(height, dtype=x.dtype).view(1, height, 1).expand_as(red)
        x1 = torch.where(red, xs, float(width)).amin(dim=(1, 2))
        x2 = torch.where(red, xs, -1.0).amax(dim=(1, 2)) + 1
        y1 = torch.where(red, ys, float(height)).amin(dim=(1, 2))
        y2 = torch.where(red, ys, -1.0).amax(dim=(1, 2)) + 1
        found = red.flatten(1).any(dim=1).to(x.dtype)
        box = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=1)  # [B, 4] cxcywh
        car = torch.tensor([0.0, 0.0, 1.0]).expand(x.shape[0], 3)
        person = torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3)
        shift = torch.tensor([1.0, 0.0, 0.0, 0.0])
        rows = [
            torch.cat([box, (0.9 * found).unsqueeze(1), car], 1),
            torch.cat([box + shift, (0.8 * found).unsqueeze(1), car], 1),
            torch.cat([box, (0.5 * found).unsqueeze(1), person], 1),
        ]
        return torch.stack(rows, dim=1), x.mean(dim=(2, 3))


class FailsOnBatches(torch.nn.Module):
    """TinyColorClassifier on one image, an exception on several: a batch-level failure."""

    def __init__(self):
        super().__init__()
        self.classifier = TinyColorClassifier()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] > 1:
            raise RuntimeError("simulated failure of a batched forward pass")
        return self.classifier(x)


class OnlyChannelsLast(torch.nn.Module):
    """TinyColorClassifier that refuses an input not in the channels-last memory format."""

    def __init__(self):
        super().__init__()
        self.classifier = TinyColorClassifier()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not x.is_contiguous(memory_format=torch.channels_last):
            raise RuntimeError("an NCHW input where channels-last is served")
        return self.classifier(x)


class AlwaysFails(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("simulated model failure")


def write_model_dir(path: Path, module: torch.nn.Module, metadata: dict | None = None) -> Path:
    """A model directory as TorchServe unpacks an archive: model + data files."""
    path.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(module)
    if metadata is None:
        torch.jit.save(scripted, str(path / "model.pt"))
    else:
        save_compiled(scripted, metadata, path / "model.pt")
    labels = {str(i): label for i, label in enumerate(COLOR_LABELS)}
    (path / "index_to_name.json").write_text(json.dumps(labels))
    return path


DEFAULT_YAML = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "handler": {"top_k": 3}}


@pytest.fixture
def make_handler(tmp_path):
    """make_handler(module=..., metadata=..., yaml=..., handler_class=...) -> (initialised handler, context).
    Defaults: the classifier handler on TinyColorClassifier."""
    from handlers.classifier_handler import ClassifierHandler

    def make(module=None, metadata=TINY_METADATA, yaml=DEFAULT_YAML, handler_class=ClassifierHandler):
        model_dir = write_model_dir(tmp_path / "model", module or TinyColorClassifier(), metadata)
        context = FakeContext(model_dir, yaml)
        handler = handler_class()
        handler.initialize(context)
        return handler, context

    return make


@pytest.fixture(scope="session")
def face_model_dir(tmp_path_factory) -> Path:
    """The face pixelizer's real networks (CenterFace, with RetinaFace as its companion, each
    with its pretrained weights), compiled once per test session into a model directory."""
    from scripts.building.compile import compile_model
    from scripts.families import family
    from scripts.zoo import get_model

    model_dir = tmp_path_factory.mktemp("face_pixelizer")
    spec = get_model("face_pixelizer")
    compiled = {spec: model_dir / "model.pt"}  # its companions compiled as it is, beside it
    compiled.update({get_model(name): path for name, path in spec.companion_files(compiled[spec]).items()})
    for built, path in compiled.items():
        compile_model(built, family(built.family).recipe.resolve_weights(built), path)
    return model_dir


@pytest.fixture(scope="module")
def pixelizer(face_model_dir):
    """The face pixelizer's handler on its real model, with its YAML settings -> (handler, context)."""
    import yaml

    from handlers.face_pixelizer_handler import FacePixelizerHandler
    from scripts.zoo import get_model

    context = FakeContext(face_model_dir, yaml.safe_load(get_model("face_pixelizer").config_file.read_text()))
    handler = FacePixelizerHandler()
    handler.initialize(context)
    return handler, context
