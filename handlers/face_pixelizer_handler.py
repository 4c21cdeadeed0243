"""TorchServe handler for the face pixelizer: photo in, the same photo with every face
pixelated out (or, with format=json, the faces found)."""

import json
from dataclasses import replace
from pathlib import Path

import torch

from batched_handler import BatchedImageHandler, Item, Response
from detection import DETECTION_PARAMS, OUTPUT_FORMATS, box_fields
from face_detection import (
    MODES,
    Faces,
    FaceSettings,
    Region,
    decode_faces_batch,
    expand_boxes,
    pixelate_regions,
    prior_boxes,
)
from imaging import letterbox, unletterbox_boxes, unletterbox_points
from metrics import FACES_PER_IMAGE

# Regions listed in X-Face-Boxes, at most: 4 integers of up to 8 digits each (a side can
# be 40 M pixels long) take at most 38 characters, so the header stays under 7.6 KB.
MAX_HEADER_REGIONS = 200


class FacePixelizerHandler(BatchedImageHandler):
    settings_class = FaceSettings
    # request parameter -> setting
    request_params = {
        **DETECTION_PARAMS,
        **{name: name for name in ("input_size", "max_faces", "mode", "blocks", "block_size", "margin")},
    }
    parameter_choices = {"format": OUTPUT_FORMATS, "mode": MODES}
    task = "face_detection"

    def setup(self, model_dir: Path) -> None:
        self.default_size = self.letterbox_size(self.settings.input_size)
        # Letterbox padding in the mean colour: after its mean subtraction the model sees zeros.
        self.fill = [round(value) for value in reversed(self.metadata["mean_bgr"])]
        self.priors_config = self.metadata["priors"]
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

    def postprocess(self, faces: Faces, item: Item) -> Response:
        settings, geometry = item.settings, item.geometry
        boxes, points = unletterbox_boxes(faces.boxes, geometry), unletterbox_points(faces.landmarks, geometry)
        self.observe(item, FACES_PER_IMAGE, len(boxes))
        if settings.format == "json":
            rows = zip(boxes.tolist(), faces.scores.tolist(), points.tolist(), strict=True)
            found = [face_record(box, score, marks) for box, score, marks in rows]
            return self.answer(item, image_size=[geometry.width, geometry.height], faces=found)
        regions = expand_boxes(boxes, settings.margin, geometry.width, geometry.height)
        anonymised = pixelate_regions(item.image, regions, settings)
        return self.image_answer(item, anonymised, headers=face_headers(regions))

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
