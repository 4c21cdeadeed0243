"""Property-based tests of the decode path over image *structures* a hostile client can
build (tests/image_structures.py), not only over sizes or random bytes: whatever the
structure, the answer is the image its first frame shows, or the project's InputError
with a clean message -- never a colour from memory the image does not own, never more
than one frame decoded, never another exception."""

import io
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from handlers.errors import InputError
from handlers.imaging import decode_image
from scripts.samples.photos import encode, photo
from tests.corpus import assert_clean
from tests.image_structures import (
    displayed_size,
    first_frame_rgb,
    gif,
    gif_frame,
    jpeg_app1_exif,
    jpeg_segments,
    png,
    png_chunk,
    png_header,
    riff,
    riff_chunks,
    webp,
)

LIMIT = 4_000_000
STRUCTURES = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about what it is fed here
PHOTO = photo("chelsea").resize((40, 28))


def decoded_or_refused(data: bytes) -> torch.Tensor | None:
    """The decoded image, or None when refused with a 4xx whose message is clean."""
    try:
        image = decode_image(data, LIMIT)
    except InputError as err:
        assert 400 <= err.status < 500 and err.error and err.detail
        assert_clean(err.detail)
        return None
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    assert image.shape[1] * image.shape[2] <= LIMIT
    return image


def colours_of(image: torch.Tensor) -> set[tuple[int, int, int]]:
    return set(map(tuple, image.reshape(3, -1).T.tolist()))


# --- GIF -----------------------------------------------------------------------------

colour = st.tuples(*[st.integers(1, 254)] * 3)  # never black: black is what PIL shows past the table


@STRUCTURES
@given(
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    colours=st.lists(colour, min_size=1, max_size=40, unique=True),
    min_code_size=st.integers(2, 8),
    local_table=st.booleans(),
    transparent=st.one_of(st.none(), st.integers(0, 255)),
    data=st.data(),
)
def test_a_gif_shows_only_its_own_colours(size, colours, min_code_size, local_table, transparent, data):
    """Pixel indices run up to 2^min_code_size - 1, past a table of as few as 2 entries:
    each pixel is a colour of the table or black (torchvision 0.29's decoder showed
    whatever memory followed the table)."""
    width, height = size
    indices = data.draw(st.lists(st.integers(0, 2**min_code_size - 1), min_size=width * height,
                                 max_size=width * height))  # fmt: skip
    image = decoded_or_refused(gif(width, height, colours, [gif_frame(width, height, indices, min_code_size)],
                                   local_table, transparent))  # fmt: skip
    assert image is not None and image.shape == (3, height, width)
    expected = [colours[index] if index < len(colours) else (0, 0, 0) for index in indices]
    assert torch.equal(image.reshape(3, -1).T, torch.tensor(expected, dtype=torch.uint8))


