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
