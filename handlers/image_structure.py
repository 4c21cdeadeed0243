"""What an image file lists, bounded before Pillow reads it. Pure functions on bytes.

The pixel limit (imaging.check_image) bounds what decoding costs, but Pillow also builds
Python objects from what a file *lists*, before and besides its pixels, and a small file
can list a great deal: a 4 MB TIFF of 16x16 pixels that names 1,000,000 strips costs
Pillow seconds and hundreds of MB (a tuple of a million ints, a million decoder tiles);
a PNG's text chunks are read into memory (Pillow stops at 64 MB and calls the file
broken); an animated WebP is indexed frame by frame when it is opened. Each structure is
walked here from the file's own headers, a few bytes at a time, and refused with what was
too large (413) or inconsistent (400). GIF needs no walk: Pillow reads a GIF's first frame
and nothing after it (tests/unit/test_image_structures.py times a 1,500-frame one).
"""

import math
import struct

from .errors import InputError

MAX_FRAMES = 10_000  # frames an animated PNG or WebP may declare or hold
MAX_CHUNKS = 100_000  # PNG or WebP chunks walked, at most: a file's list of them is bounded too
MAX_TEXT_BYTES = 1 << 20  # PNG text chunks (tEXt, zTXt, iTXt), all together, as stored
MAX_TEXT_CHUNKS = 16  # each zTXt/iTXt inflates to at most Pillow's MAX_TEXT_CHUNK (1 MB)
MAX_ICC_BYTES = 1 << 20  # a PNG's compressed ICC profile
MAX_TIFF_TAGS = 1_000  # entries of the first TIFF directory (files hold tens)
MAX_TIFF_VALUES = 1 << 18  # numbers in those entries, all together: Pillow makes each a Python int
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
# TIFF field types -> bytes per value (TIFF 6.0, BigTIFF); 1, 2, 6 and 7 are byte strings to Pillow.
TIFF_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
BYTE_STRING_TYPES = (1, 2, 6, 7)
STRIP_OFFSETS, STRIP_BYTE_COUNTS, TILE_OFFSETS, TILE_BYTE_COUNTS = 273, 279, 324, 325


def too_large(what: str) -> InputError:
    return InputError("image too large", what, status=413)


def corrupt(what: str) -> InputError:
    return InputError("corrupt image", what)


def check_structure(data: bytes) -> None:
    """InputError if the file lists more than the limits above, by its format's signature."""
    if data.startswith(PNG_SIGNATURE):
        check_png(data)
    elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        check_tiff(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        check_webp(data)


def check_png(data: bytes) -> None:
    """A PNG's chunks: text and ICC sizes, an animation's declared frame count."""
    position, chunks, text_bytes, text_chunks = len(PNG_SIGNATURE), 0, 0, 0
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise too_large(f"the PNG has more than {MAX_CHUNKS} chunks")
        if kind in TEXT_CHUNKS:
            text_bytes, text_chunks = text_bytes + length, text_chunks + 1
            if text_bytes > MAX_TEXT_BYTES or text_chunks > MAX_TEXT_CHUNKS:
                raise too_large(
                    f"the PNG's text metadata is over {MAX_TEXT_CHUNKS} chunks or {MAX_TEXT_BYTES} bytes "
                    f"({text_chunks} chunks, {text_bytes} bytes so far)"
                )
        elif kind == b"iCCP" and length > MAX_ICC_BYTES:
            raise too_large(f"the PNG's ICC profile is {length} bytes, over the limit of {MAX_ICC_BYTES}")
        elif kind == b"acTL" and length >= 4 and position + 12 <= len(data):
            (frames,) = struct.unpack_from(">I", data, position + 8)
            if frames > MAX_FRAMES:
                raise too_large(f"the PNG declares {frames} animation frames, over the limit of {MAX_FRAMES}")
        elif kind == b"IEND":
            return
        position += 12 + length  # length, type, data, CRC


def check_webp(data: bytes) -> None:
    """A WebP's chunks: an animation's frames (ANMF chunks), which Pillow indexes all at once."""
    position, chunks, frames = 12, 0, 0
    while position + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, position)
        chunks += 1
        frames += kind == b"ANMF"
        if chunks > MAX_CHUNKS or frames > MAX_FRAMES:
            raise too_large(f"the WebP has more than {MAX_FRAMES} frames or {MAX_CHUNKS} chunks")
        position += 8 + length + (length & 1)  # chunks are padded to an even size


