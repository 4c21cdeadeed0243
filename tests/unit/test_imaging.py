"""Decoding of every accepted format and of broken input; the classification crop."""

import io
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from handlers.errors import InputError
from handlers.imaging import (
    ImageInfo,
    LetterboxGeometry,
    Placement,
    center_crop_box,
    check_image,
    decode_image,
    decode_image_at_least,
    input_views,
    jpeg_bytes,
    jpeg_reduction,
    letterbox,
    padded,
    probe_image,
    resize_center_crop,
    stack_inputs,
    unletterbox_boxes,
)
from scripts.samples.photos import encode

LIMIT = 40_000_000


def checked(data: bytes) -> tuple[bytes, ImageInfo]:
    """The bytes and the header a handler checked once when it read the request."""
    return data, check_image(data, LIMIT)


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16).transpose(2, 0, 1)


def mean_abs_diff(tensor: torch.Tensor, expected: np.ndarray) -> float:
    return float(np.abs(tensor.numpy().astype(np.int16) - expected).mean())


@pytest.mark.parametrize(
    "fmt, mode, options, tolerance",
    [
        ("JPEG", "RGB", {"quality": 95}, 0.0),
        ("PNG", "RGB", {}, 0.0),
        ("WEBP", "RGB", {"lossless": True}, 0.0),
        ("BMP", "RGB", {}, 0.0),
        ("TIFF", "RGB", {}, 0.0),
        ("PNG", "L", {}, 0.0),
        ("JPEG", "L", {}, 0.0),
        ("PNG", "RGBA", {}, 0.0),
        ("PNG", "P", {}, 0.0),
        ("GIF", "P", {}, 0.0),
        ("JPEG", "CMYK", {}, 2.0),
    ],
)
def test_decodes_formats_and_modes_to_rgb_uint8(chelsea, fmt, mode, options, tolerance):
    source = chelsea.convert(mode)
    data = encode(source, fmt, **options)
    decoded = decode_image(data, LIMIT)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 300, 451)
    # Compare with PIL's own RGB rendering of what was written (JPEG/CMYK: lossy).
    with Image.open(io.BytesIO(data)) as written:
        expected = as_array(written)
    assert mean_abs_diff(decoded, expected) <= tolerance + 1.0


def test_16_bit_png_keeps_the_most_significant_byte(chelsea):
    gray = np.asarray(chelsea.convert("L")).astype(np.uint16) * 257  # 8-bit values spread to 16 bits
    decoded = decode_image(encode(Image.fromarray(gray), "PNG"), LIMIT)
    assert decoded.dtype == torch.uint8
    assert torch.equal(decoded[0], torch.from_numpy((gray >> 8).astype(np.uint8)))
    assert torch.equal(decoded[0], decoded[2])


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (32, 24), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(data, LIMIT)
    assert decoded.shape == (3, 24, 32)
    assert decoded[0].float().mean() > 200 and decoded[2].float().mean() < 50  # red, not blue


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_exif_orientation_is_applied(chelsea, fmt):
    decoded = decode_image(encode(chelsea, fmt, orientation=6), LIMIT)  # rotate 90 CW to display
    assert decoded.shape == (3, 451, 300)  # portrait, as a viewer shows it
    upright = as_array(chelsea.transpose(Image.Transpose.ROTATE_270))
    assert mean_abs_diff(decoded, upright) < 3.0


