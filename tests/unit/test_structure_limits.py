"""image_structure: what a file lists is bounded before Pillow builds it. Real files of
every format and feature pass; files that list too much (strips, text, frames, directory
entries) or point outside themselves are refused with what was wrong, through the decode
path the handlers use."""

import pytest
from PIL import Image

from handlers.errors import InputError
from handlers.image_structure import MAX_FRAMES, MAX_TEXT_BYTES, MAX_TEXT_CHUNKS, check_structure
from handlers.imaging import decode_image
from scripts.samples.photos import encode, photo
from tests.image_structures import (
    apng_declaring,
    png_chunk,
    png_with_chunks_before_its_end,
    tiff,
    webp,
    webp_with_frames,
    ztxt_chunk,
)

LIMIT = 40_000_000
PHOTO = photo("chelsea")


def refused(data: bytes) -> InputError:
    with pytest.raises(InputError) as caught:
        decode_image(data, LIMIT)
    return caught.value


@pytest.mark.parametrize(
    "fmt, options",
    [
        ("PNG", {}),
        ("PNG", {"save_all": True, "append_images": [PHOTO.rotate(10)]}),  # APNG
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("TIFF", {"compression": "jpeg"}),
        ("TIFF", {"big_tiff": True}),
        ("TIFF", {"save_all": True, "append_images": [PHOTO.rotate(10)]}),  # two pages
        ("WEBP", {}),
        ("WEBP", {"save_all": True, "append_images": [PHOTO.rotate(10)], "duration": 100}),
        ("GIF", {}),
    ],
)
def test_real_files_pass(fmt, options):
    data = encode(PHOTO, fmt, **options)
    check_structure(data)
    assert decode_image(data, LIMIT).shape == (3, 300, 451)


def test_tiffs_with_strips_of_every_shape_pass():
    for strips, rows in ((1, 16), (16, 1), (4, 4), (3, 6)):
        assert decode_image(tiff(16, 16, strips, rows), LIMIT).shape == (3, 16, 16)


def test_a_small_tiff_listing_a_million_strips_is_refused_before_pillow_reads_it():
    data = tiff(16, 16, 1_000_000, 1)
    error = refused(data)
    assert error.status == 413 and "first directory lists 2000007 numbers" in error.detail


def test_a_tiff_listing_more_strips_than_its_rows_or_pointing_outside_itself_is_corrupt():
    error = refused(tiff(16, 16, 50_000, 1))
    assert error.status == 400 and "lists 50000 strips where its 16x16 image has 16" in error.detail
    error = refused(tiff(16, 16, 16, 1, strip_offset=10**7))
    assert error.status == 400 and "strips do not lie inside the file" in error.detail


def test_png_text_is_bounded_by_count_and_size_and_said_so():
    inflating = [ztxt_chunk(f"k{i}".encode(), 1_000_000) for i in range(72)]  # 72 MB once inflated
    error = refused(png_with_chunks_before_its_end(PHOTO, inflating))
    assert error.status == 413 and "text metadata" in error.detail
    large = [png_chunk(b"tEXt", b"k\x00" + b"x" * (MAX_TEXT_BYTES // 2)) for _ in range(3)]
    assert "text metadata" in refused(png_with_chunks_before_its_end(PHOTO, large)).detail
    fine = [ztxt_chunk(f"k{i}".encode(), 1000) for i in range(MAX_TEXT_CHUNKS)]
    assert decode_image(png_with_chunks_before_its_end(PHOTO, fine), LIMIT).shape == (3, 300, 451)


def test_an_animation_declaring_or_holding_too_many_frames_is_refused():
    error = refused(apng_declaring(MAX_FRAMES + 1, PHOTO))
    assert error.status == 413 and f"declares {MAX_FRAMES + 1} animation frames" in error.detail
    assert "more than 10000 frames" in refused(webp_with_frames(MAX_FRAMES + 1)).detail
    animated = webp([PHOTO, PHOTO.rotate(5)], lossless=False)
    assert decode_image(animated, LIMIT).shape == (3, 300, 451)


def test_cut_structures_are_corrupt_not_crashes():
    data = tiff(16, 16, 16, 1)
    for end in (6, 12, len(data) - 20):
        with pytest.raises(InputError):
            decode_image(data[:end], LIMIT)
    check_structure(encode(Image.new("RGB", (1, 1)), "PNG")[:20])  # Pillow says what is wrong with it
