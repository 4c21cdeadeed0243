"""The detector handler with a fake context and a tiny deterministic detector that
finds red rectangles, so every box the handler returns can be checked to the pixel."""

import base64
import io
import json

import pytest
import torch
from PIL import Image, ImageDraw

from batched_handler import INPUT_FORMAT
from detector_handler import DetectorHandler
from scripts.photos import encode

NAMES = ["person", "bicycle", "car"]
DETECTOR_METADATA = {
    "task": "detection",
    "model": "tiny-detector",
    "architecture": "RedBoxDetector",
    "input_size": [320, 320],
    "stride": 32,
    "letterbox_fill": 114,
    "num_classes": 3,
    "class_names": NAMES,
    "weights": {"name": "test-fixture", "origin": "tests/handler/test_detector_handler.py", "sha256": None},
    "input_format": INPUT_FORMAT,
}
YAML = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "handler": {}}


class RedBoxDetector(torch.nn.Module):
    """YOLOv5-shaped output [B, 3, 5 + 3] in input pixels: row 0 the box around all
    pure-red pixels as a "car" (score 0.9); row 1 the same box shifted by one pixel
    with a lower score (NMS must drop it); row 2 the same box as a "person" scoring
    0.5 (class-aware NMS keeps it). No red pixels: objectness 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255  # uint8 RGB in, as every compiled model
        red = (x[:, 0] > 0.8) & (x[:, 1] < 0.2) & (x[:, 2] < 0.2)  # [B, H, W]
        height, width = red.shape[1], red.shape[2]
        xs = torch.arange(width, dtype=x.dtype).view(1, 1, width).expand_as(red)
        ys = torch.arange(height, dtype=x.dtype).view(1, height, 1).expand_as(red)
        x1 = torch.where(red, xs, float(width)).amin(dim=(1, 2))
        x2 = torch.where(red, xs, -1.0).amax(dim=(1, 2)) + 1
        y1 = torch.where(red, ys, float(height)).amin(dim=(1, 2))
        y2 = torch.where(red, ys, -1.0).amax(dim=(1, 2)) + 1
        found = red.flatten(1).any(dim=1).to(x.dtype)
        box = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=1)  # [B, 4] cxcywh
        car = torch.tensor([0.0, 0.0, 1.0]).expand(x.shape[0], 3)
        person = torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3)
        shift = torch.tensor([1.0, 0.0, 0.0, 0.0])
        rows = [
            torch.cat([box, (0.9 * found).unsqueeze(1), car], 1),
            torch.cat([box + shift, (0.8 * found).unsqueeze(1), car], 1),
            torch.cat([box, (0.5 * found).unsqueeze(1), person], 1),
        ]
        return torch.stack(rows, dim=1)


def photo_with_red_box(size, box, fmt="PNG") -> bytes:
    image = Image.new("RGB", size, (40, 90, 160))
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 0, 0))
    return encode(image, fmt)


@pytest.fixture
def detector(make_handler):
    return make_handler(RedBoxDetector(), DETECTOR_METADATA, YAML, handler_class=DetectorHandler)


CASES = [((640, 480), (100, 50, 300, 200)), ((200, 900), (20, 400, 180, 880)), ((333, 333), (0, 0, 40, 333))]


def test_batch_of_differently_sized_photos_maps_boxes_back_to_each_original(detector):
    handler, context = detector
    results = [json.loads(r) for r in handler.handle([{"body": photo_with_red_box(*case)} for case in CASES], context)]
    for (size, box), result in zip(CASES, results, strict=True):
        assert result["image_size"] == list(size)
        car, person = result["detections"]  # the shifted duplicate was suppressed, the person kept
        assert (car["class_name"], car["class_index"], person["class_name"]) == ("car", 2, "person")
        assert car["confidence"] == pytest.approx(0.9) and person["confidence"] == pytest.approx(0.5)
        # within a pixel of the rectangle, after letterboxing to 320 and back
        scale = max(size) / 320
        got = [car["left"], car["top"], car["right"], car["bottom"]]
        assert got == pytest.approx(list(box), abs=1.5 * scale)
        assert 0 <= got[0] <= got[2] <= size[0] and 0 <= got[1] <= got[3] <= size[1]
    assert set(context.content_types.values()) == {"application/json"}


def test_no_red_no_detections(detector):
    handler, context = detector
    (result,) = handler.handle([{"body": encode(Image.new("RGB", (50, 40), (0, 0, 255)), "JPEG")}], context)
    assert json.loads(result)["detections"] == []


def test_per_request_overrides(detector):
    handler, context = detector
    image = photo_with_red_box((320, 240), (10, 10, 100, 100))
    rows = [
        {"data": image, "confidence": b"0.6"},  # the person (0.5) drops out
        {"data": image, "classes": b"person"},
        {"data": image, "max_detections": b"1"},
        {"body": {"data": base64.b64encode(image).decode(), "iou": 0.0, "classes": ["car", "0"]}},
        {"data": image, "classes": b"dragon"},
        {"data": image, "confidence": b"abc"},
        {"data": image, "format": b"xml"},
    ]
    results = handler.handle(rows, context)
    names = [[d["class_name"] for d in json.loads(r).get("detections", [])] for r in results]
    assert names[:4] == [["car"], ["person"], ["car"], ["car", "person"]]
    assert [context.status(i) for i in range(7)] == [200, 200, 200, 200, 400, 400, 400]
    assert "unknown class 'dragon'" in json.loads(results[4])["detail"]
    assert json.loads(results[5])["detail"].startswith("confidence:")


def test_format_image_returns_the_photo_with_boxes_as_jpeg(detector):
    handler, context = detector
    image = photo_with_red_box((400, 300), (100, 100, 200, 200))
    (jpeg,) = handler.handle([{"data": image, "format": b"image", "classes": b"car"}], context)
    assert context.content_types[0] == "image/jpeg"
    drawn = Image.open(io.BytesIO(jpeg))
    assert drawn.format == "JPEG" and drawn.size == (400, 300)
    original = Image.open(io.BytesIO(image)).convert("RGB")
    # The box outline lies on the rectangle's edge; far from it, nothing changed.
    assert max(abs(a - b) for a, b in zip(drawn.getpixel((100, 150)), original.getpixel((100, 150)), strict=True)) > 60
    assert max(abs(a - b) for a, b in zip(drawn.getpixel((350, 50)), original.getpixel((350, 50)), strict=True)) < 12


def test_bad_images_fail_alone(detector):
    handler, context = detector
    good = photo_with_red_box((100, 100), (10, 10, 50, 50))
    results = handler.handle([{"body": good}, {"body": b"<svg/>"}, {"body": good[:100]}], context)
    assert [context.status(i) for i in range(3)] == [200, 415, 400]
    assert len(json.loads(results[0])["detections"]) == 2


def test_input_size_must_fit_the_model_stride(make_handler):
    with pytest.raises(ValueError, match="not a multiple of the model's stride 32"):
        make_handler(RedBoxDetector(), DETECTOR_METADATA, {**YAML, "handler": {"input_size": 300}}, DetectorHandler)


def test_input_size_from_the_config_changes_the_letterbox(make_handler):
    yaml = {**YAML, "handler": {"input_size": 160}}
    handler, context = make_handler(RedBoxDetector(), DETECTOR_METADATA, yaml, DetectorHandler)
    (result,) = handler.handle([{"body": photo_with_red_box((640, 480), (100, 50, 300, 200))}], context)
    car = json.loads(result)["detections"][0]
    assert [car["left"], car["top"], car["right"], car["bottom"]] == pytest.approx([100, 50, 300, 200], abs=6)


def test_an_image_answer_over_the_response_limit_is_a_413(make_handler):
    yaml = {**YAML, "handler": {"max_response_bytes": 2000}}
    handler, context = make_handler(RedBoxDetector(), DETECTOR_METADATA, yaml, DetectorHandler)
    image = photo_with_red_box((400, 300), (100, 100, 200, 200))
    small = photo_with_red_box((40, 30), (10, 10, 20, 20))
    results = handler.handle([{"data": image, "format": b"image"}, {"data": small, "format": b"image"}], context)
    assert context.status(0) == 413 and json.loads(results[0])["error"] == "result too large"
    assert context.status(1) == 200 and context.content_types[1] == "image/jpeg"


def test_a_large_photo_decoded_at_reduced_scale_maps_boxes_to_its_full_size(detector):
    handler, context = detector
    big = photo_with_red_box((3200, 2400), (800, 400, 2400, 1600), fmt="JPEG")  # 1/4-scale decode for 320
    (result,) = handler.handle([{"body": big}], context)
    document = json.loads(result)
    assert document["image_size"] == [3200, 2400]
    car = document["detections"][0]
    assert [car["left"], car["top"], car["right"], car["bottom"]] == pytest.approx([800, 400, 2400, 1600], abs=25)
