"""EfficientNet-Lite0 (Tan & Le, EfficientNet, 2019; the Lite variant of TensorFlow's
tpu/models/official/efficientnet/lite): EfficientNet-B0's inverted-residual blocks without
squeeze-and-excitation, with ReLU6 instead of swish, as the TensorFlow checkpoints were
trained. Convolutions pad as TensorFlow's "same" does (the odd pixel at the bottom and the
right), which the trained weights expect.
"""

import math

import torch
import torch.nn.functional as nnf
from torch import nn

# EfficientNet-B0's stages: (repeats, kernel, stride, expansion, input channels, output channels).
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPSILON = 1e-3  # TensorFlow's batch-norm epsilon in the checkpoints


class SamePaddingConv2d(nn.Conv2d):
    """A convolution padded as TensorFlow's "same": out = ceil(in / stride)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        pad_h = max((math.ceil(height / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - height, 0)
        pad_w = max((math.ceil(width / self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - width, 0)
        x = nnf.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return nnf.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ConvBN(nn.Module):
    """Convolution (no bias), batch norm, and ReLU6 unless `activation` is False."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, activation: bool = True):
        super().__init__()
        self.conv = SamePaddingConv2d(cin, cout, kernel, stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPSILON)
        self.activation = nn.ReLU6() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (k x k, stride), project (1x1, linear); the input added back
    when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = ConvBN(cin, hidden, 1) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, activation=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """[B, 3, 224, 224] normalised RGB -> logits [B, num_classes]."""

    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.stem = ConvBN(3, 32, 3, stride=2)
        blocks = []
        for repeats, kernel, stride, expansion, cin, cout in stages:
            for index in range(repeats):  # the first block of a stage changes the shape
                blocks.append(InvertedResidual(cin if index == 0 else cout, cout, kernel, stride if index == 0 else 1,
                                               expansion))  # fmt: skip
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(stages[-1][-1], 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1)  # [B, 1280]
        return self.fc(self.dropout(features))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    return EfficientNetLite(LITE0_STAGES, num_classes)
