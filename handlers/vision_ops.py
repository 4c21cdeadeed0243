"""torchvision's image codecs and NMS for the workers, without importing torchvision.

Importing the torchvision package costs every worker ~87 MB of memory: its Python
package imports torch._dynamo and sympy (for torch.compile support the handlers never
use). Its compiled operators are what the handlers need, and they come from two shared
libraries that load in ~1 MB: this module loads them and calls the operators, and
writes the few tensor functions (resize, blur, box conversion) with plain torch, as
torchvision computes them. On CUDA (nvJPEG batches) it uses the torchvision package.
"""

import importlib.util
import platform
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as nnf

RGB = 3  # torchvision.io.ImageReadMode.RGB


def _load_operators() -> None:
    """Register torchvision's operators (torch.ops.torchvision.*, torch.ops.image.*)."""
    spec = importlib.util.find_spec("torchvision")  # finds the package, does not import it
    if spec is None or spec.origin is None:
        raise ImportError("torchvision is not installed")
    package = Path(spec.origin).parent
    for stem in ("_C", "image"):
        # torchvision 0.29 builds them as _C_stable.so / image_stable.so, earlier ones as _C.so / image.so
        found = [path for name in (f"{stem}_stable.so", f"{stem}.so") if (path := package / name).is_file()]
        if not found:
            raise ImportError(f"torchvision's {stem} library not found in {package}")
        torch.ops.load_library(str(found[0]))


_load_operators()


def decode_jpeg(data: torch.Tensor) -> torch.Tensor:
    """JPEG bytes (uint8 [N]) -> uint8 RGB [3, H, W], EXIF orientation applied:
    torchvision.io.decode_jpeg on the CPU."""
    return torch.ops.image.decode_jpeg(data, RGB, True)


def decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Several JPEGs (uint8 [N] each) -> uint8 RGB [3, H, W] each on `device`, EXIF
    orientation applied; on CUDA in one nvJPEG call (torchvision.io.decode_jpeg)."""
    if device.type == "cuda":
        from torchvision import io

        return io.decode_jpeg(datas, mode=io.ImageReadMode.RGB, apply_exif_orientation=True, device=device)
    return [decode_jpeg(data) for data in datas]


def encode_jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 [3, H, W] on the CPU -> JPEG bytes as uint8 [N]: torchvision.io.encode_jpeg."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, got {quality}")
    return torch.ops.image.encode_jpeg(image, quality)


def _native_uint8_resize() -> bool:
    """Whether torch resizes uint8 images natively (vectorised) on this CPU."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


NATIVE_UINT8_RESIZE = _native_uint8_resize()


def resize(image: torch.Tensor, size: Sequence[int], antialias: bool) -> torch.Tensor:
    """uint8 [C, H, W] -> uint8 [C, *size], bilinear (half-pixel centres), as torchvision's
    resize computes it: in uint8 where the CPU's kernels take it, else through float32
    rounded back."""
    height, width = size
    if tuple(image.shape[-2:]) == (height, width):
        return image
    batch = image.unsqueeze(0)
    if image.device.type != "cpu" or not NATIVE_UINT8_RESIZE:
        resized = nnf.interpolate(batch.float(), size=(height, width), mode="bilinear", antialias=antialias)
        return resized.round_().to(image.dtype).squeeze(0)
    return nnf.interpolate(batch, size=(height, width), mode="bilinear", antialias=antialias).squeeze(0)


def resized_crop(image: torch.Tensor, top: int, left: int, height: int, width: int, size: Sequence[int],
                 antialias: bool) -> torch.Tensor:  # fmt: skip
    """The region (top, left, height, width), inside the image, resized to `size`."""
    return resize(image[..., top : top + height, left : left + width], size, antialias)


def gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """float [C, H, W] -> the same, blurred by a normalised `kernel_size` Gaussian with
    reflected borders (each side must be longer than kernel_size // 2)."""
    half = kernel_size // 2
    x = torch.linspace(-half, half, kernel_size, dtype=image.dtype, device=image.device)
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    weights = weights / weights.sum()
    kernel = torch.outer(weights, weights).expand(image.shape[0], 1, kernel_size, kernel_size)
    padded = nnf.pad(image.unsqueeze(0), [half] * 4, mode="reflect")
    return nnf.conv2d(padded, kernel, groups=image.shape[0]).squeeze(0)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes (x1, y1, x2, y2) kept, by decreasing score: torchvision.ops.nms."""
    return torch.ops.torchvision.nms(boxes, scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each class: every class's boxes are moved apart, beyond all the others,
    so that boxes of different classes never overlap."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    offsets = classes.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (centre x, centre y, width, height) -> (x1, y1, x2, y2)."""
    centre, size = boxes[..., :2], boxes[..., 2:4]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)
