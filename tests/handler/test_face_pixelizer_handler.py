"""The face pixelizer handler with a fake context and the real RetinaFace weights,
on real photos: faces are found where they are and only they are pixelated."""

import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageFilter

from handlers.edge import jpegs_of
from handlers.engine import Answer, Failure
from handlers.face_pixelizer_handler import FacePixelizerHandler
from handlers.imaging import jpeg_bytes
from handlers.tasks.face import expand_boxes
from scripts.building.inprocess import FakeContext
from scripts.samples.faces import box_iou, crowd, found, grid, walking_crowd
from scripts.samples.photos import encode, photo
from scripts.zoo import get_model

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
    assert face["score"] > 0.8  # CenterFace: 0.91
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert x1 <= face["left"] < face["right"] <= x2 and y1 <= face["top"] < face["bottom"] <= y2
    assert len(face["landmarks"]) == 5
    assert all(face["left"] <= x <= face["right"] and face["top"] <= y <= face["bottom"] for x, y in face["landmarks"])
    left_eye, right_eye = face["landmarks"][:2]
    assert left_eye[0] < right_eye[0]  # image-left first


def test_each_preset_names_the_weights_of_the_network_that_ran(pixelizer):
    """One archive, two networks: a JSON answer names the weights that found its faces."""
    handler, context = pixelizer
    image = encode(photo("astronaut"), "JPEG")
    thorough, fast = handler.handle([{"data": image, "format": b"json"},
                                     {"data": image, "format": b"json", "preset": b"fast"}], context)  # fmt: skip
    centerface, retinaface = handler.task.metadata["weights"], handler.task.companions["face_pixelizer_fast"]["weights"]
    assert (json.loads(thorough)["weights"], json.loads(thorough)["weights_sha256"]) == (
        centerface["name"], centerface["sha256"])  # fmt: skip
    assert (json.loads(fast)["weights"], json.loads(fast)["weights_sha256"]) == (
        retinaface["name"], retinaface["sha256"])  # fmt: skip
    assert centerface["sha256"] != retinaface["sha256"] and "RetinaFace" in retinaface["name"]


def test_the_describe_api_offers_the_yes_no_parameter_as_a_choice(pixelizer):
    """The page builds a list for each choice: enlarged_view's is true/false, its default true."""
    handler, context = pixelizer
    context.request_headers[0] = {"describe": "True"}
    try:
        (answer,) = handler.handle([{}], context)
    finally:
        context.request_headers.clear()
    described = json.loads(answer)
    assert described["parameters"]["enlarged_view"] is True
    assert described["choices"]["enlarged_view"] == [True, False] and described["choices"]["preset"] == [
        "thorough", "fast"]  # fmt: skip


def test_exif_rotated_photo_comes_back_upright(pixelizer):
    handler, context = pixelizer
    stored = photo("astronaut").crop((0, 0, 512, 400)).transpose(Image.Transpose.ROTATE_270)
    # orientation 8, stored rotated: a viewer turns it 90 degrees counter-clockwise
    (out,) = handler.handle([{"body": encode(stored, "JPEG", orientation=8, quality=95)}], context)
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


def faces_in(handler, context, data: bytes, **params) -> list[tuple[float, ...]]:
    fields = {name: str(value).encode() for name, value in {"format": "json", **params}.items()}
    (body,) = handler.handle([{"data": data, **fields}], context)
    return [(f["left"], f["top"], f["right"], f["bottom"]) for f in json.loads(body)["faces"]]


def test_the_default_preset_finds_every_real_face_of_small_sets(pixelizer):
    """LFW's 100 real face crops (scripts/samples/faces.py) at 16 px, and at 40 px darkened:
    the thorough preset (the default) finds them all -- RetinaFace's fast preset does not."""
    handler, context = pixelizer
    for face_set in (grid(16), grid(40, "dark")):
        assert found(face_set.boxes, faces_in(handler, context, face_set.data)) >= 99, face_set.name
    dark = grid(40, "dark")
    assert found(dark.boxes, faces_in(handler, context, dark.data, preset="fast")) < 95
    non_faces = grid(40, faces=False)
    assert faces_in(handler, context, non_faces.data) == []


def test_the_enlarged_view_finds_a_crowd_s_small_faces(pixelizer):
    """A 1280x720 frame of the walking crowd: CenterFace at the frame's own resolution
    misses its ~20 px faces; the default also sees the frame at 2x (enlarged_view), which
    finds them, and keeps every face the first view found."""
    handler, context = pixelizer
    pixels, boxes = next(walking_crowd(1280, 720, 1))
    small = tuple(box for box in boxes if box[2] - box[0] <= 25)
    data = encode(Image.fromarray(pixels), "PNG")
    assert len(small) >= 20
    one_view = faces_in(handler, context, data, enlarged_view="false")
    assert found(small, one_view) < len(small) // 2
    both = faces_in(handler, context, data)
    assert found(small, both) >= 0.9 * len(small)
    assert found(boxes, both) >= found(boxes, one_view) + found(small, both) - found(small, one_view)


