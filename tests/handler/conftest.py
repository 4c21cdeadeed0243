"""A fake TorchServe context and a tiny deterministic classifier, so the handler runs
exactly as in a worker but without Java, archives or trained weights."""

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from batched_handler import INPUT_FORMAT
from scripts.compile import save_compiled

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
}


class TinyColorClassifier(torch.nn.Module):
    """Takes uint8 RGB like every compiled model, normalises with ImageNet statistics, and
    answers logits = (mean normalised R, G, B, 1.0) * 10: a saturated red, green or blue
    image is that colour's class, a mid-gray one is "gray". Exact, so tests can expect
    exact answers."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = ((x.float() / 255 - self.mean) / self.std).mean(dim=(2, 3))  # [B, 3]
        return torch.cat([channels, torch.ones_like(channels[:, :1])], dim=1) * 10.0


class FailsOnBatches(torch.nn.Module):
    """TinyColorClassifier on one image, an exception on several: a batch-level failure."""

    def __init__(self):
        super().__init__()
        self.classifier = TinyColorClassifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            raise RuntimeError("simulated failure of a batched forward pass")
        return self.classifier(x)


class AlwaysFails(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("simulated model failure")


class MetricsRecorder:
    def __init__(self):
        self.times: dict[str, list[float]] = defaultdict(list)

    def add_time(self, name, value, idx=None, unit="ms"):
        self.times[name].append(value)


class FakeContext:
    """The parts of ts.context.Context a handler uses, recording what it sets."""

    def __init__(self, model_dir: Path, yaml_config: dict, gpu_id=None):
        self.model_name = "tiny"
        self.manifest = {"model": {"modelName": "tiny", "serializedFile": "model.pt"}}
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": 8}
        self.model_yaml_config = yaml_config
        self.metrics = MetricsRecorder()
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}
        self.headers: dict[int, dict[str, str]] = defaultdict(dict)

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_types[idx] = value

    def set_response_header(self, idx, key, value):
        self.headers[idx][key] = value

    def status(self, idx: int) -> int:
        return self.statuses.get(idx, (200, ""))[0]


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
    from classifier_handler import ClassifierHandler

    def make(module=None, metadata=TINY_METADATA, yaml=DEFAULT_YAML, handler_class=ClassifierHandler):
        model_dir = write_model_dir(tmp_path / "model", module or TinyColorClassifier(), metadata)
        context = FakeContext(model_dir, yaml)
        handler = handler_class()
        handler.initialize(context)
        return handler, context

    return make
