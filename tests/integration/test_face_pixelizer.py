"""The face pixelizer through a real TorchServe, on real photos: the issue's
"done when" -- the astronaut comes back with her face pixelated and nothing else
changed; the coffee comes back as it was."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.imaging import jpeg_bytes
from handlers.tasks.face import expand_boxes
from scripts.samples.photos import encode, photo

pytestmark = pytest.mark.integration


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def reencoded(image: Image.Image) -> np.ndarray:
    """The photo after JPEG re-encoding alone (the handler's encoder and quality)."""
    return pixels(jpeg_bytes(torch.from_numpy(np.array(image)).permute(2, 0, 1), quality=90))


def test_astronaut_face_is_found_and_pixelated_and_nothing_else_changes(torchserve):
    astronaut = photo("astronaut")
    found = torchserve.predict("face_pixelizer", method="POST", files={"data": encode(astronaut, "PNG")},
                               data={"format": "json"})  # fmt: skip
    assert found.status_code == 200, found.text
    (face,) = found.json()["faces"]
    assert (
        face["score"] > 0.8  # CenterFace: 0.91
        and 170 <= face["left"] < face["right"] <= 280
        and 50 <= face["top"] < face["bottom"] <= 190
    )

    response = torchserve.predict("face_pixelizer", data=encode(astronaut, "PNG"))  # curl -T astronaut.png
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg"
    assert response.headers.get("X-Faces") == "1"
    out, original = pixels(response.content), np.asarray(astronaut).astype(np.int16)
    assert out.shape == original.shape
    x1, y1, x2, y2 = (round(face[key]) for key in ("left", "top", "right", "bottom"))
    assert np.abs(out - original)[y1:y2, x1:x2].mean() > 15  # strongly different inside the face box
    (region,) = expand_boxes(torch.tensor([[face["left"], face["top"], face["right"], face["bottom"]]]), 0.15, 512, 512)
    outside = np.ones(out.shape[:2], dtype=bool)
    outside[region[1] : region[3], region[0] : region[2]] = False
    assert np.abs(out - reencoded(astronaut))[outside].mean() < 0.5  # the same as re-encoding alone


def test_a_photo_without_faces_comes_back_unchanged(torchserve):
    coffee = photo("coffee")
    response = torchserve.predict("face_pixelizer", data=encode(coffee, "PNG"))
    assert response.status_code == 200 and response.headers.get("X-Faces") == "0"
    assert np.abs(pixels(response.content) - reencoded(coffee)).mean() < 0.5


def test_bad_parameters_are_400(torchserve):
    response = torchserve.predict("face_pixelizer", method="POST", files={"data": encode(photo("coffee"), "JPEG")},
                                  data={"mode": "erase"})  # fmt: skip
    assert response.status_code == 400 and "mode must be one of mosaic, blur" in response.json()["detail"]
