"""Property-based fuzzing of the decode path (request field -> image bytes -> pixels):
whatever the bytes, the answer is an RGB uint8 image or the project's InputError --
never another exception, never a crash of the worker process."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.edge import image_bytes
from handlers.errors import InputError
from handlers.imaging import IMAGE_SIGNATURES, decode_image
from scripts.samples.photos import encode, photo

LIMIT = 4_000_000
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
SMALL = photo("chelsea").resize((48, 32))
SEEDS = {fmt: encode(SMALL.convert("P") if fmt == "GIF" else SMALL, fmt) for fmt in FORMATS}
# Pillow warns about the corrupt data it is fed here; that is the point.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_input_error(field) -> torch.Tensor | None:
    try:
        image = decode_image(image_bytes(field), LIMIT)
    except InputError as err:
        assert 400 <= err.status < 500 and err.error and err.detail
        return None
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    return image


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    decode_or_input_error(bytearray(data))


@FUZZ
@given(st.sampled_from(IMAGE_SIGNATURES + (b"RIFF\x00\x00\x00\x00WEBPVP8 ",)), st.binary(max_size=2048))
def test_random_bytes_behind_a_real_signature(signature, tail):
    decode_or_input_error(bytearray(signature + tail))


@FUZZ
@given(st.text(max_size=512))
def test_random_text_as_a_json_field(text):
    decode_or_input_error(text)


@FUZZ
@given(
    st.sampled_from(FORMATS),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=12),
    st.one_of(st.none(), st.floats(0.05, 1.0)),
)
def test_mutated_real_images(fmt, flips, keep):
    data = bytearray(SEEDS[fmt])
    for where, value in flips:
        data[int(where * len(data))] = value
    if keep is not None:  # and maybe truncated
        data = data[: max(1, int(keep * len(data)))]
    decode_or_input_error(data)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_unmutated_seeds_decode(fmt):
    image = decode_or_input_error(bytearray(SEEDS[fmt]))
    assert image is not None and image.shape == (3, 32, 48)
