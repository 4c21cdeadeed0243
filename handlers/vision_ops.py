"""torchvision's image codecs and NMS for the workers, without importing torchvision.

Importing the torchvision package costs every worker ~87 MB of memory: its Python
package imports torch._dynamo and sympy (for torch.compile support the handlers never
use). Its compiled operators are what the handlers need, and they come from two shared
libraries that load in ~1 MB: this module loads them and calls the operators, and
writes the few tensor functions (resize, blur, box conversion) with plain torch, as
torchvision computes them. On CUDA (nvJPEG batches) it uses the torchvision package.
"""

import importlib.util
import io as io_module
import platform
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as nnf
from PIL import Image

RGB = 3  # torchvision.io.ImageReadMode.RGB
# libjpeg's JPEG_MAX_DIMENSION. Beyond it torchvision 0.29's encoder crashes the whole
# process (a segmentation fault: a 65501x1 image is enough): never call it with a larger image.
JPEG_MAX_SIDE = 65_500


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
    orientation applied; on CUDA in one nvJPEG call (torchvision.io.decode_jpeg), which
    ignores the EXIF orientation there ("only implemented for JPEG on CPU"): it is read
    from each file's header on the host and applied on the device."""
    if device.type == "cuda":
        from torchvision import io

        orientations = [exif_orientation(data.numpy().tobytes()) for data in datas]
        images = io.decode_jpeg(datas, mode=io.ImageReadMode.RGB, device=device)
        return [oriented(image, orientation) for image, orientation in zip(images, orientations, strict=True)]
    return [decode_jpeg(data) for data in datas]


def exif_orientation(data: bytes) -> int:
    """A JPEG's EXIF orientation (1-8; 1, as stored, when it says none), from its header."""
    try:
        with Image.open(io_module.BytesIO(data)) as image:
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # an unreadable header: the decoder says what is wrong with it
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def oriented(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] as stored -> as an EXIF `orientation` (1-8) says to display it."""
    if orientation in (2, 4):
        return image.flip(-1 if orientation == 2 else -2)
    turns = {3: 2, 5: 1, 6: -1, 7: -1, 8: 1}.get(orientation, 0)  # quarter turns, counter-clockwise
    turned = image.rot90(turns, (-2, -1)) if turns else image
    return turned.flip(-2) if orientation in (5, 7) else turned


def encode_jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 [3, H, W] -> JPEG bytes as uint8 [N]: torchvision.io.encode_jpeg, on the CPU.
    libjpeg reads rows of RGB pixels: an image stored that way ([3, H, W] with strides
    (1, 3W, 3), as the JPEG decoder leaves it) is read in place, any other is copied so first."""
    check_jpeg_encodable(image, quality)
    return torch.ops.image.encode_jpeg(image.cpu(), quality)


def check_jpeg_encodable(image: torch.Tensor, quality: int) -> None:
    """ValueError for what libjpeg cannot encode (see JPEG_MAX_SIDE), before it is asked."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, got {quality}")
    if image.dim() != 3 or not 1 <= min(image.shape[-2:]) <= max(image.shape[-2:]) <= JPEG_MAX_SIDE:
        raise ValueError(f"a JPEG holds 1 to {JPEG_MAX_SIDE} pixels a side, not {tuple(image.shape)}")


def encode_jpegs(images: list[torch.Tensor], quality: int, encoder: str = "device") -> list[torch.Tensor]:
    """Several uint8 [3, H, W] images, all on one device -> JPEG bytes as uint8 [N] each, on
    the CPU. On CUDA, encoder "device": in one nvJPEG call (torchvision.io.encode_jpeg of a
    list, which waits for each image's length in turn, and keeps full-resolution chroma:
    larger files than libjpeg's), the compressed bytes copied back in one transfer; "host":
    the images copied to the host in one transfer, as rows of RGB pixels, and encoded there
    by libjpeg-turbo, as on the CPU."""
    for image in images:
        check_jpeg_encodable(image, quality)
    if not images or images[0].device.type == "cpu":
        return [encode_jpeg(image, quality) for image in images]
    if encoder == "device":
        from torchvision import io

        return moved(io.encode_jpeg([image.contiguous() for image in images], quality=quality), torch.device("cpu"))
    rows = moved([image.permute(1, 2, 0) for image in images], torch.device("cpu"))  # [H, W, 3] each
    return [encode_jpeg(image.permute(2, 0, 1), quality) for image in rows]


def moved(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Tensors (any strides) -> their values on `device`, each contiguous, in one copy: packed
    into one flat buffer (page-locked when it goes to a GPU, so that the copy is
    asynchronous; one wait when it comes back), copied, and split into views."""
    if not tensors:
        return []
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
    if flat.device.type == "cpu" and device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=flat.is_pinned())
    parts = flat.split([tensor.numel() for tensor in tensors])
    return [part.view(tensor.shape) for part, tensor in zip(parts, tensors, strict=True)]