@pytest.mark.parametrize(
    "data, status, error",
    [
        (b"", 400, "empty request"),
        (b"hello, this is text", 415, "unsupported image format"),
        (b"<html><body>not an image</body></html>", 415, "unsupported image format"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', 415, "unsupported image format"),
    ],
)
def test_non_images_are_refused(data, status, error):
    with pytest.raises(InputError) as caught:
        decode_image(data, LIMIT)
    assert (caught.value.status, caught.value.error) == (status, error)


def test_truncated_jpeg_is_corrupt(chelsea_jpeg):
    with pytest.raises(InputError) as caught:
        decode_image(chelsea_jpeg[: len(chelsea_jpeg) // 2], LIMIT)
    assert caught.value.status == 400 and caught.value.error == "corrupt image"


@pytest.mark.parametrize("where", ["header", "pixels"])
def test_png_with_bad_crc_is_corrupt(chelsea, where):
    data = bytearray(encode(chelsea, "PNG"))
    # IHDR's width field sits at byte 16; pixel data fills the second half of the file.
    data[18 if where == "header" else len(data) // 2] ^= 0xFF
    with pytest.raises(InputError) as caught:
        decode_image(bytes(data), LIMIT)
    assert caught.value.status == 400 and caught.value.error == "corrupt image"


def test_jpeg_with_corrupt_header_is_corrupt(chelsea_jpeg):
    data = chelsea_jpeg[:4] + b"\x00" * 200 + chelsea_jpeg[204:]
    with pytest.raises(InputError) as caught:
        decode_image(data, LIMIT)
    assert caught.value.status == 400


def test_pixel_limit_is_checked_before_decoding():
    # A 1 MB-pixel PNG compresses to about a kilobyte: the header alone must refuse it.
    bomb = encode(Image.new("L", (1000, 1000)), "PNG")
    assert len(bomb) < 5000
    with pytest.raises(InputError) as caught:
        decode_image(bomb, max_pixels=999_999)
    assert caught.value.status == 413
    assert probe_image(bomb).width == 1000


def test_unsupported_container_is_415():
    data = encode(Image.new("RGB", (8, 8)), "ICO")
    with pytest.raises(InputError) as caught:
        decode_image(data, LIMIT)
    assert caught.value.status == 415 and "ICO" in caught.value.detail


@pytest.mark.parametrize("height, width", [(300, 451), (451, 300), (224, 224), (256, 1000), (1, 10000), (1, 1)])
def test_center_crop_box_lies_inside_the_image(height, width):
    top, left, crop_h, crop_w = center_crop_box(height, width, 256, 224)
    assert 0 <= top and top + crop_h <= height and 0 <= left and left + crop_w <= width
    assert crop_h == crop_w == max(1, round(min(height, width) * 224 / 256))


def test_resize_center_crop_matches_torchvision_reference(chelsea):
    """Cropping first then resizing equals resize(256) + center_crop(224), up to
    resampling at the crop's border."""
    image = torch.from_numpy(np.array(chelsea)).permute(2, 0, 1).contiguous()
    ours = resize_center_crop(image, 256, 224).float()
    reference = F.center_crop(F.resize(image, 256, antialias=True), 224).float()
    assert ours.shape == reference.shape == (3, 224, 224)
    assert (ours - reference).abs().mean() < 4.0
    assert (ours[:, 8:-8, 8:-8] - reference[:, 8:-8, 8:-8]).abs().mean() < 4.0


@pytest.mark.parametrize("shape", [(3, 1, 10000), (3, 10000, 1), (3, 1, 1)])
def test_resize_center_crop_handles_extreme_shapes(shape):
    image = torch.randint(0, 256, shape, dtype=torch.uint8)
    assert resize_center_crop(image, 256, 224).shape == (3, 224, 224)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_mutated_images_decode_or_raise_input_error(chelsea, fmt):
    """Random byte flips in a real photo: an image or InputError, never a crash
    (torchvision's PNG decoder segfaulted on exactly this, hence PNG goes through PIL)."""
    small = chelsea.resize((120, 80))
    original = encode(small.convert("P") if fmt == "GIF" else small, fmt)
    for seed in range(60):
        rng = random.Random(seed)
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            image = decode_image(bytes(data), max_pixels=10_000_000)
        except InputError:
            continue
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3


SHAPES = [(300, 451), (451, 300), (640, 640), (1, 1000), (1000, 1), (17, 33), (1080, 1920)]


@pytest.mark.parametrize("height, width", SHAPES)
@pytest.mark.parametrize("size", [320, 640])
def test_letterbox_then_unletterbox_round_trips_boxes_within_a_pixel(height, width, size):
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    placed, meta = letterbox(image, size)
    assert placed.canvas().shape == (3, size, size) and (meta.width, meta.height) == (width, height)
    generator = torch.Generator().manual_seed(height * 7919 + width)
    corners = torch.rand(50, 2, 2, generator=generator) * torch.tensor([width, height])
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)  # [50, 4] xyxy
    scale = torch.tensor([meta.scale_x, meta.scale_y] * 2)
    in_input = boxes * scale + torch.tensor([meta.pad_left, meta.pad_top] * 2)
    assert (in_input >= 0).all() and (in_input <= size).all()
    assert torch.allclose(unletterbox_boxes(in_input, meta), boxes, atol=1.0)


def test_letterbox_pads_with_grey_and_keeps_the_picture_centred():
    image = torch.full((3, 100, 200), 255, dtype=torch.uint8)
    placed, meta = letterbox(image, 64)
    boxed = placed.canvas()
    assert (meta.pad_left, meta.pad_top) == (0, 16)
    assert (boxed[:, :16] == 114).all() and (boxed[:, 48:] == 114).all() and (boxed[:, 16:48] == 255).all()


def canvases_one_by_one(inputs: list) -> torch.Tensor:
    """The obvious reference for stack_inputs: each input's canvas built alone, then stacked."""
    views = []
    for part in inputs:
        if isinstance(part, Placement):
            canvas = torch.tensor(part.fill, dtype=torch.uint8).reshape(-1, 1, 1).expand(part.shape).clone()
            height, width = part.image.shape[-2:]
            canvas[:, part.top : part.top + height, part.left : part.left + width] = part.image
            views.append(canvas.unsqueeze(0))
        else:
            views.append(part if part.dim() == 4 else part.unsqueeze(0))
    return torch.cat(views)


@pytest.mark.parametrize("channels_last", [False, True])
def test_stack_inputs_builds_each_placement_tensor_and_views_in_one_batch(channels_last):
    generator = torch.Generator().manual_seed(3)

    def photo(height, width):
        return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)

    inputs = [
        letterbox(photo(30, 64), 64)[0],  # padded above and below
        letterbox(photo(64, 10), 64, fill=(1, 2, 3))[0],  # another fill, padded left and right
        photo(64, 64),  # a prepared view
        torch.stack([photo(64, 64), photo(64, 64)]),  # two views of one photo
        padded(photo(50, 37), 1.0, 32, (0, 0, 0))[0],  # padded at the right and bottom only
    ]
    batch = stack_inputs(inputs, channels_last)
    assert batch.shape == (6, 3, 64, 64) and [input_views(part) for part in inputs] == [1, 1, 1, 2, 1]
    assert batch.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(batch, canvases_one_by_one(inputs))
    same_fill = inputs[:1] + inputs[2:4]  # one fill for the batch, painted once
    assert torch.equal(stack_inputs(same_fill, channels_last), canvases_one_by_one(same_fill))


def test_a_fill_is_one_value_or_one_per_channel():
    assert letterbox(torch.zeros(3, 4, 8, dtype=torch.uint8), 8, fill=7)[0].fill == (7, 7, 7)
    with pytest.raises(ValueError, match="one per channel"):
        letterbox(torch.zeros(3, 4, 8, dtype=torch.uint8), 8, fill=(1, 2))


def test_unletterbox_clips_to_the_image():
    meta = LetterboxGeometry(width=100, height=50, scale_x=1.0, scale_y=1.0, pad_left=0, pad_top=25)
    boxes = torch.tensor([[-10.0, 0.0, 120.0, 100.0]])
    assert unletterbox_boxes(boxes, meta).tolist() == [[0.0, 0.0, 100.0, 50.0]]


def test_jpeg_bytes_round_trip(chelsea):
    image = torch.from_numpy(np.array(chelsea)).permute(2, 0, 1).contiguous()
    decoded = decode_image(jpeg_bytes(image, quality=95), LIMIT)
    assert decoded.shape == image.shape and (decoded.float() - image.float()).abs().mean() < 3


@pytest.mark.parametrize(
    "width, height, size, fit, scale",
    [(451, 300, 256, "cover", 1), (1411, 1411, 256, "cover", 4), (4000, 3000, 256, "cover", 8),
     (4000, 3000, 640, "contain", 4), (1280, 300, 640, "contain", 2), (600, 400, 640, "contain", 1)],
)  # fmt: skip
def test_jpeg_reduction_keeps_enough_pixels(width, height, size, fit, scale):
    assert jpeg_reduction(width, height, size, fit) == scale
    side = min(width, height) if fit == "cover" else max(width, height)
    assert side // scale >= size or scale == 1


def test_large_jpeg_is_decoded_reduced_and_reports_its_original_size(chelsea):
    large = chelsea.resize((2000, 1330))
    image, original = decode_image_at_least(*checked(encode(large, "JPEG", quality=95)), 256, "cover")
    assert original == (2000, 1330)
    assert image.shape == (3, 333, 500)  # 1/4 scale: still >= 256 on the short side
    reference = np.asarray(large.resize((500, 333))).astype(np.int16).transpose(2, 0, 1)
    assert mean_abs_diff(image, reference) < 4


def test_reduced_decode_applies_exif_orientation(chelsea):
    data = encode(chelsea.resize((2000, 1330)), "JPEG", orientation=6)
    image, original = decode_image_at_least(*checked(data), 256, "cover")
    assert original == (1330, 2000) and image.shape == (3, 500, 333)


def test_small_images_and_other_formats_decode_in_full(chelsea):
    for data in (encode(chelsea, "JPEG"), encode(chelsea.resize((2000, 1330)), "PNG")):
        image, original = decode_image_at_least(*checked(data), 256, "cover")
        assert (image.shape[-1], image.shape[-2]) == original


def test_reduced_decode_of_a_truncated_jpeg_is_corrupt(chelsea):
    data = encode(chelsea.resize((2000, 1330)), "JPEG")
    with pytest.raises(InputError) as caught:
        decode_image_at_least(*checked(data[: len(data) // 2]), 256, "cover")
    assert caught.value.status == 400


def test_letterbox_maps_back_to_the_original_of_a_reduced_decode():
    reduced = torch.zeros(3, 250, 500, dtype=torch.uint8)  # a 2000x1000 photo decoded at 1/4
    _, meta = letterbox(reduced, 640, original_size=(2000, 1000))
    assert (meta.width, meta.height) == (2000, 1000)
    box_in_input = torch.tensor([[64.0, 160.0 + 32.0, 128.0, 160.0 + 64.0]])  # pad_top 160
    assert unletterbox_boxes(box_in_input, meta).tolist() == [[200.0, 100.0, 400.0, 200.0]]
