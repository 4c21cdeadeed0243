"""The bad-input corpus: every case built by code from real photos, with the status a
client must get. Sent through a real TorchServe to every model kind
(tests/integration/test_hardening.py); malformed or unsupported input must get a 4xx
with a JSON {"error", "detail", "status"}, supported input a 200 with a valid result -- never a
5xx, never a worker restart."""

import base64
import io
import json
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from scripts.samples.photos import encode, photo
from tests.image_structures import (
    apng_declaring,
    gif,
    gif_frame,
    png_with_chunks_before_its_end,
    riff,
    riff_chunks,
    tiff,
    webp,
    webp_with_frames,
    ztxt_chunk,
)

# Kept in step with the handlers' defaults (handlers/settings.py) and config.properties.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 16_000_000
FRONTEND_MAX_REQUEST = 16_777_216


# What an error answer must never carry: a file path or source file, a memory address,
# a traceback or a C++ stack (handlers/errors.py).
LEAKS = re.compile(
    r"(?<![\w.])/[\w.-]+/[\w./-]+|[A-Za-z]:\\|\.(?:py|cpp|cc|h|so|java)\b|0x[0-9a-fA-F]{6,}| at 0x|Traceback|"
    r"File \"|frame #\d|Exception raised from"
)


# Any JSON value, nested a few levels: what a hostile client puts in a field.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def assert_clean(text: str) -> None:
    """An error answer's text tells nothing about the server."""
    leak = LEAKS.search(text)
    assert leak is None, f"the answer leaks {leak.group(0)!r}: {text[:300]}"


@dataclass(frozen=True)
class Case:
    name: str
    request: dict  # keyword arguments for Server.predict (method, data, files, json)
    status: int | tuple[int, ...]  # what the client must get
    error: str | None = None  # the JSON "error" of a 4xx
    size: tuple[int, int] | None = None  # (width, height) a 200's result must report
    route: str = "predictions"  # or "v2": POST /v2/models/<model>/infer, answered as a v2 document

    def expects(self, status: int) -> bool:
        return status in (self.status if isinstance(self.status, tuple) else (self.status,))


def raw(data: bytes) -> dict:
    return {"method": "PUT", "data": data}  # curl -T


