"""The face pixelizer task: a photo in, the same photo with every face pixelated out (or,
with format=json, the faces found). RetinaFace's prior boxes and decoding, and the
mosaic/blur that replaces every face, are pure functions on tensors, any device."""

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as nnf

from ..engine import Answer, Item, Task
from ..imaging import box_fields, letterbox, unletterbox_boxes, unletterbox_points
from ..observers import FACES_PER_IMAGE
from ..settings import DETECTION_PARAMS, OUTPUT_FORMATS, DetectionSettings, check_choice, check_range
from ..vision_ops import best_per_group, gaussian_blur, nms_per_image, rows_per_group

MODES = ("mosaic", "blur")
STRIDE = 32  # RetinaFace's coarsest feature map: input sizes must divide by it
Region = tuple[int, int, int, int]  # (x1, y1, x2, y2) in whole pixels
# Regions listed in X-Face-Boxes, at most: 4 integers of up to 8 digits each (a side can
# be 40 M pixels long) take at most 38 characters, so the header stays under 7.6 KB.
MAX_HEADER_REGIONS = 200


@dataclass(frozen=True)
class FaceSettings(DetectionSettings):
    score_threshold: float = 0.5  # face probability
    iou_threshold: float = 0.4  # NMS
    format: str = "image"  # "image": the anonymised photo (JPEG); "json": the faces found
    top_k: int = 5000  # best candidates kept before NMS
    max_faces: int = 750  # faces kept after NMS
    mode: str = "mosaic"  # "mosaic" (irreversible) or "blur"
    blocks: int = 8  # mosaic cells across a face's longer side...
    block_size: int = 0  # ...or, when > 0, cells of this many pixels
    margin: float = 0.15  # each box grows by this fraction of its size on every side

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


@dataclass(frozen=True)
class Faces:
    boxes: torch.Tensor  # [K, 4] (x1, y1, x2, y2)
    scores: torch.Tensor  # [K]
    landmarks: torch.Tensor  # [K, 5, 2] (x, y): eyes, nose, mouth corners, image-left first


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

    mosaic: each cell becomes one flat colour, the mean of the pixels under it, so no
    original pixel value survives inside a region; blur: the region is reduced to the
    same grid, Gaussian-blurred and smoothly enlarged again."""
    out = image.clone()
    for x1, y1, x2, y2 in regions:
        height, width = y2 - y1, x2 - x1
        grid = mosaic_grid(height, width, settings.blocks, settings.block_size)
        cells = nnf.adaptive_avg_pool2d(out[:, y1:y2, x1:x2].float().unsqueeze(0), grid).squeeze(0)
        if settings.mode == "mosaic":
            out[:, y1:y2, x1:x2] = spread_cells(to_uint8(cells), height, width)
        else:
            if min(grid) >= 2:  # reflect padding needs two cells
                cells = gaussian_blur(cells, 3, sigma=1.0)
            smooth = nnf.interpolate(cells.unsqueeze(0), size=(height, width), mode="bilinear", align_corners=False)
            out[:, y1:y2, x1:x2] = to_uint8(smooth.squeeze(0))
    return out


def spread_cells(cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[C, rows, cols] -> [C, height, width]: each pixel takes the value of the cell it falls
    in (cell index = floor(pixel * cells / size)); a gather in the cells' dtype."""
    rows = torch.arange(height, device=cells.device) * cells.shape[1] // height
    cols = torch.arange(width, device=cells.device) * cells.shape[2] // width
    return cells.index_select(1, rows).index_select(2, cols)


def to_uint8(values: torch.Tensor) -> torch.Tensor:
    return values.round().clamp(0, 255).to(torch.uint8)


class FacePixelizer(Task):
    name = "face_detection"
    settings_class = FaceSettings
    request_params = {
        **DETECTION_PARAMS,
        **{name: name for name in ("input_size", "max_faces", "mode", "blocks", "block_size", "margin")},
    }
    parameter_choices = {"format": OUTPUT_FORMATS, "mode": MODES}

    def __init__(self, settings: FaceSettings, metadata: dict, model_dir: Path, device: torch.device):
        super().__init__(settings, metadata, model_dir, device)
        self.default_size = self.letterbox_size(settings.input_size)
        # Letterbox padding in the mean colour: after its mean subtraction the model sees zeros.
        self.fill = [round(value) for value in reversed(metadata["mean_bgr"])]
        self.priors_config = metadata["priors"]
        self.priors: dict[tuple[int, int], torch.Tensor] = {}

    def resolve(self, settings: FaceSettings) -> FaceSettings:
        return settings if settings.input_size else replace(settings, input_size=self.default_size)

    def prepare(self, item: Item):
        # Decoded at full size: the anonymised photo goes back at its original resolution.
        return letterbox(item.image, item.settings.input_size, self.fill)

    def summarise(self, outputs: tuple[torch.Tensor, ...], items: list[Item]) -> list[Faces]:
        loc, conf, landmarks = outputs
        priors = self.priors_for(*items[0].input.shape[-2:])  # a forward pass has one input size
        variances = tuple(self.priors_config["variances"])
        return decode_faces_batch(loc, conf, landmarks, priors, variances, [item.settings for item in items])

    def postprocess(self, faces: Faces, item: Item) -> Answer:
        settings, geometry = item.settings, item.geometry
        boxes, points = unletterbox_boxes(faces.boxes, geometry), unletterbox_points(faces.landmarks, geometry)
        item.observe(FACES_PER_IMAGE, len(boxes))
        if settings.format == "json":
            rows = zip(boxes.tolist(), faces.scores.tolist(), points.tolist(), strict=True)
            found = [face_record(box, score, marks) for box, score, marks in rows]
            return Answer({"image_size": [geometry.width, geometry.height], "faces": found})
        regions = expand_boxes(boxes, settings.margin, geometry.width, geometry.height)
        anonymised = pixelate_regions(item.image, regions, settings)
        return Answer(image=anonymised, jpeg_quality=settings.jpeg_quality, headers=face_headers(regions))

    def priors_for(self, height: int, width: int) -> torch.Tensor:
        """Prior boxes per input size, computed once."""
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
