"""Image files built field by field, so that tests can make the structures a hostile
client would send: GIF colour tables shorter than the pixel indices that use them,
animations whose later frames are garbage, PNG chunks in any order with any CRC, JPEG
segments dropped or repeated, WebP with an EXIF orientation or many frames. The unit
tests draw them with hypothesis (tests/unit/test_image_structures.py); the corpus sends
fixed ones through a real TorchServe (tests/corpus.py)."""

import io
import struct
import zlib
from collections.abc import Sequence

from PIL import Image

from scripts.samples.photos import encode

RGB = tuple[int, int, int]


# --- GIF (GIF89a: https://www.w3.org/Graphics/GIF/spec-gif89a.txt) ----------------------


def lzw_codes(indices: Sequence[int], min_code_size: int) -> bytes:
    """GIF image data: the LZW minimum code size, then `indices` as literal codes in data
    sub-blocks. A clear code comes before the decoder's table could grow the code size,
    so every code stays min_code_size + 1 bits: a valid stream however the indices run."""
    clear, end, width = 1 << min_code_size, (1 << min_code_size) + 1, min_code_size + 1
    codes, entries = [clear], 0
    for index in indices:
        codes.append(index)
        entries += 1
        if end + 1 + entries >= (1 << width) - 1:
            codes.append(clear)
            entries = 0
    codes.append(end)
    bits, count, packed = 0, 0, bytearray()
    for code in codes:
        bits |= code << count
        count += width
        while count >= 8:
            packed.append(bits & 0xFF)
            bits, count = bits >> 8, count - 8
    if count:
        packed.append(bits)
    blocks = bytearray([min_code_size])
    for start in range(0, len(packed), 255):
        chunk = packed[start : start + 255]
        blocks += bytes([len(chunk)]) + chunk
    return bytes(blocks + b"\x00")


def colour_table(colours: Sequence[RGB]) -> tuple[int, bytes]:
    """(the packed field's size bits, the table's bytes): GIF tables hold 2^(bits+1)
    colours, so `colours` is padded with black."""
    bits = max(1, (len(colours) - 1).bit_length()) - 1
    padded = list(colours) + [(0, 0, 0)] * (2 ** (bits + 1) - len(colours))
    return bits, bytes(value for colour in padded for value in colour)


