"""Object detection: settings, YOLOv5 output decoding with class-aware NMS, drawing.
Pure functions."""

import colorsys
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from errors import shown
from settings import ImageHandlerSettings, check_choice, check_range
from vision_ops import batched_nms, best_per_group, cxcywh_to_xyxy, rows_per_group

OUTPUT_FORMATS = ("json", "image")
# ultralytics' non_max_suppression keeps at most this many boxes before NMS (max_nms).
MAX_NMS_CANDIDATES = 30_000


@dataclass(frozen=True)
class DetectionSettings(ImageHandlerSettings):
    """What every detecting handler shares (the object detectors, the face pixelizer)."""

    # Letterbox size; 0 = the size the model was compiled and checked at (640).
    input_size: int = 0
    score_threshold: float = 0.25  # a detection's minimum score
    iou_threshold: float = 0.45  # NMS
    format: str = "json"  # "json": what was found; "image": the photo as JPEG (boxes drawn, or faces hidden)
    jpeg_quality: int = 90  # for format=image

    def __post_init__(self):
        super().__post_init__()
        check_range("input_size", self.input_size, 0, 4096)
        check_range("score_threshold", self.score_threshold, 0.0, 1.0)
        check_range("iou_threshold", self.iou_threshold, 0.0, 1.0)
        check_range("jpeg_quality", self.jpeg_quality, 1, 100)
        check_choice("format", self.format, OUTPUT_FORMATS)


@dataclass(frozen=True)
class DetectorSettings(DetectionSettings):
    score_threshold: float = 0.25  # objectness x class probability
    iou_threshold: float = 0.45  # NMS, per class
    max_detections: int = 300
    classes: tuple[str, ...] = ()  # keep only these class names or indices; () = all

    def __post_init__(self):
        super().__post_init__()
        check_range("max_detections", self.max_detections, 1, 10_000)


# The per-request parameters every detecting handler accepts -> the DetectionSettings field.
DETECTION_PARAMS = {"confidence": "score_threshold", "iou": "iou_threshold", "format": "format"}


def box_fields(box: list[float]) -> dict[str, float]:
    """(x1, y1, x2, y2) in pixels -> the answer's box fields, to a tenth of a pixel."""
    x1, y1, x2, y2 = (round(value, 1) for value in box)
    return {"left": x1, "top": y1, "right": x2, "bottom": y2}


def class_filter(classes: tuple[str, ...], names: list[str]) -> torch.Tensor | None:
    """Class names or indices -> a tensor of class indices (None: no filter).
    Raises ValueError naming an unknown class."""
    if not classes:
        return None
    indices = []
    for token in classes:
        token = token.strip()
        if token.isdigit() and int(token) < len(names):
            indices.append(int(token))
        elif token in names:
            indices.append(names.index(token))
        else:
            example = f"a name such as {names[0]!r} or an index 0..{len(names) - 1}"
            raise ValueError(f"unknown class {shown(token)} in classes; use {example}")
    return torch.tensor(indices)