def test_a_thumbnail_s_faces_are_seen_at_twice_its_first_view(pixelizer):
    """LFW's faces at 12 px in a 186x186 thumbnail: the first view enlarges it 2x (640 px at
    most), where CenterFace finds about half of them; its enlarged view is that view at 2x
    again, which finds them all -- and the same grid of non-faces gets no box."""
    handler, context = pixelizer
    thumbnail = grid(12)
    one_view = found(thumbnail.boxes, faces_in(handler, context, thumbnail.data, enlarged_view="false"))
    assert one_view < 80
    assert found(thumbnail.boxes, faces_in(handler, context, thumbnail.data)) >= 95
    assert faces_in(handler, context, grid(12, faces=False).data) == []


def test_a_photo_over_1080p_is_enlarged_in_tiles(pixelizer):
    """A 1920x1200 crowd of faces at 14-60 px: its 2x view (9.2 MP) passes max_view_pixels,
    and is seen in tiles -- which find the small faces its own resolution misses."""
    handler, context = pixelizer
    crowded = crowd(1920, 1200, 14, 60)
    one_view = found(crowded.boxes, faces_in(handler, context, crowded.data, enlarged_view="false"))
    assert one_view < 0.6 * len(crowded.boxes)
    assert found(crowded.boxes, faces_in(handler, context, crowded.data)) >= one_view + 0.25 * len(crowded.boxes)


def test_the_reduced_view_finds_a_face_larger_than_centerface_sees_whole(pixelizer):
    """The astronaut's face 1000 px tall (a close-up from a phone): CenterFace at the photo's
    resolution finds parts of it (its receptive field is smaller than the face), none
    overlapping the face by half; the default also sees the photo at 640 px (reduced_view),
    where the face is whole -- one box over the face, nothing else."""
    handler, context = pixelizer
    x1, y1, x2, y2 = ASTRONAUT_FACE
    pad_x, pad_y = (x2 - x1) // 10, (y2 - y1) // 10
    scale = 1000 / (y2 - y1)
    close_up = photo("astronaut").crop((x1 - pad_x, y1 - pad_y, x2 + pad_x, y2 + pad_y))
    close_up = close_up.resize((round(close_up.width * scale), round(close_up.height * scale)), Image.BICUBIC)
    face = tuple(round(value * scale) for value in (pad_x, pad_y, pad_x + x2 - x1, pad_y + y2 - y1))
    data = encode(close_up, "JPEG")
    assert min(close_up.size) > 700
    parts = faces_in(handler, context, data, reduced_view="false")
    assert parts and max(box_iou(face, box) for box in parts) < 0.5
    (whole,) = faces_in(handler, context, data)
    assert box_iou(face, whole) > 0.6


def test_a_face_cut_by_a_tile_border_is_found_once(face_model_dir):
    """A photo larger than max_view_pixels (here 1280x1280) is seen in tiles of 1280 px
    (tile_side) overlapping by 256:
    a face across the first tile's right edge (x = 1280) is whole in the next one, and the
    two views' detections merge into one face, where the face is. With max_forward_pixels
    one tile's, the four tiles run in four passes: the same answer."""

    def pixelizer_with(**settings):
        config = yaml.safe_load(get_model("face_pixelizer").config_file.read_text())
        config["handler"].update(settings)
        context = FakeContext(face_model_dir, config)
        handler = FacePixelizerHandler()
        handler.initialize(context)
        return handler, context

    canvas = photo("coffee").resize((2000, 1400)).filter(ImageFilter.GaussianBlur(8))
    x1, y1, x2, y2 = ASTRONAUT_FACE
    canvas.paste(photo("astronaut").crop(ASTRONAUT_FACE), (1220, 600))
    pasted = (1220, 600, 1220 + x2 - x1, 600 + y2 - y1)
    assert pasted[0] < 1280 < pasted[2]  # across the first tile's edge
    (face,) = faces_in(*pixelizer_with(max_view_pixels=1280 * 1280), encode(canvas, "PNG"))
    assert box_iou(face, pasted) > 0.3
    chunked = pixelizer_with(max_view_pixels=1280 * 1280, max_forward_pixels=1280 * 1280)
    (again,) = faces_in(*chunked, encode(canvas, "PNG"))
    assert again == pytest.approx(face, abs=0.01)  # another batch size: the same up to rounding
