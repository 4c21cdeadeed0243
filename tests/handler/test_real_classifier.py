"""The classifier handler on the compiled classifiers with real ImageNet weights (built by
`make archive`: MobileNetV2, torchvision's; EfficientNet-Lite0, TensorFlow's checkpoint
with its own bicubic preprocessing), on real photos."""

import json
from pathlib import Path

import pytest

from scripts.building.inprocess import load_handler
from scripts.building.models import read_metadata
from scripts.samples.photos import photo_bytes
from scripts.zoo import REPO, get_model

CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
# model -> (the weights' name, their sha256's first characters, the interpolation they expect)
TRAINED = {
    "mobilenet_v2": ("MobileNet_V2_Weights.IMAGENET1K_V1", "b0353104", "bilinear"),
    "efficientnet_lite0": (get_model("efficientnet_lite0").offline_weights.weights, "57934424", "bicubic"),
}


@pytest.fixture(scope="module", params=sorted(TRAINED))
def classifier(request, tmp_path_factory):
    compiled = REPO / "build" / get_model(request.param).artifact
    if not compiled.is_file():
        pytest.skip(f"{compiled.relative_to(REPO)} is missing: run `make archive`")
    if read_metadata(compiled)["weights"]["name"] == "random":
        pytest.skip(f"{request.param} was built without its offline weights")
    handler, context = load_handler(request.param, Path(tmp_path_factory.mktemp(request.param)))
    return request.param, handler, context


def test_real_photos_get_sensible_labels_in_one_batch(classifier):
    model, handler, context = classifier
    rows = [
        {"body": bytearray(photo_bytes("chelsea", "PNG"))},
        {"body": bytearray(photo_bytes("coffee", "JPEG"))},
        {"body": bytearray(b"not an image")},
        {"body": bytearray(photo_bytes("chelsea", "WEBP"))},
    ]
    results = [json.loads(r) for r in handler.handle(rows, context)]
    assert results[0]["predictions"][0]["label"] in CATS
    assert results[1]["predictions"][0]["label"] in {"espresso", "cup", "coffee mug"}
    assert context.status(2) == 415
    assert results[3]["predictions"][0]["label"] in CATS
    name, sha256, interpolation = TRAINED[model]
    assert results[0]["weights"] == name and results[0]["weights_sha256"].startswith(sha256)
    assert handler.task.interpolation == interpolation  # from the compiled model's metadata