def to_device(images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """CPU tensors -> the same tensors on `device` in one host-to-device copy (`moved`). On
    the CPU they are returned as they are."""
    if device.type == "cpu" or not images:
        return images
    return moved(images, device)


def _native_uint8_resize() -> bool:
    """Whether torch resizes uint8 images natively (vectorised) on this CPU."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


NATIVE_UINT8_RESIZE = _native_uint8_resize()


INTERPOLATIONS = ("bilinear", "bicubic")  # what a classifier's weights may have been evaluated with


def resize(image: torch.Tensor, size: Sequence[int], antialias: bool, mode: str = "bilinear") -> torch.Tensor:
    """uint8 [C, H, W] -> uint8 [C, *size], bilinear or bicubic (half-pixel centres), as
    torchvision's resize computes it: in uint8 where the CPU's kernels take it, else through
    float32 rounded back (bicubic overshoots: clamped to 0..255)."""
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {mode!r}")
    height, width = size
    if tuple(image.shape[-2:]) == (height, width):
        return image
    batch = image.unsqueeze(0)
    if image.device.type != "cpu" or not NATIVE_UINT8_RESIZE:
        resized = nnf.interpolate(batch.float(), size=(height, width), mode=mode, antialias=antialias)
        return resized.round_().clamp_(0, 255).to(image.dtype).squeeze(0)
    return nnf.interpolate(batch, size=(height, width), mode=mode, antialias=antialias).squeeze(0)


def resized_crop(image: torch.Tensor, top: int, left: int, height: int, width: int, size: Sequence[int],
                 antialias: bool, mode: str = "bilinear") -> torch.Tensor:  # fmt: skip
    """The region (top, left, height, width), inside the image, resized to `size`."""
    return resize(image[..., top : top + height, left : left + width], size, antialias, mode)


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


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each group (a class; an image and a class): every group's boxes are
    moved apart, beyond all the others, so that boxes of different groups never overlap.
    In float64: with thousands of groups the moved coordinates reach millions, where
    float32 would round them (and the overlaps computed from them) to 1/8 pixel."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes = boxes.double()
    offsets = groups.double() * (boxes.max() - boxes.min().clamp(max=0) + 1)
    return nms(boxes + offsets[:, None], scores.double(), iou_threshold)


# Boxes of several images given to one NMS call, at most: one call per image costs a
# device-to-host wait on a GPU (torchvision's CUDA kernel reads its mask back) and a dozen
# small operations anywhere, while NMS compares every pair of the boxes it is given; an
# image with more boxes than this is given alone.
NMS_BATCH_BOXES = 1024


def nms_per_image(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, image: torch.Tensor, iou_thresholds: list[float]
) -> torch.Tensor:
    """Indices of the boxes that NMS keeps within each group (groups never span images),
    image i's at iou_thresholds[i]. NMS compares every pair of the boxes it is given
    (torchvision's CPU kernel takes 2.4 s for 30,000 boxes, 11 s for 60,000; its CUDA kernel
    a mask of N x N bits), so the boxes of different images are given together only up
    to NMS_BATCH_BOXES (`nms_chunks`): a batch of hostile requests (confidence=0, iou=1)
    then costs each image its own N, not the batch's."""
    counts = torch.bincount(image, minlength=len(iou_thresholds)).tolist()
    by_image = image.argsort(stable=True).split(counts)
    kept = []
    for chunk in nms_chunks(counts, iou_thresholds, NMS_BATCH_BOXES):
        members = torch.cat([by_image[index] for index in chunk])
        kept.append(members[batched_nms(boxes[members], scores[members], groups[members], iou_thresholds[chunk[0]])])
    return torch.cat(kept) if kept else torch.empty(0, dtype=torch.int64, device=boxes.device)


def nms_chunks(counts: list[int], iou_thresholds: list[float], limit: int) -> list[list[int]]:
    """The images with boxes (counts[i] of them), in order, in runs that one NMS call takes:
    of one IoU threshold and at most `limit` boxes together, or one image alone."""
    chunks: list[list[int]] = []
    total = 0
    for index, count in enumerate(counts):
        if not count:
            continue
        if chunks and iou_thresholds[chunks[-1][0]] == iou_thresholds[index] and total + count <= limit:
            chunks[-1].append(index)
            total += count
        else:
            chunks.append([index])
            total = count
    return chunks


def rank_within_groups(groups: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """groups (Tensor[N], int), scores (Tensor[N]) -> each element's rank within its group
    by decreasing score (0: the group's best), in the elements' order. Keeps "the best k
    of each image" a mask, without a loop over the images."""
    if groups.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=groups.device)
    by_score = scores.argsort(descending=True, stable=True)
    order = by_score[groups[by_score].argsort(stable=True)]  # by group, best first within each
    sorted_groups = groups[order]
    starts = torch.ones_like(sorted_groups, dtype=torch.bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    positions = torch.arange(len(order), device=groups.device)
    first = torch.cummax(torch.where(starts, positions, 0), dim=0).values  # each run's first position
    ranks = torch.empty_like(positions)
    ranks[order] = positions - first
    return ranks


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (centre x, centre y, width, height) -> (x1, y1, x2, y2)."""
    centre, size = boxes[..., :2], boxes[..., 2:4]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def best_per_group(groups: torch.Tensor, scores: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """Indices of the best limits[g] elements of each group g (groups: Tensor[N] of
    indices into limits), ordered by group, best first within each."""
    ranks = rank_within_groups(groups, scores)
    selected = (ranks < limits[groups]).nonzero().squeeze(1)
    return selected[(groups[selected] * len(groups) + ranks[selected]).argsort()]


def rows_per_group(groups: torch.Tensor, columns: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Per-element columns (Tensor[N] or Tensor[N, D], any device), ordered by group ->
    for each of `count` groups its rows as float64 Tensor[K, sum of D] on the host: one
    copy for them all (float64 holds the indices and float32 values exactly)."""
    rows = torch.cat([(c.flatten(1) if c.dim() > 1 else c[:, None]).double() for c in columns], dim=1).cpu()
    return list(rows.split(torch.bincount(groups.cpu(), minlength=count).tolist()))
