"""The face pixelizer handler with a fake context and the real RetinaFace weights,
on real photos: faces are found where they are and only they are pixelated."""

import io
import json

import numpy as np
import torch
from PIL import Image

from handlers.edge import jpegs_of
from handlers.engine import Answer, Failure
from handlers.imaging import jpeg_bytes
from handlers.tasks.face import expand_boxes
from scripts.samples.photos import encode, photo

# The astronaut's face in skimage's 512x512 photo (x1, y1, x2, y2), by eye with a margin.
ASTRONAUT_FACE = (170, 50, 280, 190)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def mean_difference(a: np.ndarray, b: np.ndarray, box=None, outside=False) -> float:
    """Mean absolute difference over the whole image, inside `box`, or outside it."""
    mask = np.full(a.shape[:2], box is None)
    if box is not None:
        x1, y1, x2, y2 = box
        mask[y1:y2, x1:x2] = True
        mask = ~mask if outside else mask
    return float(np.abs(a - b)[mask].mean())


def jpeg_round_trip(image: Image.Image) -> np.ndarray:
    """What re-encoding alone does to a photo (the encoder and quality the handler uses)."""
    as_tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return pixels(jpeg_bytes(as_tensor, quality=90))


def test_faces_are_pixelated_and_nothing_else_changes(pixelizer):
    handler, context = pixelizer
    astronaut, coffee = photo("astronaut"), photo("coffee")
    rows = [
        {"body": encode(astronaut, "PNG")},
        {"body": encode(coffee, "PNG")},
        {"data": encode(astronaut, "PNG"), "format": b"json"},
    ]
    face_photo, coffee_photo, found = handler.handle(rows, context)
    assert context.content_types == {0: "image/jpeg", 1: "image/jpeg", 2: "application/json"}
    assert context.headers[0]["X-Faces"] == "1" and context.headers[1]["X-Faces"] == "0"
    (face,) = json.loads(found)["faces"]
    box = torch.tensor([[face["left"], face["top"], face["right"], face["bottom"]]])
    (region,) = expand_boxes(box, handler.task.settings.margin, 512, 512)  # what the handler pixelated
    assert json.loads(context.headers[0]["X-Face-Boxes"]) == [list(region)]
    assert json.loads(context.headers[1]["X-Face-Boxes"]) == []
    original, out = np.asarray(astronaut).astype(np.int16), pixels(face_photo)
    assert out.shape == original.shape
    assert mean_difference(out, original, (190, 80, 260, 170)) > 15  # the face itself
    # Outside the expanded box: exactly what re-encoding the untouched photo gives.
    baseline = jpeg_round_trip(astronaut)
    assert mean_difference(out, baseline, region, outside=True) < 0.5
    assert mean_difference(pixels(coffee_photo), jpeg_round_trip(coffee)) < 0.5


def test_json_lists_the_face_with_landmarks(pixelizer):
    handler, context = pixelizer
    (result,) = handler.handle([{"body": encode(photo("astronaut"), "JPEG"), "format": b"json"}], context)
    document = json.loads(result)
    assert document["image_size"] == [512, 512] and document["weights_sha256"]
    (face,) = document["faces"]
    assert face["score"] > 0.99
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert x1 <= face["left"] < face["right"] <= x2 and y1 <= face["top"] < face["bottom"] <= y2
    assert len(face["landmarks"]) == 5
    assert all(face["left"] <= x <= face["right"] and face["top"] <= y <= face["bottom"] for x, y in face["landmarks"])
    left_eye, right_eye = face["landmarks"][:2]
    assert left_eye[0] < right_eye[0]  # image-left first


def test_exif_rotated_photo_comes_back_upright(pixelizer):
    handler, context = pixelizer
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated: a viewer turns it 90 degrees counter-clockwise
    stored = photo("astronaut").crop((0, 0, 512, 400)).transpose(Image.Transpose.ROTATE_270)
    (out,) = handler.handle([{"body": encode(stored, "JPEG", exif=exif, quality=95)}], context)
    assert Image.open(io.BytesIO(out)).size == (512, 400)  # as displayed, not as stored
    assert context.headers[0]["X-Faces"] == "1"


def test_per_request_settings_including_input_size_in_one_batch(pixelizer):
    handler, context = pixelizer
    image = encode(photo("astronaut"), "PNG")
    rows = [
        {"data": image, "format": b"json", "input_size": b"320"},  # a smaller forward pass, same batch
        {"data": image, "format": b"json"},
        {"data": image, "mode": b"blur", "margin": b"0.5"},
        {"data": image, "blocks": b"2"},
        {"data": image, "mode": b"erase"},
        {"data": image, "input_size": b"100"},
        {"data": image, "confidence": b"1.5"},
    ]
    results = handler.handle(rows, context)
    assert [context.status(i) for i in range(7)] == [200] * 4 + [400] * 3
    assert len(json.loads(results[0])["faces"]) == len(json.loads(results[1])["faces"]) == 1
    blurred, coarse = pixels(results[2]), pixels(results[3])
    assert mean_difference(blurred, coarse, (190, 80, 260, 170)) > 5  # different anonymisations
    assert "mode must be one of mosaic, blur" in json.loads(results[4])["detail"]
    assert "input_size must be a multiple of 32" in json.loads(results[5])["detail"]


def test_image_answers_are_encoded_together_and_one_that_cannot_be_encoded_fails_alone():
    """`jpegs_of` JPEG-encodes a batch's image answers in one call per quality; when that
    call fails, each is encoded alone and only the broken one becomes a 500."""
    good = torch.zeros(3, 16, 16, dtype=torch.uint8)
    broken = torch.zeros(3, 16, 16, dtype=torch.float32)  # not uint8: the encoder refuses it
    error = Failure(415, "unsupported image format", "not an image")
    results = [Answer(image=good), Answer(image=broken), error, Answer(image=good, jpeg_quality=50), Answer({"a": 1})]
    done = jpegs_of(results)
    assert sorted(done) == [0, 1, 3]
    assert done[0] == jpeg_bytes(good, 90) and done[3] == jpeg_bytes(good, 50)
    assert isinstance(done[1], Failure) and done[1].status == 500


def test_an_image_answer_a_jpeg_cannot_hold_is_a_413_for_that_request_alone(pixelizer):
    """torchvision's JPEG encoder ends the whole worker on a side over 65,500 pixels
    (libjpeg's limit): such an answer is refused before the encoder is called, and its
    batch-mates are answered; the same image as JSON is answered."""
    handler, context = pixelizer
    wide = encode(photo("coffee").resize((65_501, 1)), "PNG")
    tall = encode(photo("coffee").resize((1, 65_501)), "PNG")
    rows = [{"body": wide}, {"body": encode(photo("astronaut"), "PNG")}, {"body": tall},
            {"data": wide, "format": b"json"}]  # fmt: skip
    results = handler.handle(rows, context)
    assert [context.status(i) for i in range(4)] == [413, 200, 413, 200]
    for index in (0, 2):
        refusal = json.loads(results[index])
        assert refusal["error"] == "image answer too large" and "65500 pixels a side" in refusal["detail"]
        assert "format=json" in refusal["detail"]
    assert pixels(results[1]).shape == (512, 512, 3)
    assert json.loads(results[3])["image_size"] == [65_501, 1]