def check_tiff(data: bytes) -> None:
    """A TIFF's first directory (what Pillow reads on opening it): its size, its numbers,
    and its strips or tiles -- no more than its own image size makes, each inside the file."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")  # BigTIFF: 8-byte counts and offsets
    count_format, entry_size, header = ("Q", 20, 8) if big else ("H", 12, 4)
    try:
        (directory,) = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)
        (entries,) = struct.unpack_from(order + count_format, data, directory)
    except struct.error as err:
        raise corrupt("the TIFF's first directory lies outside the file") from err
    if entries > MAX_TIFF_TAGS:
        raise too_large(f"the TIFF's first directory has {entries} entries, over the limit of {MAX_TIFF_TAGS}")
    fields, values = {}, 0
    for index in range(entries):
        start = directory + (8 if big else 2) + index * entry_size
        if start + entry_size > len(data):
            raise corrupt("the TIFF's first directory is cut short")
        tag, kind, count = struct.unpack_from(order + ("HHQ" if big else "HHI"), data, start)
        if kind not in BYTE_STRING_TYPES:
            values += count
        fields[tag] = (kind, count, start + entry_size - header)
    if values > MAX_TIFF_VALUES:
        raise too_large(f"the TIFF's first directory lists {values} numbers, over the limit of {MAX_TIFF_VALUES}")
    for offsets_tag, counts_tag, what in ((STRIP_OFFSETS, STRIP_BYTE_COUNTS, "strips"),
                                          (TILE_OFFSETS, TILE_BYTE_COUNTS, "tiles")):  # fmt: skip
        if offsets_tag in fields:
            check_tiff_parts(data, order, big, fields, offsets_tag, counts_tag, what)


def check_tiff_parts(data: bytes, order: str, big: bool, fields: dict, offsets_tag: int, counts_tag: int,
                     what: str) -> None:  # fmt: skip
    """A TIFF's strips or tiles: as many as its image size makes, each inside the file."""

    def read(tag: int, default: int) -> int:
        return (tiff_values(data, order, big, fields[tag]) or [default])[0] if tag in fields else default

    width, height = read(256, 0), read(257, 0)
    planes = read(277, 1) if read(284, 1) == 2 else 1  # PlanarConfiguration 2: one set of strips per sample
    if what == "strips":
        expected = math.ceil(height / max(1, min(read(278, 2**32 - 1), height or 1))) * planes
    else:
        expected = math.ceil(width / max(1, read(322, 1))) * math.ceil(height / max(1, read(323, 1))) * planes
    offsets = tiff_values(data, order, big, fields[offsets_tag])
    counts = tiff_values(data, order, big, fields[counts_tag]) if counts_tag in fields else []
    if len(offsets) > max(1, expected):
        raise corrupt(f"the TIFF lists {len(offsets)} {what} where its {width}x{height} image has {expected}")
    if len(counts) != len(offsets) or any(o + c > len(data) for o, c in zip(offsets, counts, strict=True)):
        raise corrupt(f"the TIFF's {what} do not lie inside the file")


def tiff_values(data: bytes, order: str, big: bool, field: tuple[int, int, int]) -> list[int]:
    """A directory entry's integer values (field: type, count, where its value or offset is)."""
    kind, count, position = field
    code = {1: "B", 3: "H", 4: "I", 8: "h", 9: "i", 16: "Q", 17: "q"}.get(kind)
    if code is None:
        raise corrupt(f"a TIFF size or offset field has type {kind}")
    size = TIFF_TYPE_SIZES[kind] * count
    if size > (8 if big else 4):
        (position,) = struct.unpack_from(order + ("Q" if big else "I"), data, position)
    if position + size > len(data):
        raise corrupt("a TIFF field's values lie outside the file")
    return list(struct.unpack_from(f"{order}{count}{code}", data, position))
