"""TorchServe handler for the YOLOv5 object detectors."""

from pathlib import Path

import torch

from batched_handler import BatchedImageHandler, Item, Response
from detection import DetectorSettings, class_filter, detect_objects, draw_detections
from imaging import InputError, letterbox, unletterbox_boxes


class DetectorHandler(BatchedImageHandler):
    settings_class = DetectorSettings
    # request parameter -> setting
    request_params = {
        "confidence": "score_threshold",
        "iou": "iou_threshold",
        "max_detections": "max_detections",
        "classes": "classes",
        "format": "format",
    }
    task = "detection"

    def setup(self, model_dir: Path) -> None:
        meta = self.metadata
        self.class_names = meta["class_names"]
        self.input_size = self.letterbox_size(self.settings.input_size)
        self.fill = meta["letterbox_fill"]

    def resolve(self, settings: DetectorSettings) -> DetectorSettings:
        try:
            class_filter(settings.classes, self.class_names)  # an unknown class: 400 before inference
        except ValueError as err:
            raise InputError("invalid parameter", f"classes: {err}") from err
        return settings

    def decode_at_least(self, settings: DetectorSettings) -> tuple[int, str] | None:
        if settings.format == "image":
            return None  # the boxes are drawn on the photo at its full size
        return self.input_size, "contain"  # the long side is letterboxed to input_size anyway

    def prepare(self, item: Item):
        return letterbox(item.image, self.input_size, self.fill, item.original_size)

    def postprocess(self, predictions: torch.Tensor, item: Item) -> Response:
        settings, meta = item.settings, item.meta
        wanted = class_filter(settings.classes, self.class_names)  # checked by `resolve`
        boxes, scores, labels = detect_objects(
            predictions, settings.score_threshold, settings.iou_threshold, settings.max_detections, wanted
        )
        boxes = unletterbox_boxes(boxes, meta)
        names = [self.class_names[label] for label in labels.tolist()]
        if settings.format == "image":
            captions = [f"{name} {score:.2f}" for name, score in zip(names, scores.tolist(), strict=True)]
            drawn = draw_detections(item.image, boxes, labels.tolist(), captions)
            return self.image_answer(item, drawn)
        detections = [
            {
                "left": round(x1, 1),
                "top": round(y1, 1),
                "right": round(x2, 1),
                "bottom": round(y2, 1),
                "confidence": round(score, 4),
                "class_index": label,
                "class_name": name,
            }
            for (x1, y1, x2, y2), score, label, name in zip(
                boxes.tolist(), scores.tolist(), labels.tolist(), names, strict=True
            )
        ]
        return self.answer(item, image_size=[meta.width, meta.height], detections=detections)
