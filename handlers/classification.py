"""Image classification: settings and the top-k decoding of logits. Pure functions."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from settings import ImageHandlerSettings, check_range


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
    probabilities = torch.softmax(logits.float(), dim=-1)
    scores, indices = probabilities.topk(min(k, probabilities.numel()))
    return [
        {"label": labels[index], "index": index, "score": round(score, 6)}
        for score, index in zip(scores.tolist(), indices.tolist(), strict=True)
    ]
