"""The classifier task (ResNet, MobileNetV2, EfficientNet-Lite0): a photo resized and
centre-cropped as the weights were evaluated, the top-k classes out."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine import Answer, Item, Task
from ..imaging import resize_center_crop
from ..observers import TOP1_PROBABILITY
from ..settings import ImageHandlerSettings, check_range


@dataclass(frozen=True)
class ClassifierSettings(ImageHandlerSettings):
    # Predictions per response; a request may ask for another k.
    top_k: int = 5

    def __post_init__(self):
        super().__post_init__()
        check_range("top_k", self.top_k, 1, 1000)


def load_labels(path: Path, num_classes: int) -> list[str]:
    """Read an index -> label JSON (`{"0": "tench", ...}`; TorchServe's
    `["n01440764", "tench"]` values are accepted too) as a list indexed by class."""
    mapping = json.loads(Path(path).read_text())
    labels = [mapping.get(str(index)) for index in range(num_classes)]
    missing = [index for index, label in enumerate(labels) if label is None]
    if missing or len(mapping) != num_classes:
        raise ValueError(f"{path} must map exactly the indices 0..{num_classes - 1}; missing: {missing[:5]}")
    return [label[-1] if isinstance(label, list) else str(label) for label in labels]


def top_k_predictions(logits: torch.Tensor, k: int, labels: list[str]) -> list[dict]:
    """logits [C] -> the k most probable classes as {"label", "index", "score"},
    best first, with softmax probabilities as scores."""
    return batched_top_k(logits.unsqueeze(0), [k], labels)[0]


def batched_top_k(logits: torch.Tensor, ks: list[int], labels: list[str]) -> list[list[dict]]:
    """logits [B, C] (any device) -> per image its ks[i] most probable classes, as
    top_k_predictions: one softmax and one top-k for the batch where the logits are,
    and one copy of [B, max(ks)] scores and indices to the host."""
    probabilities = torch.softmax(logits.float(), dim=-1)
    scores, indices = probabilities.topk(min(max(ks), probabilities.shape[-1]), dim=-1)
    # One copy: class indices (< 2^24) are exact in float64 beside the scores.
    rows = torch.cat([scores.double(), indices.double()], dim=-1).cpu().tolist()
    width = scores.shape[-1]
    return [
        [
            {"label": labels[int(index)], "index": int(index), "score": round(score, 6)}
            for score, index in zip(row[: min(k, width)], row[width : width + min(k, width)], strict=True)
        ]
        for row, k in zip(rows, ks, strict=True)
    ]


class Classifier(Task):
    name = "classification"
    settings_class = ClassifierSettings
    request_params = {"top_k": "top_k"}

    def __init__(
        self, settings: ClassifierSettings, metadata: dict, model_dir: Path, device: torch.device, companions=None
    ):
        super().__init__(settings, metadata, model_dir, device, companions)
        self.labels = load_labels(model_dir / "index_to_name.json", metadata["num_classes"])
        self.resize_size, self.crop_size = metadata["resize_size"], metadata["input_size"][0]
        # The resize the weights were evaluated with (compiled models before it was recorded: bilinear).
        self.interpolation = metadata.get("interpolation", "bilinear")

    def decode_at_least(self, settings: ClassifierSettings) -> tuple[int, str]:
        return self.resize_size, "cover"  # the short side is resized to resize_size anyway

    def prepare(self, item: Item) -> tuple[torch.Tensor, None]:
        return resize_center_crop(item.image, self.resize_size, self.crop_size, self.interpolation), None

    def summarise(self, logits: torch.Tensor, items: list[Item]) -> list[list[dict]]:
        return batched_top_k(logits, [item.settings.top_k for item in items], self.labels)

    def postprocess(self, predictions: list[dict], item: Item) -> Answer:
        item.observe(TOP1_PROBABILITY, predictions[0]["score"])
        return Answer({"predictions": predictions})
