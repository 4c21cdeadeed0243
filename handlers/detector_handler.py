"""TorchServe handler for the YOLOv5 object detectors."""

from dataclasses import replace
from pathlib import Path

import torch

from batched_handler import BatchedImageHandler, Item, Response
from detection import (
    DETECTION_PARAMS,
    OUTPUT_FORMATS,
    DetectionRequest,
    DetectorSettings,
    box_fields,
    class_filter,
    detect_objects_batch,
    draw_detections,
)
from errors import InputError
from imaging import letterbox, unletterbox_boxes
from metrics import DETECTION_CONFIDENCE, DETECTIONS_PER_IMAGE, MAX_CONFIDENCES_PER_IMAGE


class DetectorHandler(BatchedImageHandler):
    settings_class = DetectorSettings
    # request parameter -> setting
    request_params = {**DETECTION_PARAMS, "max_detections": "max_detections", "classes": "classes"}
    parameter_choices = {"format": OUTPUT_FORMATS}
    task = "detection"

    def setup(self, model_dir: Path) -> None:
        self.class_names = self.metadata["class_names"]
        self.input_size = self.letterbox_size(self.settings.input_size)
        self.fill = self.metadata["letterbox_fill"]

    def describe(self) -> dict:
        return {**super().describe(), "class_names": self.class_names}

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

    def postprocess(self, detections: tuple[torch.Tensor, ...], item: Item) -> Response:
        settings, geometry = item.settings, item.geometry
        boxes, scores, labels = detections
        boxes = unletterbox_boxes(boxes, geometry)
        self.observe(item, DETECTIONS_PER_IMAGE, len(boxes))
        for score in scores[:MAX_CONFIDENCES_PER_IMAGE].tolist():  # best first
            self.observe(item, DETECTION_CONFIDENCE, score)
        names = [self.class_names[label] for label in labels.tolist()]
        if settings.format == "image":
            captions = [f"{name} {score:.2f}" for name, score in zip(names, scores.tolist(), strict=True)]
            drawn = draw_detections(item.image, boxes, labels.tolist(), captions)
            return self.image_answer(item, drawn)
        detections = [
            {**box_fields(box), "confidence": round(score, 4), "class_index": label, "class_name": name}
            for box, score, label, name in zip(boxes.tolist(), scores.tolist(), labels.tolist(), names, strict=True)
        ]
        return self.answer(item, image_size=[geometry.width, geometry.height], detections=detections)
