"""Networks that answer their task's outputs and, beside them, a small feature vector
per image: what the handlers' live drift test compares (handlers/observers.py).

Every compiled model of the zoo answers a tuple: the task's outputs, then the pooled
features float [B, D] last. The features cost one global average over a map the
network computes anyway.
"""

import copy

import torch
from torch import nn


class ClassifierWithFeatures(nn.Module):
    """A torchvision classifier (ResNet: `fc`, MobileNetV2: `classifier`) split before its
    head: (logits [B, classes], pooled penultimate features [B, D])."""

    def __init__(self, network: nn.Module):
        super().__init__()
        head = "fc" if hasattr(network, "fc") else "classifier"
        body = copy.deepcopy(network)  # the caller's network stays whole
        self.head = getattr(body, head)
        setattr(body, head, nn.Identity())  # the body now ends at the pooled, flattened features
        self.body = body

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


class WithFeatures(nn.Module):
    """A network that defines `forward_features(x) -> (*outputs, features [B, D])` (YOLOv5,
    RetinaFace), compiled through that method."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor):
        return self.network.forward_features(x)


def pooled(feature_map: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C]: the global average (the map's padding included)."""
    return feature_map.mean(dim=(2, 3))