def png_with_bad_crc() -> bytes:
    data = bytearray(encode(photo("coffee").resize((120, 80)), "PNG"))
    data[len(data) // 2] ^= 0xFF  # inside IDAT: its CRC no longer matches
    return bytes(data)


def jpeg_with_corrupt_header() -> bytes:
    data = encode(photo("coffee"), "JPEG")
    return data[:4] + b"\x00" * 300 + data[304:]  # the quantisation and Huffman tables are gone


def decompression_bomb() -> bytes:
    """A ~6 kB PNG that claims 10000 x 5000 = 50 M pixels (above the 40 M limit)."""
    bomb = encode(Image.new("1", (10_000, 5_000)), "PNG")
    assert len(bomb) < 20_000
    return bomb


def oversized_png() -> bytes:
    """A valid PNG of 16.2 MB: above the handler's limit, below TorchServe's own."""
    small = encode(photo("coffee"), "PNG")
    oversized = small + bytes(16_200_000 - len(small))  # decoders ignore bytes after IEND
    assert MAX_IMAGE_BYTES < len(oversized) < FRONTEND_MAX_REQUEST
    return oversized


def animated_gif() -> bytes:
    frames = [photo("chelsea").convert("P"), photo("coffee").resize((451, 300)).convert("P")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit_png() -> bytes:
    gray = np.asarray(photo("coffee").convert("L")).astype(np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


def exif_rotated_jpeg() -> bytes:
    # rotated 90 degrees clockwise to display: stored 451x300, displayed 300x451
    return encode(photo("chelsea"), "JPEG", orientation=6)


def elongated() -> bytes:
    return encode(photo("coffee").resize((10_000, 1)), "PNG")


def jpeg_of(size: tuple[int, int]) -> bytes:
    """A real photo scaled to `size`: the extreme shapes the property-based test
    (tests/handler/test_image_shapes.py) searches, as JPEGs, whose reduced-scale decode
    once divided by zero on a side of a few pixels."""
    return encode(photo("coffee").resize(size), "JPEG")


def at_the_pixel_limit() -> bytes:
    """8000 x 5000 = exactly MAX_IMAGE_PIXELS, one flat colour (a small file)."""
    assert 8000 * 5000 == MAX_IMAGE_PIXELS
    return encode(Image.new("RGB", (8000, 5000), (90, 120, 150)), "JPEG")


def image_cases() -> list[Case]:
    """Cases whose answer does not depend on the model kind."""
    coffee, chelsea = photo("coffee"), photo("chelsea")
    not_an_image = b"hello, this is just text and no image at all"
    html = b"<!DOCTYPE html><html><body><h1>not an image</h1></body></html>"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    jpeg = encode(coffee, "JPEG")
    palette = encode(chelsea.convert("P"), "PNG", transparency=0)
    data_uri = "data:image/png;base64," + base64.b64encode(encode(chelsea, "PNG")).decode()
    multipart = {"data": ("cat.jpg", encode(chelsea, "JPEG"), "image/jpeg")}
    return [
        Case("empty body", raw(b""), 400, "empty request"),
        Case("text", raw(not_an_image), 415, "unsupported image format"),
        Case("html", raw(html), 415, "unsupported image format"),
        Case("svg", raw(svg), 415, "unsupported image format"),
        Case("ico", raw(encode(coffee.resize((32, 32)), "ICO")), 415, "unsupported image format"),
        Case("json without data", {"method": "POST", "json": {"image_url": "http://x"}}, 400, "no image in request"),
        Case("json list", {"method": "POST", "json": [1, 2, 3]}, 400, "invalid JSON request"),
        Case("invalid json", raw(b'{"data": "abc", '), 400, "invalid JSON request"),
        Case("invalid base64", {"method": "POST", "json": {"data": "@@@ not base64 @@@"}}, 400, "invalid base64"),
        Case(
            "base64 of non-image bytes",
            {"method": "POST", "json": {"data": base64.b64encode(not_an_image).decode()}},
            415,
            "unsupported image format",
        ),
        Case("multipart without a file", {"method": "POST", "files": {"note": (None, "hello")}}, 400),
        Case("truncated jpeg", raw(jpeg[: len(jpeg) // 3]), 400, "corrupt image"),
        Case("jpeg with corrupt header", raw(jpeg_with_corrupt_header()), 400, "corrupt image"),
        Case("png with bad crc", raw(png_with_bad_crc()), 400, "corrupt image"),
        Case("zlib stream, not png", raw(b"\x89PNG\r\n\x1a\n" + zlib.compress(b"x" * 1000)), 400, "corrupt image"),
        Case("decompression bomb", raw(decompression_bomb()), 413, "image too large"),
        Case("above the byte limit", raw(oversized_png()), 413, "image too large"),
        # Supported input: a 200 with a result for an image of this (displayed) size.
        Case("1x1", raw(encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")), 200, size=(1, 1)),
        Case("10000x1", raw(elongated()), 200, size=(10_000, 1)),
        Case("1x1 jpeg", raw(jpeg_of((1, 1))), 200, size=(1, 1)),
        Case("1x640 jpeg", raw(jpeg_of((1, 640))), 200, size=(1, 640)),
        Case("5000x3 jpeg", raw(jpeg_of((5000, 3))), 200, size=(5000, 3)),
        Case("3x5000 jpeg", raw(jpeg_of((3, 5000))), 200, size=(3, 5000)),
        Case("40000x1 jpeg", raw(jpeg_of((40_000, 1))), 200, size=(40_000, 1)),
        Case("at the pixel limit", raw(at_the_pixel_limit()), 200, size=(8000, 5000)),
        Case("animated gif", raw(animated_gif()), 200, size=(451, 300)),
        Case("16-bit png", raw(sixteen_bit_png()), 200, size=(600, 400)),
        Case("cmyk jpeg", raw(encode(coffee.convert("CMYK"), "JPEG")), 200, size=(600, 400)),
        Case("palette png with transparency", raw(palette), 200, size=(451, 300)),
        Case("rgba png", raw(encode(chelsea.convert("RGBA"), "PNG")), 200, size=(451, 300)),
        Case("grayscale jpeg", raw(encode(coffee.convert("L"), "JPEG")), 200, size=(600, 400)),
        Case("exif-rotated jpeg", raw(exif_rotated_jpeg()), 200, size=(300, 451)),
        Case("webp", raw(encode(chelsea, "WEBP")), 200, size=(451, 300)),
        Case("bmp", raw(encode(chelsea, "BMP")), 200, size=(451, 300)),
        Case("tiff", raw(encode(chelsea, "TIFF")), 200, size=(451, 300)),
        Case("json base64 data uri", {"method": "POST", "json": {"data": data_uri}}, 200, size=(451, 300)),
        Case("multipart", {"method": "POST", "files": multipart}, 200, size=(451, 300)),
    ]


def blocks_gif(colours: list[tuple[int, int, int]], indices_from: int, size: int = 64) -> bytes:
    """A GIF of 16x16 blocks (one JPEG block each, so a JPEG answer keeps their colours)
    whose pixel indices run from `indices_from` up, past a colour table of `colours`."""
    blocks = size // 16
    indices = [
        indices_from + (y // 16 * blocks + x // 16) % (256 - indices_from) for y in range(size) for x in range(size)
    ]
    return gif(size, size, colours, [gif_frame(size, size, indices, 8)])


# The colours of GIF_PAST_ITS_TABLE: an answer may show these and black (PIL's colour past a
# table), and nothing else (torchvision's decoder showed whatever memory followed the table).
GIF_COLOURS = [(200, 40, 40), (40, 200, 40)]
GIF_PAST_ITS_TABLE = blocks_gif(GIF_COLOURS, 0)


def many_frame_gif() -> bytes:
    """1,500 frames of 256x256 in one file: 1,500 times the pixel limit's count if all were decoded."""
    tiles = [
        Image.fromarray(((np.indices((256, 256)).sum(0) // 16 + shift) % 4 * 80).astype(np.uint8)) for shift in (0, 1)
    ]
    return encode(tiles[0], "GIF", save_all=True, append_images=[tiles[i % 2] for i in range(1, 1500)], duration=40)


def gif_with_garbage_after_its_first_frame() -> bytes:
    first = gif_frame(64, 48, [i % 3 for i in range(64 * 48)], 2)
    return gif(
        64, 48, [(200, 30, 30), (30, 200, 30), (30, 30, 200)], [first] + [b"\x2c" + bytes(9) + b"\x02\x03abc\x00"] * 50
    )


def truncated_webp() -> bytes:
    chunks = riff_chunks(webp([photo("chelsea")], lossless=False))
    return riff([chunk[: len(chunk) // 2] for chunk in chunks])


def hostile_image_cases() -> list[Case]:
    """Image structures a hostile client builds: a GIF's pixels past its colour table,
    thousands of frames, garbage after the first frame; WebP animated, turned by EXIF, cut."""
    chelsea, coffee = photo("chelsea"), photo("coffee").resize((451, 300))
    corrupt_gif = GIF_PAST_ITS_TABLE[:40] + bytes(200)
    return [
        Case("gif past its colour table", raw(GIF_PAST_ITS_TABLE), 200, size=(64, 64)),
        Case("gif of 1500 frames", raw(many_frame_gif()), 200, size=(256, 256)),
        Case(
            "gif with garbage after its first frame", raw(gif_with_garbage_after_its_first_frame()), 200, size=(64, 48)
        ),
        Case("animated webp", raw(webp([chelsea, coffee], lossless=False)), 200, size=(451, 300)),
        Case("exif-rotated webp", raw(webp([chelsea], lossless=False, orientation=6)), 200, size=(300, 451)),
        Case("truncated webp", raw(truncated_webp()), 400, "corrupt image"),
        Case("corrupt gif", raw(corrupt_gif), 400, "corrupt image"),
        # What a file lists, bounded before Pillow builds it (handlers/image_structure.py).
        Case("tiff of 16x16 listing a million strips", raw(tiff(16, 16, 1_000_000, 1)), 413, "image too large"),
        Case("tiff listing more strips than rows", raw(tiff(16, 16, 50_000, 1)), 400, "corrupt image"),
        Case("png with 72 MB of inflating text", raw(inflating_text_png()), 413, "image too large"),
        Case("apng declaring 100001 frames", raw(apng_declaring(100_001, coffee)), 413, "image too large"),
        Case("webp of 10001 frames", raw(webp_with_frames(10_001)), 413, "image too large"),
    ]


def inflating_text_png() -> bytes:
    """72 compressed text chunks of 1 MB each once inflated, in a PNG of 100 kB."""
    chunks = [ztxt_chunk(f"comment{i}".encode(), 1_000_000) for i in range(72)]
    return png_with_chunks_before_its_end(photo("coffee").resize((120, 80)), chunks)


def answer_size_cases(kind: str) -> list[Case]:
    """Images whose image answer a JPEG cannot hold (65,500 px a side at most; torchvision's
    encoder ends the worker beyond it): a 413 for an image answer, a JSON answer as usual."""
    wide = encode(photo("coffee").resize((65_501, 1)), "PNG")
    tall = encode(photo("coffee").resize((1, 65_501)).convert("P"), "GIF")
    if kind == "classifier":
        return [Case("65501x1 png", raw(wide), 200)]
    as_image = {"headers": {"X-Format": "image"}}
    return [
        Case("65501x1 png as an image answer", {**raw(wide), **as_image}, 413, "image answer too large"),
        Case("1x65501 gif as an image answer", {**raw(tall), **as_image}, 413, "image answer too large"),
        Case("65501x1 png as json", {**raw(wide), "headers": {"X-Format": "json"}}, 200, size=(65_501, 1)),
    ]


def nested_json(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def v2_request(document: dict | str, **headers: str) -> dict:
    text = document if isinstance(document, str) else json.dumps(document)
    return {"method": "POST", "data": text.encode(), "headers": {"Content-Type": "application/json", **headers}}


def v2_binary(header: dict | str, binary: bytes, length: str | None = None) -> dict:
    """The binary-data extension (tritonclient's default): a JSON header, then the tensors' bytes."""
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    headers = {"Inference-Header-Content-Length": length or str(len(text)), "Content-Type": "application/octet-stream"}
    return {"method": "POST", "data": text + binary, "headers": headers}


def protocol_cases() -> list[Case]:
    """JSON of every shape in every field, on the plain route and the Open Inference
    Protocol's: each a 4xx naming the problem, never a 5xx (which TorchServe's gRPC front
    end, for one, answers by failing the worker)."""
    image = encode(photo("chelsea"), "JPEG")
    encoded = base64.b64encode(image).decode()
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [encoded]}
    element = struct.pack("<I", len(image)) + image
    binary_tensor = {
        "name": "image",
        "shape": [1],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(element)},
    }
    huge_name = "é" * 3_000_000  # 6 MB of UTF-8, 18 MB once escaped: echoed, the answer would kill the worker
    plain = f'{{"data": "{encoded}", "PARAM": 1}}'
    v2 = "v2"
    return [
        Case("json field name of megabytes", v2_request(plain.replace("PARAM", huge_name)), 400, "unknown parameter"),
        Case(
            "json parameter nested 990 deep",
            v2_request(plain.replace('"PARAM": 1', f'"top_k": {nested_json(990)}')),
            400,
        ),  # fmt: skip
        Case("json nested 100000 deep", v2_request(nested_json(100_000)), 400, "invalid JSON request"),
        Case(
            "json key twice, as application/json",
            v2_request(plain.replace('"PARAM": 1', '"top_k": 1, "top_k": 2')),
            400,
            "repeated parameter",
        ),  # fmt: skip
        Case("v2 parameters a string", v2_request({"inputs": [tensor], "parameters": "top_k=1"}), 400, route=v2),
        Case("v2 parameters a list", v2_request({"inputs": [tensor], "parameters": [1]}), 400, route=v2),
        Case("v2 input parameters a string", v2_request({"inputs": [{**tensor, "parameters": "x"}]}), 400, route=v2),
        Case("v2 id of megabytes", v2_request({"id": "i" * 8_000_000, "inputs": [tensor]}), 400, route=v2),
        Case("v2 id a list", v2_request({"id": ["a"], "inputs": [tensor]}), 400, route=v2),
        Case("v2 inputs an object", v2_request({"inputs": {"a": 1}}), 400, route=v2),
        Case("v2 input a number", v2_request({"inputs": [3, tensor]}), 400, route=v2),
        Case(
            "v2 parameter nested 990 deep",
            v2_request(
                json.dumps({"inputs": [tensor], "parameters": {"top_k": 1}}).replace(
                    '"top_k": 1', f'"top_k": {nested_json(990)}'
                )
            ),
            400,
            route=v2,
        ),  # fmt: skip
        Case(
            "v2 binary_data_size a string",
            v2_binary({"inputs": [{**binary_tensor, "parameters": {"binary_data_size": "12"}}]}, element),
            400,
            route=v2,
        ),  # fmt: skip
        Case(
            "v2 binary_data_size past the body",
            v2_binary({"inputs": [{**binary_tensor, "parameters": {"binary_data_size": 10**12}}]}, element),
            400,
            route=v2,
        ),  # fmt: skip
        Case("v2 binary header nested 100000 deep", v2_binary(nested_json(100_000), element), 400, route=v2),
        Case(
            "v2 binary header length not a number",
            v2_binary({"inputs": [binary_tensor]}, element, length="²"),
            400,
            route=v2,
        ),  # fmt: skip
        Case("v2 binary", v2_binary({"inputs": [binary_tensor]}, element), 200, route=v2),
        Case("v2 json", v2_request({"id": "a", "inputs": [tensor]}), 200, route=v2),
    ]


# Per kind: an integer and a real-valued parameter, a valid override, and one given as a header.
PARAMETERS = {
    "classifier": ("top_k", "top_k", {"top_k": "3"}),
    "detector": ("max_detections", "confidence", {"confidence": "0.5"}),
    "face": ("max_faces", "margin", {"format": "json"}),
}


def parameter_cases(kind: str) -> list[Case]:
    """Per-request parameters: out of range, wrong type, huge, non-finite, empty, repeated,
    unknown -- each a 400 naming the parameter; valid overrides in a form and a header."""
    image = encode(photo("chelsea"), "JPEG")
    encoded = base64.b64encode(image).decode()
    integer, real, valid = PARAMETERS[kind]

    def form(**params) -> dict:
        return {"method": "POST", "files": {"data": ("cat.jpg", image, "image/jpeg")}, "data": params}

    def json_body(text: str) -> dict:  # as sent: Python's json refuses to write NaN
        return {"method": "POST", "data": text.encode(), "headers": {"Content-Type": "application/json"}}

    huge = "9" * 400
    param, value = next(iter(valid.items()))
    header = "X-" + param.replace("_", "-").title()  # top_k -> X-Top-K
    return [
        Case("top_k=-1", form(top_k="-1"), 400),
        Case("confidence=abc", form(confidence="abc"), 400),
        Case("format=xml", form(format="xml"), 400),
        Case("unknown parameter", form(colour="blue"), 400, "unknown parameter"),
        Case(f"{integer} of 400 digits, form", form(**{integer: huge}), 400, "invalid parameter"),
        Case(f"{integer} of 400 digits, JSON", json_body(f'{{"data": "{encoded}", "{integer}": {huge}}}'), 400),
        Case(f"{real}=1e999, JSON", json_body(f'{{"data": "{encoded}", "{real}": 1e999}}'), 400, "invalid parameter"),
        Case(f"{real}=NaN, JSON", json_body(f'{{"data": "{encoded}", "{real}": NaN}}'), 400, "invalid parameter"),
        Case(f"{integer} empty", form(**{integer: ""}), 400, "invalid parameter"),
        Case(f"{integer} null, JSON", json_body(f'{{"data": "{encoded}", "{integer}": null}}'), 400),
        Case(
            "a key twice in a JSON body",
            raw(f'{{"data": "{encoded}", "{integer}": 1, "{integer}": 2}}'.encode()),
            400,
            "repeated parameter",
        ),
        Case(
            "in a header and in the form",
            {**form(**valid), "headers": {header: value}},
            400,
            "repeated parameter",
        ),
        Case(f"invalid X-{integer} header", {**raw(image), "headers": {f"X-{integer}": "-5"}}, 400),
        Case(f"valid {param}", form(**valid), 200, size=(451, 300)),
        Case(f"valid {header} header", {**raw(image), "headers": {header: value}}, 200, size=(451, 300)),
    ]


def corpus(kind: str) -> list[Case]:
    return image_cases() + hostile_image_cases() + answer_size_cases(kind) + parameter_cases(kind) + protocol_cases()


def read_image_size(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as image:
        return image.size
