"""The detector handler with a fake context and a tiny deterministic detector that
finds red rectangles, so every box the handler returns can be checked to the pixel."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from handlers.detector_handler import DetectorHandler
from scripts.samples.photos import encode, photo
from tests.handler.conftest import DETECTOR_METADATA, RedBoxDetector

YAML = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "handler": {}}


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
    yaml = {**YAML, "handler": {"max_response_bytes": 16_384}}
    handler, context = make_handler(RedBoxDetector(), DETECTOR_METADATA, yaml, DetectorHandler)
    image = encode(photo("astronaut"), "PNG")  # about 60 KB as the JPEG answer
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


@pytest.mark.parametrize("size, box", [((400, 300), (100, 60, 260, 220)), ((3200, 2400), (800, 400, 2400, 1600))])
def test_format_image_draws_at_full_size_where_the_json_puts_the_boxes(detector, size, box):
    """A large JPEG is decoded at a reduced scale for detection; its drawn answer must
    still have the photo's full size, with the box outline at the JSON's coordinates."""
    handler, context = detector
    photo = photo_with_red_box(size, box, fmt="JPEG")
    document, jpeg = (
        handler.handle([{"data": photo, "classes": b"car", "format": fmt}], context)[0] for fmt in (b"json", b"image")
    )
    (car,) = json.loads(document)["detections"]
    drawn = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    original = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")).astype(int)
    assert drawn.shape == original.shape  # (height, width, 3) of the photo as sent
    changed = np.abs(drawn - original).max(axis=-1) > 60
    left, top, right, bottom = (round(car[side]) for side in ("left", "top", "right", "bottom"))
    middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
    for x, y in [(left, middle_y), (right, middle_y), (middle_x, bottom)]:  # the outline, within 3 px
        assert changed[y - 3 : y + 4, x - 3 : x + 4].any(), (x, y)
    inset = max(20, size[0] // 100)  # beyond the outline's width
    assert not changed[middle_y, left + inset : right - inset].any()  # inside the box: untouched
    assert not changed[middle_y, inset : left - inset].any()  # left of it too


def test_parameters_from_headers_and_the_answer_says_what_was_applied(detector):
    handler, context = detector
    image = photo_with_red_box((320, 240), (10, 10, 100, 100))
    context.request_headers = {
        0: {"X-Classes": "person", "X-Forwarded-For": "10.1.2.3"},  # a proxy's own X- header is no parameter
        1: {"X-Format": "image"},  # what `curl -T img.jpg -H "X-Format: image"` sends
        2: {"x-max_detections": "1"},
        3: {"X-Confidence": "0.6"},  # and the same parameter in the body: refused, not guessed
    }
    rows = [{"body": image}, {"body": image}, {"body": image}, {"data": image, "confidence": b"0.3"}]
    person, drawn, single, repeated = handler.handle(rows, context)
    assert [context.status(i) for i in range(4)] == [200, 200, 200, 400]
    person = json.loads(person)
    assert [d["class_name"] for d in person["detections"]] == ["person"]
    assert person["parameters"] == {
        "confidence": 0.25,
        "iou": 0.45,
        "max_detections": 300,
        "classes": ["person"],
        "format": "json",
    }
    assert context.content_types[1] == "image/jpeg"
    assert json.loads(context.headers[1]["X-Parameters"])["format"] == "image"
    assert json.loads(single)["parameters"]["max_detections"] == 1 and len(json.loads(single)["detections"]) == 1
    assert json.loads(repeated)["error"] == "repeated parameter" and "confidence" in json.loads(repeated)["detail"]


def test_an_unknown_class_is_refused_before_any_inference(detector):
    handler, context = detector
    image = photo_with_red_box((320, 240), (10, 10, 100, 100))
    (result,) = handler.handle([{"data": image, "classes": b"car,dragon"}], context)
    assert context.status(0) == 400 and "classes: unknown class 'dragon'" in json.loads(result)["detail"]
    assert not context.metrics.of("zoo_stage_seconds", stage="forward")  # the model never ran