def detect_objects(
    predictions: torch.Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    classes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's YOLOv5 output -> its detections, best first.

    predictions (Tensor[N, 5 + C]): (cx, cy, w, h, objectness, C class probabilities).
    Returns boxes (Tensor[K, 4]) in (x1, y1, x2, y2), scores (Tensor[K]) =
    objectness x best class probability, labels (Tensor[K]) -- one label per box, as
    ultralytics' detect.py, with class-aware NMS (boxes of different classes never
    suppress each other). On the CPU.
    """
    request = DetectionRequest(score_threshold, iou_threshold, max_detections, classes)
    return detect_objects_batch(predictions.unsqueeze(0), [request])[0]


@dataclass(frozen=True)
class DetectionRequest:
    """What one image of a batch asks `detect_objects_batch` for."""

    score_threshold: float
    iou_threshold: float
    max_detections: int
    classes: torch.Tensor | None = None  # class indices to keep; None: all


def detect_objects_batch(
    predictions: torch.Tensor, requests: list[DetectionRequest]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """detect_objects for a batch, predictions (Tensor[B, N, 5 + C]) on any device, at
    once: the thresholds, the candidates' scores, NMS per image and class and the best
    max_detections of each image computed where the predictions are, then one copy of the
    detections to the host. Returns, per image, boxes [K, 4], scores [K], labels [K] on the CPU."""
    device, num_classes = predictions.device, predictions.shape[-1] - 5
    thresholds = torch.tensor([r.score_threshold for r in requests], dtype=predictions.dtype, device=device)
    image, row = (predictions[..., 4] > thresholds[:, None]).nonzero(as_tuple=True)  # cheap objectness pre-filter
    candidates = predictions[image, row]
    scores, labels = (candidates[:, 5:] * candidates[:, 4:5]).max(dim=1)
    keep = scores > thresholds[image]
    if any(r.classes is not None for r in requests):
        allowed = torch.ones(len(requests), num_classes, dtype=torch.bool)
        for index, request in enumerate(requests):
            if request.classes is not None:
                allowed[index] = False
                allowed[index, request.classes] = True
        keep &= allowed.to(device)[image, labels]
    image, scores, labels = image[keep], scores[keep], labels[keep]
    boxes = cxcywh_to_xyxy(candidates[keep, :4])
    within = best_per_group(image, scores, torch.full((len(requests),), MAX_NMS_CANDIDATES, device=device))
    image, scores, labels, boxes = image[within], scores[within], labels[within], boxes[within]
    kept = nms_per_image(boxes, scores, image * num_classes + labels, image, [r.iou_threshold for r in requests])
    image, scores, labels, boxes = image[kept], scores[kept], labels[kept], boxes[kept]
    selected = best_per_group(image, scores, torch.tensor([r.max_detections for r in requests], device=device))
    parts = rows_per_group(image[selected], [boxes[selected], scores[selected], labels[selected]], len(requests))
    return [(part[:, :4].to(predictions.dtype), part[:, 4].to(predictions.dtype), part[:, 5].long()) for part in parts]


def nms_per_image(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, image: torch.Tensor, iou_thresholds: list[float]
) -> torch.Tensor:
    """Indices of the boxes that NMS keeps within each group, image i's at iou_thresholds[i]:
    one NMS call per image. NMS compares every pair of the boxes it is given (torchvision's
    CPU kernel takes 2.4 s for 30,000 boxes, 11 s for 60,000; its CUDA kernel a mask of
    N x N bits), so the boxes of different images are never given together: a batch of
    hostile requests (confidence=0, iou=1) then costs each image its own N, not the batch's."""
    counts = torch.bincount(image, minlength=len(iou_thresholds)).tolist()
    by_image = image.argsort(stable=True).split(counts)
    kept = [
        members[batched_nms(boxes[members], scores[members], groups[members], threshold)]
        for members, threshold in zip(by_image, iou_thresholds, strict=True)
        if len(members)
    ]
    return torch.cat(kept) if kept else torch.empty(0, dtype=torch.int64, device=boxes.device)


def draw_detections(image: torch.Tensor, boxes: torch.Tensor, labels: list[int], captions: list[str]) -> torch.Tensor:
    """uint8 [3, H, W] -> a copy with each box (x1, y1, x2, y2) outlined in its class's
    colour and captioned; line width and font scale with the photo."""
    picture = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(picture)
    line = max(2, round(max(picture.size) / 300))
    font = ImageFont.load_default(size=max(12, 6 * line))
    for (x1, y1, x2, y2), label, caption in zip(boxes.tolist(), labels, captions, strict=True):
        colour = class_colour(label)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        left, top, right, bottom = draw.textbbox((x1, y1), caption, font=font)
        text_y = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1  # above the box if it fits
        draw.rectangle([x1, text_y, x1 + right - left + 4, text_y + bottom - top + 4], fill=colour)
        draw.text((x1 + 2, text_y + 2 - (top - y1)), caption, fill=(255, 255, 255), font=font)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, stable colour per class: hues spaced by the golden ratio."""
    red, green, blue = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.9)
    return round(red * 255), round(green * 255), round(blue * 255)