@STRUCTURES
@given(frames=st.integers(1, 400), garbage=st.binary(max_size=64), shift=st.integers(0, 60))
def test_only_the_first_frame_of_a_gif_is_decoded(frames, garbage, shift):
    """Every frame after the first is garbage, or lies outside the screen: the first
    frame decodes all the same, in time independent of the frame count."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    first = gif_frame(20, 10, [i % 3 for i in range(200)], 2)
    later = b"\x2c" + bytes([shift, 0, shift, 0, 40, 0, 40, 0, 0]) + b"\x02" + bytes([len(garbage)]) + garbage + b"\x00"
    image = decoded_or_refused(gif(20, 10, colours, [first] + [later] * frames))
    assert image is not None and image.shape == (3, 10, 20)
    assert colours_of(image) == set(colours)


def test_a_many_frame_gif_costs_one_frame():
    """1,500 frames of 256x256 in one file (as a client sent): the pixel limit counts the
    one frame decoded, which is the first."""
    tiles = [Image.fromarray(((np.indices((256, 256)).sum(0) // 16 + shift) % 4 * 80).astype(np.uint8)).convert("P")
             for shift in range(2)]  # fmt: skip
    data = encode(tiles[0], "GIF", save_all=True, append_images=[tiles[i % 2] for i in range(1, 1500)], duration=40)
    assert Image.open(io.BytesIO(data)).n_frames == 1500 and len(data) < 8_000_000
    image = decode_image(data, 256 * 256)  # the limit is one frame's pixels
    assert image.shape == (3, 256, 256) and torch.equal(image[0], torch.from_numpy(np.asarray(tiles[0].convert("L"))))


# --- PNG -----------------------------------------------------------------------------

# (colour type, the bit depths PNG allows for it, samples per pixel)
PNG_TYPES = {0: ((1, 2, 4, 8, 16), 1), 2: ((8, 16), 3), 3: ((1, 2, 4, 8), 1), 4: ((8, 16), 2), 6: ((8, 16), 4)}


@st.composite
def png_structures(draw) -> tuple[bytes, tuple[int, int]]:
    width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    colour_type = draw(st.sampled_from(sorted(PNG_TYPES)))
    depths, samples = PNG_TYPES[colour_type]
    depth = draw(st.sampled_from(depths + (3, 32)))  # 3 and 32 are invalid everywhere
    row = (width * samples * depth + 7) // 8
    filters = draw(st.lists(st.integers(0, 5), min_size=height, max_size=height))  # 5 is no PNG filter
    rows = b"".join(bytes([kind]) + draw(st.binary(min_size=row, max_size=row)) for kind in filters)
    compressed = zlib.compress(rows, draw(st.integers(0, 9)))
    cut = sorted(draw(st.lists(st.integers(0, len(compressed)), max_size=3)))
    parts = [compressed[a:b] for a, b in zip([0, *cut], [*cut, len(compressed)], strict=True)]
    chunks = [png_header(width, height, depth, colour_type, draw(st.integers(0, 2)))]
    if colour_type == 3 or draw(st.booleans()):
        entries = draw(st.integers(0, 300))  # 0 and more than 256 are invalid; fewer than the indices, hostile
        chunks.append(png_chunk(b"PLTE", draw(st.binary(min_size=3 * entries, max_size=3 * entries))))
    if draw(st.booleans()):
        chunks.append(png_chunk(b"tRNS", draw(st.binary(max_size=20))))
    chunks += [png_chunk(b"IDAT", part, crc_ok=draw(st.integers(0, 9)) > 0) for part in parts]
    if draw(st.booleans()):
        kind = draw(st.sampled_from([b"tEXt", b"zzZz", b"IHDR", b"acTL"]))  # the last two: repeated, or out of place
        chunks.append(png_chunk(kind, draw(st.binary(max_size=30))))
    chunks = draw(st.permutations(chunks)) if draw(st.integers(0, 4)) == 0 else chunks
    if draw(st.booleans()):
        chunks.append(png_chunk(b"IEND", b""))
    return png(chunks), (width, height)


@STRUCTURES
@given(png_structures())
def test_png_structures(structure):
    data, size = structure
    image = decoded_or_refused(data)
    assert image is None or tuple(image.shape[1:]) == (size[1], size[0])


# --- JPEG ----------------------------------------------------------------------------

JPEG = encode(photo("coffee").resize((64, 48)), "JPEG", quality=80)


@STRUCTURES
@given(
    orientation=st.one_of(st.none(), st.integers(0, 9)),
    edits=st.lists(st.tuples(st.sampled_from(["drop", "repeat", "swap"]), st.integers(1, 20)), max_size=3),
    dimensions=st.one_of(st.none(), st.tuples(st.integers(0, 65535), st.integers(0, 65535))),
    keep=st.one_of(st.none(), st.floats(0.3, 1.0)),
)
def test_jpeg_structures(orientation, edits, dimensions, keep):
    """Segments dropped, repeated or swapped, the frame's size rewritten, the scan cut
    short, an EXIF orientation (valid or not) added: the image at its displayed size, or
    a refusal."""
    segments = jpeg_segments(JPEG)
    if orientation is not None:
        segments.insert(1, jpeg_app1_exif(orientation))
    for edit, position in edits:
        index = 1 + position % (len(segments) - 2)  # never SOI, never the scan
        if edit == "drop":
            del segments[index]
        elif edit == "repeat":
            segments.insert(index, segments[index])
        else:
            segments[index], segments[index + 1] = segments[index + 1], segments[index]
    if dimensions is not None:
        segments = [sof_resized(segment, *dimensions) for segment in segments]
    data = b"".join(segments)
    if keep is not None:
        data = data[: int(len(data) * keep)]
    image = decoded_or_refused(data)
    if image is not None and not edits and dimensions is None and keep is None:
        assert tuple(image.shape[:0:-1]) == displayed_size((64, 48), orientation)


def sof_resized(segment: bytes, width: int, height: int) -> bytes:
    """A start-of-frame segment with another size (others unchanged)."""
    if segment[:2] not in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        return segment
    return segment[:5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + segment[9:]


# --- WebP ----------------------------------------------------------------------------


@STRUCTURES
@given(
    frames=st.integers(1, 4),
    lossless=st.booleans(),
    orientation=st.one_of(st.none(), st.integers(1, 8)),
    edits=st.lists(st.tuples(st.sampled_from(["drop", "repeat", "truncate"]), st.integers(0, 20)), max_size=2),
)
def test_webp_structures(frames, lossless, orientation, edits):
    """Still or animated, lossy or lossless, any EXIF orientation: the first frame, turned
    as its EXIF says (torchvision 0.29 refused animations and ignored the orientation);
    with chunks dropped, repeated or cut: that, or a refusal."""
    images = [PHOTO.rotate(90 * number, expand=False) for number in range(frames)]
    data = webp(images, lossless, orientation)
    chunks = riff_chunks(data)
    for edit, position in edits:
        index = position % len(chunks)
        if edit == "drop":
            del chunks[index]
        elif edit == "repeat":
            chunks.insert(index, chunks[index])
        else:
            chunks[index] = chunks[index][: max(8, len(chunks[index]) // 2)]
    image = decoded_or_refused(riff(chunks))
    if not edits:
        assert image is not None and tuple(image.shape[:0:-1]) == displayed_size((40, 28), orientation)
        expected = np.asarray(apply_orientation(first_frame_rgb(data), orientation))
        assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - expected).max() <= 1


def apply_orientation(image: Image.Image, orientation: int | None) -> Image.Image:
    """PIL's transpose for an EXIF orientation (what the decoder must apply)."""
    methods = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
               4: [Image.Transpose.FLIP_TOP_BOTTOM], 5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_270],
               7: [Image.Transpose.TRANSVERSE], 8: [Image.Transpose.ROTATE_90]}  # fmt: skip
    for method in methods.get(orientation or 1, []):
        image = image.transpose(method)
    return image


def test_an_animated_webp_gives_its_first_frame_like_an_animated_gif():
    frames = [photo("chelsea"), photo("coffee").resize((451, 300))]
    animated_webp = decode_image(webp(frames, lossless=True), LIMIT)
    animated_gif = decode_image(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), LIMIT)
    assert animated_webp.shape == animated_gif.shape == (3, 300, 451)
    first = torch.from_numpy(np.asarray(frames[0])).permute(2, 0, 1)
    assert (animated_webp.int() - first.int()).abs().max() <= 1  # lossless