def gif(
    width: int,
    height: int,
    colours: Sequence[RGB],
    frames: Sequence[bytes],
    local_table: bool = False,
    transparent: int | None = None,
) -> bytes:
    """A GIF of `frames` (each `gif_frame` or any bytes: a hostile frame), the colour
    table global or local to the first frame."""
    bits, table = colour_table(colours)
    screen_flags = 0 if local_table else 0x80 | bits
    parts = [b"GIF89a", struct.pack("<HHBBB", width, height, screen_flags, 0, 0), b"" if local_table else table]
    if len(frames) > 1:
        parts.append(b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00")  # loop forever
    for number, frame in enumerate(frames):
        extension = transparent is not None and number == 0
        parts.append(b"\x21\xf9\x04" + bytes([1 if extension else 0, 10, 0, transparent or 0, 0]))  # 0.1 s
        if number == 0 and local_table:
            frame = frame[:9] + bytes([frame[9] | 0x80 | bits]) + table + frame[10:]
        parts.append(frame)
    return b"".join([*parts, b"\x3b"])


def gif_frame(width: int, height: int, indices: Sequence[int], min_code_size: int, left: int = 0, top: int = 0
              ) -> bytes:  # fmt: skip
    """An image descriptor and its data: `indices` row by row (a descriptor's flags are byte 9)."""
    return b"\x2c" + struct.pack("<HHHHB", left, top, width, height, 0) + lzw_codes(indices, min_code_size)


# --- PNG (https://www.w3.org/TR/png/) ---------------------------------------------------


def png_chunk(kind: bytes, payload: bytes, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(kind + payload) ^ (0 if crc_ok else 0xFFFFFFFF)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png(chunks: Sequence[bytes]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def png_header(width: int, height: int, bit_depth: int, colour_type: int, interlace: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace))


# --- JPEG (ITU T.81) ---------------------------------------------------------------------


def jpeg_segments(data: bytes) -> list[bytes]:
    """A baseline JPEG's segments up to its scan, then the scan and EOI as one last part."""
    segments, position = [data[:2]], 2  # SOI
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker == 0xDA:  # start of scan: the entropy-coded data runs to EOI
            segments.append(data[position:])
            return segments
        segments.append(data[position : position + 2 + length])
        position += 2 + length
    segments.append(data[position:])
    return segments


def exif_orientation(orientation: int) -> bytes:
    """An EXIF block ("Exif\\0\\0", then TIFF data, as PIL writes it) that says only the
    orientation (1-8)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def jpeg_app1_exif(orientation: int) -> bytes:
    payload = exif_orientation(orientation)
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


# --- WebP (RIFF: https://developers.google.com/speed/webp/docs/riff_container) -----------


def webp(images: Sequence[Image.Image], lossless: bool, orientation: int | None = None) -> bytes:
    """A still (one image) or animated WebP by libwebp, with an EXIF orientation if given."""
    options = {"lossless": lossless, "quality": 80}
    if orientation is not None:
        options["exif"] = exif_orientation(orientation)
    if len(images) > 1:
        options.update(save_all=True, append_images=list(images[1:]), duration=100, loop=0)
    return encode(images[0], "WEBP", **options)


def riff_chunks(data: bytes) -> list[bytes]:
    """A WebP's chunks (each with its header and padding), after the RIFF header."""
    chunks, position = [], 12
    while position + 8 <= len(data):
        (size,) = struct.unpack("<I", data[position + 4 : position + 8])
        end = position + 8 + size + (size & 1)
        chunks.append(data[position:end])
        position = end
    return chunks


def riff(chunks: Sequence[bytes]) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def displayed_size(size: tuple[int, int], orientation: int | None) -> tuple[int, int]:
    """(width, height) once an EXIF orientation is applied: 5-8 swap the axes."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def first_frame_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


# --- TIFF (TIFF 6.0: a header, then directories of 12-byte entries) ----------------------


def tiff(width: int, height: int, strips: int, rows_per_strip: int, strip_offset: int | None = None) -> bytes:
    """An uncompressed 8-bit RGB TIFF whose first directory lists `strips` strips of
    `rows_per_strip` rows; every strip is the same pixel data (at `strip_offset`, which may
    be made to point past the end of the file)."""
    pixels = bytes(range(256)) * (width * rows_per_strip * 3 // 256 + 1)
    pixels = pixels[: width * min(rows_per_strip, height) * 3]
    offsets_at = 8 + len(pixels)
    counts_at = offsets_at + 4 * strips
    directory_at = counts_at + 4 * strips
    offset = 8 if strip_offset is None else strip_offset
    short, long = 3, 4
    entries = [(256, short, width), (257, short, height), (258, short, 8), (259, short, 1), (262, short, 2),
               (273, long, offsets_at if strips > 1 else offset), (277, short, 3), (278, short, rows_per_strip),
               (279, long, counts_at if strips > 1 else len(pixels))]  # fmt: skip
    directory = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        count = strips if tag in (273, 279) else 1
        directory += struct.pack("<HHI", tag, kind, count) + struct.pack("<I" if kind == long else "<HH", value, *(
            () if kind == long else (0,)))  # fmt: skip
    return (
        b"II*\x00" + struct.pack("<I", directory_at) + pixels
        + struct.pack(f"<{strips}I", *[offset] * strips) + struct.pack(f"<{strips}I", *[len(pixels)] * strips)
        + directory + b"\x00\x00\x00\x00"
    )  # fmt: skip


def png_with_chunks_before_its_end(image: Image.Image, chunks: Sequence[bytes]) -> bytes:
    """A real PNG of `image` with `chunks` inserted before its IEND (after the pixels, where
    Pillow reads them as it finishes decoding)."""
    data = encode(image, "PNG")
    return data[:-12] + b"".join(chunks) + data[-12:]


def ztxt_chunk(keyword: bytes, inflated_size: int) -> bytes:
    """A compressed text chunk of a kilobyte or so that inflates to `inflated_size` bytes."""
    return png_chunk(b"zTXt", keyword + b"\x00\x00" + zlib.compress(b"a" * inflated_size, 9))


def apng_declaring(frames: int, image: Image.Image) -> bytes:
    """A real PNG whose animation control chunk declares `frames` frames (it holds one)."""
    data = encode(image, "PNG")
    control = png_chunk(b"acTL", struct.pack(">II", frames, 0))
    return data[:33] + control + data[33:]  # after the signature and IHDR


def webp_with_frames(frames: int) -> bytes:
    """A WebP container with `frames` (empty) animation frames after a VP8X header."""
    header = b"VP8X" + struct.pack("<I", 10) + bytes([0x02, 0, 0, 0]) + (15).to_bytes(3, "little") * 2
    animation = b"ANIM" + struct.pack("<I", 6) + bytes(6)
    frame = b"ANMF" + struct.pack("<I", 16) + bytes(16)
    return riff([header, animation, *[frame] * frames])
