"""YOLOv5 v7.0 P5 detection models (yolov5s/m/l), architecture only.

Module and parameter names follow ultralytics/yolov5 v7.0 (`models/common.py`,
`models/yolo.py`, `models/yolov5{s,m,l}.yaml`) exactly -- `model.0.conv.weight` ...
`model.24.m.2.bias`, `model.24.anchors` -- so that a release checkpoint's state dict
loads with `strict=True`. Unlike ultralytics' graph-walking forward, the P5 topology
is written out, so the whole model (Detect's grid/anchor decode included) compiles
with TorchScript for any batch size and any input size divisible by 32.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from scripts.nets.features import pooled

# models/yolov5s.yaml (v7.0): anchors in pixels, (w, h) pairs per level P3/8, P4/16, P5/32.
ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class YOLOv5Config:
    depth_multiple: float
    width_multiple: float
    num_classes: int = 80


SIZES = {
    "yolov5s": YOLOv5Config(depth_multiple=0.33, width_multiple=0.50),
    "yolov5m": YOLOv5Config(depth_multiple=0.67, width_multiple=0.75),
    "yolov5l": YOLOv5Config(depth_multiple=1.00, width_multiple=1.00),
}


def autopad(kernel: int) -> int:
    return kernel // 2  # 'same' padding for odd kernels, as ultralytics' autopad(k)


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k) if p is None else p, bias=False)
        # ultralytics' initialize_weights() sets eps=1e-3, momentum=0.03 on every BatchNorm2d;
        # eps is not in the state dict, so it must match for the weights to mean the same.
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        hidden = c2 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(c1, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """1x1 conv per level, then the YOLOv5 decode into [B, N, 5 + classes] rows of
    (cx, cy, w, h) in input pixels, objectness and per-class probabilities."""

    def __init__(self, num_classes: int, channels: tuple[int, int, int]):
        super().__init__()
        self.nc = num_classes
        self.no = num_classes + 5  # outputs per anchor
        self.nl = len(ANCHORS)
        self.na = len(ANCHORS[0]) // 2
        strides = torch.tensor(STRIDES, dtype=torch.float32)
        # As in ultralytics after DetectionModel.__init__: anchors in grid units (pixels / stride).
        anchors = torch.tensor(ANCHORS, dtype=torch.float32).view(self.nl, -1, 2) / strides.view(-1, 1, 1)
        self.register_buffer("anchors", anchors)  # [nl, na, 2], in the checkpoint
        self.register_buffer("stride", strides, persistent=False)  # not in ultralytics' state dict
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        outputs = []
        for i, conv in enumerate(self.m):
            x = conv(features[i])
            batch, _, ny, nx = x.shape
            x = x.view(batch, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()  # [B, na, ny, nx, no]
            grid, anchor_grid = self._make_grid(nx, ny, i, x.dtype, x.device)
            xy = (x[..., 0:2] * 2 + grid) * self.stride[i]
            wh = (x[..., 2:4] * 2) ** 2 * anchor_grid
            outputs.append(torch.cat((xy, wh, x[..., 4:]), -1).view(batch, -1, self.no))
        return torch.cat(outputs, 1)

    def _make_grid(self, nx: int, ny: int, i: int, dtype: torch.dtype, device: torch.device):
        y = torch.arange(ny, dtype=dtype, device=device)
        x = torch.arange(nx, dtype=dtype, device=device)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5  # offset: xy = 2 * sigmoid - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).to(dtype)
        return grid, anchor_grid

    def initialize_biases(self) -> None:
        """ultralytics' Detect bias priors (yolo.py `_initialize_biases`): about 8 objects
        per 640x640 image and class probability 0.6/nc, so that an untrained model
        predicts little rather than everything."""
        for conv, stride in zip(self.m, STRIDES, strict=True):
            bias = conv.bias.data.view(self.na, -1)
            bias[:, 4] += math.log(8 / (640 / stride) ** 2)
            bias[:, 5 : 5 + self.nc] += math.log(0.6 / (self.nc - 0.99))


class YOLOv5(nn.Module):
    """The P5 model: `self.model` is ultralytics' 25-layer Sequential, index for index."""

    def __init__(self, config: YOLOv5Config):
        super().__init__()

        def width(channels: int) -> int:  # make_divisible(channels * width_multiple, 8)
            return math.ceil(channels * config.width_multiple / 8) * 8

        def depth(repeats: int) -> int:
            return max(round(repeats * config.depth_multiple), 1)

        c64, c128, c256, c512, c1024 = (width(c) for c in (64, 128, 256, 512, 1024))
        self.model = nn.Sequential(
            Conv(3, c64, 6, 2, 2),  # 0-P1/2
            Conv(c64, c128, 3, 2),  # 1-P2/4
            C3(c128, c128, depth(3)),
            Conv(c128, c256, 3, 2),  # 3-P3/8
            C3(c256, c256, depth(6)),
            Conv(c256, c512, 3, 2),  # 5-P4/16
            C3(c512, c512, depth(9)),
            Conv(c512, c1024, 3, 2),  # 7-P5/32
            C3(c1024, c1024, depth(3)),
            SPPF(c1024, c1024, 5),  # 9
            Conv(c1024, c512, 1, 1),  # 10
            nn.Upsample(None, 2, "nearest"),
            Concat(1),  # cat backbone P4
            C3(c1024, c512, depth(3), shortcut=False),  # 13
            Conv(c512, c256, 1, 1),  # 14
            nn.Upsample(None, 2, "nearest"),
            Concat(1),  # cat backbone P3
            C3(c512, c256, depth(3), shortcut=False),  # 17 (P3/8-small)
            Conv(c256, c256, 3, 2),
            Concat(1),  # cat head P4
            C3(c512, c512, depth(3), shortcut=False),  # 20 (P4/16-medium)
            Conv(c512, c512, 3, 2),
            Concat(1),  # cat head P5
            C3(c1024, c1024, depth(3), shortcut=False),  # 23 (P5/32-large)
            Detect(config.num_classes, (c256, c512, c1024)),  # 24
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] RGB in [0, 1], H and W multiples of 32 -> [B, N, 5 + classes]."""
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (detections [B, N, 5 + classes], the backbone's pooled last map (SPPF) [B, C])."""
        m = self.model
        p3 = m[4](m[3](m[2](m[1](m[0](x)))))
        p4 = m[6](m[5](p3))
        p5 = m[9](m[8](m[7](p4)))
        h10 = m[10](p5)
        h14 = m[14](m[13](m[12]([m[11](h10), p4])))
        small = m[17](m[16]([m[15](h14), p3]))
        medium = m[20](m[19]([m[18](small), h14]))
        large = m[23](m[22]([m[21](medium), h10]))
        return m[24]([small, medium, large]), pooled(p5)
