"""The classifier handler on the compiled MobileNetV2 with real ImageNet weights
(built by `make archive`), on real photos."""

import json
import shutil
from pathlib import Path

import pytest

from scripts.build.inprocess import FakeContext
from scripts.build.models import read_metadata
from scripts.samples.photos import photo_bytes
from scripts.zoo import REPO
from tests.handler.conftest import DEFAULT_YAML

COMPILED = REPO / "build" / "mobilenet_v2.pt"
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    if not COMPILED.is_file():
        pytest.skip("build/mobilenet_v2.pt is missing: run `make archive`")
    if read_metadata(COMPILED)["weights"]["name"] == "random":
        pytest.skip("mobilenet_v2 was built without its offline weights")
    from classifier_handler import ClassifierHandler

    model_dir = Path(tmp_path_factory.mktemp("mobilenet_v2"))
    shutil.copy(COMPILED, model_dir / "model.pt")
    shutil.copy(REPO / "index_to_name.json", model_dir)
    context = FakeContext(model_dir, DEFAULT_YAML)
    handler = ClassifierHandler()
    handler.initialize(context)
    return handler, context


def test_real_photos_get_sensible_labels_in_one_batch(mobilenet):
    handler, context = mobilenet
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
    assert results[0]["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert results[0]["weights_sha256"].startswith("b0353104")
