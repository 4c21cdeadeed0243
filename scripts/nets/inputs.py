"""Input adapters: every compiled model takes the handler's uint8 RGB batch [B, 3, H, W]
as it is and converts it itself, inside the graph. AOTInductor then fuses the
conversion into one pass over the pixels (instead of three in eager ops), and the
model file, not the handler, owns its input convention."""

import torch
from torch import nn


class ImageNetInput(nn.Module):
    """uint8 RGB -> (x / 255 - mean) / std, as one multiply-add per pixel."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.scale + self.shift


class UnitScaleInput(nn.Module):
    """uint8 RGB -> RGB in [0, 1] (YOLOv5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * (1.0 / 255.0)


class Float255Input(nn.Module):
    """uint8 RGB -> float RGB in 0..255 (CenterFace: no normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


class BGRMeanInput(nn.Module):
    """uint8 RGB -> BGR minus the training mean (RetinaFace, Caffe-style)."""

    def __init__(self, mean_bgr: tuple[float, float, float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean_bgr).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1).float() - self.mean


class WithInput(nn.Module):
    """An input adapter in front of a model: what scripts/building/compile.py compiles."""

    def __init__(self, adapter: nn.Module, model: nn.Module):
        super().__init__()
        self.adapter = adapter
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(self.adapter(x))
