"""The detector task (YOLOv5): a photo letterboxed, the objects found out -- as JSON, or
drawn on the photo. YOLOv5 output decoding with class-aware NMS and the drawing are pure
functions."""

import colorsys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..engine import Answer, Item, Task
from ..errors import InputError, shown
from ..imaging import box_fields, letterbox, unletterbox_boxes
from ..observers import DETECTIONS_PER_IMAGE, TOP_DETECTION_CONFIDENCE
from ..settings import DETECTION_PARAMS, OUTPUT_FORMATS, DetectionSettings, check_range
from ..vision_ops import best_per_group, cxcywh_to_xyxy, nms_per_image, rows_per_group

# ultralytics' non_max_suppression keeps at most this many boxes before NMS (max_nms).
MAX_NMS_CANDIDATES = 30_000


@dataclass(frozen=True)
class DetectorSettings(DetectionSettings):
    score_threshold: float = 0.25  # objectness x class probability
    iou_threshold: float = 0.45  # NMS, per class
    max_detections: int = 300
    classes: tuple[str, ...] = ()  # keep only these class names or indices; () = all

    def __post_init__(self):
        super().__post_init__()
        check_range("max_detections", self.max_detections, 1, 10_000)


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


class Detector(Task):
    name = "detection"
    settings_class = DetectorSettings
    request_params = {**DETECTION_PARAMS, "max_detections": "max_detections", "classes": "classes"}
    parameter_choices = {"format": OUTPUT_FORMATS}

    def __init__(
        self, settings: DetectorSettings, metadata: dict, model_dir: Path, device: torch.device, companions=None
    ):
        super().__init__(settings, metadata, model_dir, device, companions)
        self.class_names = metadata["class_names"]
        self.input_size = self.letterbox_size(settings.input_size)
        self.fill = metadata["letterbox_fill"]

    def describe(self) -> dict:
        return {"class_names": self.class_names}

    def resolve(self, settings: DetectorSettings) -> DetectorSettings:
        try:
            wanted = class_filter(settings.classes, self.class_names)  # an unknown class: 400 before inference
        except ValueError as err:
            raise InputError("invalid parameter", f"classes: {err}") from err
        if wanted is None:
            return settings
        # By name, each once: what the answer echoes is then bounded by the class list.
        names = tuple(self.class_names[index] for index in dict.fromkeys(wanted.tolist()))
        return replace(settings, classes=names)

    def decode_at_least(self, settings: DetectorSettings) -> tuple[int, str] | None:
        if settings.format == "image":
            return None  # the boxes are drawn on the photo at its full size
        return self.input_size, "contain"  # the long side is letterboxed to input_size anyway

    def prepare(self, item: Item):
        return letterbox(item.image, self.input_size, self.fill, item.original_size)

    def summarise(self, predictions: torch.Tensor, items: list[Item]) -> list[tuple[torch.Tensor, ...]]:
        requests = [
            DetectionRequest(
                item.settings.score_threshold,
                item.settings.iou_threshold,
                item.settings.max_detections,
                class_filter(item.settings.classes, self.class_names),  # checked by `resolve`
            )
            for item in items
        ]
        return detect_objects_batch(predictions, requests)

    def postprocess(self, detections: tuple[torch.Tensor, ...], item: Item) -> Answer:
        settings, geometry = item.settings, item.geometry
        boxes, scores, labels = detections
        boxes = unletterbox_boxes(boxes, geometry)
        item.observe(DETECTIONS_PER_IMAGE, len(boxes))  # a metric line per answer, not per detection
        if len(scores):
            item.observe(TOP_DETECTION_CONFIDENCE, scores[0].item())  # best first
        names = [self.class_names[label] for label in labels.tolist()]
        if settings.format == "image":
            captions = [f"{name} {score:.2f}" for name, score in zip(names, scores.tolist(), strict=True)]
            drawn = draw_detections(item.image, boxes, labels.tolist(), captions)
            return Answer(image=drawn, jpeg_quality=settings.jpeg_quality)
        detections = [
            {**box_fields(box), "confidence": round(score, 4), "class_index": label, "class_name": name}
            for box, score, label, name in zip(boxes.tolist(), scores.tolist(), labels.tolist(), names, strict=True)
        ]
        return Answer({"image_size": [geometry.width, geometry.height], "detections": detections})
