"""Image decoding and preprocessing on uint8 tensors: pure functions, no TorchServe.

Every image leaves `decode_image` as a uint8 tensor [3, H, W] in RGB with its EXIF
orientation applied, whatever the container (JPEG, PNG, WebP, GIF, BMP, TIFF) or
mode (grayscale, palette, RGBA, CMYK, 16-bit). Anything that is not such an image
raises `InputError`, which the handler turns into an HTTP 4xx for that request only.
"""

import io
import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import vision_ops
from .errors import InputError, public_detail
from .image_structure import check_structure

# JPEGs are decoded by torchvision's C decoder (libjpeg-turbo, faster than PIL's); the
# other formats go through PIL, because torchvision 0.29's other decoders are unsafe or
# wrong on input a client controls: its libpng wrapper segfaults on a PNG with corrupt
# pixel data (the worker and its whole batch die); its GIF decoder takes pixel indices
# past the colour table as colours from whatever memory follows it, and decodes every
# frame of an animation; its WebP decoder ignores the EXIF orientation and refuses
# animations. PIL decodes the first frame only, and an index past the table as black.
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
SUPPORTED_FORMATS = JPEG_FORMATS | {"PNG", "WEBP", "GIF", "BMP", "TIFF"}

# Leading bytes of the formats we decode.
IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG (and MPO)
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little endian
    b"MM\x00*",  # TIFF, big endian
)

# ImageNet channel statistics, as in torchvision's ImageClassification preset.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class LetterboxGeometry:
    """How an original image maps into the model's input: x_input = x * scale_x + pad_left."""

    width: int  # original size, after EXIF orientation
    height: int
    scale_x: float  # input pixels per original pixel
    scale_y: float
    pad_left: int
    pad_top: int


def probe_image(data: bytes) -> ImageInfo:
    """Read only the header: format and size, without decoding any pixels."""
    if not data:
        raise InputError("empty request", "the request carries no image bytes")
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return ImageInfo(image.format or "unknown", image.width, image.height)
    except Image.DecompressionBombError as err:
        raise InputError("image too large", public_detail(err), status=413) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as err:
        if looks_like_image(data):
            # PIL's "cannot identify image file" names the buffer object, nothing the client can use.
            reason = "" if isinstance(err, UnidentifiedImageError) else f": {public_detail(err)}"
            raise InputError("corrupt image", f"the image header cannot be read{reason}") from err
        head = bytes(data[:16])
        raise InputError(
            "unsupported image format",
            f"the body is not an image in a supported format "
            f"({', '.join(sorted(SUPPORTED_FORMATS))}); it starts with {head!r}",
            status=415,
        ) from err


def looks_like_image(data: bytes) -> bool:
    """Whether the bytes start like one of the formats we decode."""
    return data.startswith(IMAGE_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def check_image(data: bytes, max_pixels: int) -> ImageInfo:
    """The header of a supported image within the pixel limit, listing no more than
    image_structure's limits, or InputError. A JPEG goes to torchvision's decoder, which
    reads none of what Pillow would build from its headers (image_structure's cases)."""
    if not data.startswith(IMAGE_SIGNATURES[0]):
        check_structure(data)
    info = probe_image(data)
    if info.format not in SUPPORTED_FORMATS:
        raise InputError(
            "unsupported image format",
            f"{info.format} images are not accepted; send one of {', '.join(sorted(SUPPORTED_FORMATS))}",
            status=415,
        )
    if info.width * info.height > max_pixels:
        raise InputError(
            "image too large",
            f"{info.width}x{info.height} = {info.width * info.height} pixels exceeds the limit of {max_pixels} pixels",
            status=413,
        )
    return info


def decode_image(data: bytes, max_pixels: int) -> torch.Tensor:
    """Decode image bytes to uint8 [3, H, W] RGB, EXIF orientation applied.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing. Animated images (GIF, WebP, APNG) and multi-page
    TIFFs give their first frame, and only that frame is decoded: the pixel limit
    counts every pixel that is decoded, however many frames follow.
    """
    return decode_checked(data, check_image(data, max_pixels))


def decode_checked(data: bytes, info: ImageInfo) -> torch.Tensor:
    """decode_image for bytes whose header `check_image` already read and accepted."""
    try:
        if info.format in JPEG_FORMATS:
            image = _decode_with_torchvision(data)
        else:
            image = _decode_with_pil(data)
    except MemoryError:
        raise
    except Exception as err:  # the header was valid: whatever the decoder trips on is in the data
        raise InputError("corrupt image", f"{info.format} data cannot be decoded: {public_detail(err)}") from err
    if image.shape[-1] * image.shape[-2] > info.width * info.height:
        raise InputError("corrupt image", f"the {info.format} data holds more pixels than its header says")
    return image


def decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """Decode several JPEGs in one call, on `device` (nvJPEG in a batch on CUDA) -> uint8
    [3, H, W] RGB each, EXIF orientation applied. Raises if any of them is corrupt: the
    caller then decodes them one by one to find which."""
    buffers = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    return vision_ops.decode_jpegs(buffers, device)


def jpeg_reduction(width: int, height: int, size: int, fit: str) -> int:
    """The largest JPEG DCT scale-down (1, 2, 4 or 8) after which the image still has
    its short side ("cover") or its long side ("contain") at least `size` pixels."""
    side = min(width, height) if fit == "cover" else max(width, height)
    return max((scale for scale in (1, 2, 4, 8) if side // scale >= size), default=1)


def decode_image_at_least(data: bytes, info: ImageInfo, size: int, fit: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """Like decode_checked, for a consumer that will shrink the image to `size` anyway: a
    large JPEG is decoded at a reduced DCT scale (libjpeg's draft mode, several times
    faster) that keeps at least `size` pixels on its short ("cover") or long ("contain")
    side. `info` is what `check_image` accepted. Returns the image and the original
    (width, height) as displayed."""
    scale = jpeg_reduction(info.width, info.height, size, fit) if info.format in JPEG_FORMATS else 1
    if scale == 1:
        image = decode_checked(data, info)
        return image, (image.shape[-1], image.shape[-2])
    try:
        with Image.open(io.BytesIO(data)) as image:
            rotated = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientations that swap axes
            # PIL picks the largest DCT scale that keeps at least this size; a side that the
            # scale would shrink below one pixel (5000x3) asks for 1, so that PIL scales less.
            image.draft("RGB", (max(1, info.width // scale), max(1, info.height // scale)))
            array = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except MemoryError:
        raise
    except Exception as err:  # as in decode_checked
        raise InputError("corrupt image", f"JPEG data cannot be decoded: {public_detail(err)}") from err
    original = (info.height, info.width) if rotated else (info.width, info.height)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), original


def _decode_with_torchvision(data: bytes) -> torch.Tensor:
    return vision_ops.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def _decode_with_pil(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grayscale (PIL's "I" also holds 16-bit data): convert("RGB")
            # would clip at 255, so keep the most significant byte instead.
            array = np.asarray(image, dtype=np.int64)
            gray = torch.from_numpy(np.clip(array >> 8, 0, 255).astype(np.uint8))
            return gray.expand(3, *gray.shape).contiguous()
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


# Beyond this aspect ratio the short side's resize would make a huge intermediate (a 1x10000
# image: 256x2560000): the crop is taken first, in original pixels, up to sub-pixel rounding.
MAX_EXACT_ASPECT = 16


def center_crop_box(height: int, width: int, resize_size: int, crop_size: int) -> tuple[int, int, int, int]:
    """The region of the original image that `resize(resize_size)` followed by
    `center_crop(crop_size)` keeps, as (top, left, height, width) in original pixels,
    rounded to whole pixels."""
    scale = resize_size / min(height, width)  # original pixels -> resized pixels
    side = crop_size / scale  # the crop's side in original pixels
    crop_h = max(1, min(height, round(side)))
    crop_w = max(1, min(width, round(side)))
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def resize_center_crop(image: torch.Tensor, resize_size: int, crop_size: int, interpolation: str = "bilinear"
                       ) -> torch.Tensor:  # fmt: skip
    """uint8 [3, H, W] -> uint8 [3, crop_size, crop_size], ImageNet-style evaluation crop,
    resized with the interpolation the model's weights were evaluated with -- exactly as
    torchvision's Resize(resize_size) then CenterCrop(crop_size) (the long side truncated,
    the crop's offset rounded), which is what the build checks the weights' own
    preprocessing against (scripts/families/classifiers.py)."""
    height, width = image.shape[-2:]
    short, long = min(height, width), max(height, width)
    if long > MAX_EXACT_ASPECT * short:
        top, left, crop_h, crop_w = center_crop_box(height, width, resize_size, crop_size)
        size, shrinking = (crop_size, crop_size), crop_h > crop_size  # antialiasing only matters when shrinking
        return vision_ops.resized_crop(image, top, left, crop_h, crop_w, size, shrinking, interpolation)
    resized_long = int(resize_size * long / short)
    size = (resize_size, resized_long) if height <= width else (resized_long, resize_size)
    resized = vision_ops.resize(image, size, antialias=size[0] < height, mode=interpolation)
    top, left = int(round((size[0] - crop_size) / 2)), int(round((size[1] - crop_size) / 2))
    return resized[:, top : top + crop_size, left : left + crop_size].contiguous()


@dataclass(frozen=True)
class Placement:
    """A model input not built yet: `image` (uint8 [C, h, w]) at (`top`, `left`) on a canvas of
    `size` (height, width) filled with `fill` (a value per channel). A batch's placements are
    built together (`stack_inputs`): one allocation and one fill for the batch, and no fill
    colour copied to the device image by image (on a GPU each such copy waits for the device)."""

    image: torch.Tensor
    size: tuple[int, int]
    top: int
    left: int
    fill: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image.shape[0], *self.size)

    def canvas(self) -> torch.Tensor:
        """The input built: uint8 [C, *size]."""
        return stack_inputs([self])[0]


# A prepared model input: one view ([3, h, w]), several ([V, 3, h, w]), or one to be placed.
ModelInput = torch.Tensor | Placement


def input_shape(model_input: ModelInput) -> tuple[int, int, int]:
    """(C, h, w) of each of a model input's views."""
    return tuple(model_input.shape[-3:])


def input_views(model_input: ModelInput) -> int:
    """How many views (rows of the batch) a model input takes."""
    return model_input.shape[0] if isinstance(model_input, torch.Tensor) and model_input.dim() == 4 else 1


def stack_inputs(inputs: list[ModelInput], channels_last: bool = False) -> torch.Tensor:
    """Model inputs of one view shape, on one device -> uint8 [views, C, h, w], built in one
    allocation (in channels_last memory format if asked): the placements' fill painted
    once for the batch (with scalars: nothing is copied to the device), each image copied
    into its place, each tensor's views into theirs."""
    first = inputs[0].image if isinstance(inputs[0], Placement) else inputs[0]
    shape = (sum(input_views(part) for part in inputs), *input_shape(inputs[0]))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    batch = torch.empty(shape, dtype=first.dtype, device=first.device, memory_format=memory_format)
    fills = {part.fill for part in inputs if isinstance(part, Placement)}
    if len(fills) == 1:  # rows that take a tensor's views are overwritten
        paint(batch, next(iter(fills)))
    row = 0
    for part in inputs:
        if isinstance(part, Placement):
            if len(fills) > 1:  # placements of several fills: each its own
                paint(batch[row : row + 1], part.fill)
            height, width = part.image.shape[-2:]
            batch[row, :, part.top : part.top + height, part.left : part.left + width] = part.image
        else:
            batch[row : row + input_views(part)] = part
        row += input_views(part)
    return batch


def paint(batch: torch.Tensor, fill: Sequence[int]) -> None:
    """Fill [N, C, H, W] in place with a value per channel, passed as scalars."""
    if len(set(fill)) == 1:
        batch.fill_(fill[0])
    else:
        for channel, value in enumerate(fill):
            batch[:, channel].fill_(value)


def fill_values(fill: int | Sequence[int], channels: int = 3) -> tuple[int, ...]:
    """One fill value, or one per channel -> one per channel."""
    values = (fill,) * channels if isinstance(fill, int) else tuple(int(value) for value in fill)
    if len(values) != channels:
        raise ValueError(f"a fill holds one value or one per channel ({channels}), not {len(values)}")
    return values


def letterbox(
    image: torch.Tensor, size: int, fill: int | Sequence[int] = 114, original_size: tuple[int, int] | None = None
) -> tuple[Placement, LetterboxGeometry]:
    """uint8 [3, H, W] -> uint8 [3, size, size] (a Placement; `.canvas()` builds it): resized
    to fit with its aspect ratio kept (up or down, as ultralytics' letterbox for inference),
    centred, padded with `fill` (one value, or one per channel). The returned
    LetterboxGeometry undoes it (`unletterbox_boxes`) -- into the pixels of `original_size`
    (width, height) when the image was decoded at a reduced scale from a larger original."""
    height, width = image.shape[-2:]
    ratio = size / max(height, width)
    new_h, new_w = max(1, min(size, round(height * ratio))), max(1, min(size, round(width * ratio)))
    if (new_h, new_w) != (height, width):
        image = vision_ops.resize(image, (new_h, new_w), antialias=new_h < height)  # antialias only when shrinking
    pad_left, pad_top = (size - new_w) // 2, (size - new_h) // 2
    placed = Placement(image, (size, size), pad_top, pad_left, fill_values(fill, image.shape[0]))
    original_w, original_h = original_size or (width, height)
    return placed, LetterboxGeometry(original_w, original_h, new_w / original_w, new_h / original_h, pad_left, pad_top)


def padded(
    image: torch.Tensor, scale: float, multiple: int, fill: Sequence[int]
) -> tuple[Placement, LetterboxGeometry]:
    """uint8 [3, H, W] -> the image resized by `scale`, padded with `fill` at its right and
    bottom to multiples of `multiple` (a network's stride), as a Placement, with the
    geometry that maps its pixels back (`unletterbox_boxes`)."""
    height, width = image.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size != (height, width):
        image = vision_ops.resize(image, size, antialias=size[0] < height)
    canvas_size = (-(-size[0] // multiple) * multiple, -(-size[1] // multiple) * multiple)
    placed = Placement(image, canvas_size, 0, 0, fill_values(fill, image.shape[0]))
    return placed, LetterboxGeometry(width, height, size[1] / width, size[0] / height, 0, 0)


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of `tile` pixels start along a side of `length` pixels so that they cover
    it with neighbours sharing at least `overlap` pixels, spread evenly, the last ending at
    the side's end; one tile when the side fits in it."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


def fitted_tile(length: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The tile length that cuts a side of `length` pixels into as many tiles as tiles of
    `tile` pixels would (tile_origins), neighbours still sharing `overlap`, with as little
    beyond the side as a multiple of `multiple` allows: a 3840-pixel side takes four tiles
    of 1152 pixels rather than of 1280 (4608 pixels to see, not 5120); a side shorter than
    `tile`, one tile its length."""
    count = len(tile_origins(length, tile, overlap))
    return min(tile, -(-(length + (count - 1) * overlap) // (count * multiple)) * multiple)


def tiles(
    image: torch.Tensor, scale: float, tile: int, overlap: int, fill: Sequence[int], multiple: int = 1
) -> tuple[torch.Tensor, list[LetterboxGeometry]]:
    """uint8 [3, H, W] -> uint8 [V, 3, h, w]: the image resized by `scale`, cut into tiles of
    at most `tile` pixels a side, each side's tiles fitted to it (fitted_tile: multiples of
    `multiple`), overlapping by at least `overlap` pixels (tile_origins), padded with `fill`
    where a tile passes the image's edge; with each tile's geometry, which maps its pixels
    back into the image's (`unletterbox_boxes`). A face no larger than `overlap` at that
    scale lies whole in at least one tile."""
    height, width = image.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size != (height, width):
        image = vision_ops.resize(image, size, antialias=size[0] < height)
    tile_h, tile_w = (fitted_tile(side, tile, overlap, multiple) for side in size)
    origins = [
        (top, left) for top in tile_origins(size[0], tile_h, overlap) for left in tile_origins(size[1], tile_w, overlap)
    ]
    views = torch.empty((len(origins), image.shape[0], tile_h, tile_w), dtype=image.dtype, device=image.device)
    paint(views, fill_values(fill, image.shape[0]))
    geometries = []
    for view, (top, left) in zip(views, origins, strict=True):
        crop = image[:, top : top + tile_h, left : left + tile_w]
        view[:, : crop.shape[1], : crop.shape[2]] = crop
        geometries.append(LetterboxGeometry(width, height, size[1] / width, size[0] / height, -left, -top))
    return views, geometries


def unletterbox_points(points: torch.Tensor, geometry: LetterboxGeometry) -> torch.Tensor:
    """points (Tensor[..., 2]) as (x, y) in model-input pixels -> original-image pixels,
    clipped to the image. Returns a new tensor."""
    offset = torch.tensor([geometry.pad_left, geometry.pad_top], dtype=points.dtype, device=points.device)
    scale = torch.tensor([geometry.scale_x, geometry.scale_y], dtype=points.dtype, device=points.device)
    limits = torch.tensor([geometry.width, geometry.height], dtype=points.dtype, device=points.device)
    return ((points - offset) / scale).clamp(min=torch.zeros_like(limits), max=limits)


def unletterbox_boxes(boxes: torch.Tensor, geometry: LetterboxGeometry) -> torch.Tensor:
    """boxes (Tensor[N, 4]) in (x1, y1, x2, y2) model-input pixels -> the same boxes in
    original-image pixels, clipped to the image. Returns a new tensor."""
    return unletterbox_points(boxes.reshape(-1, 2, 2), geometry).reshape(boxes.shape)


def box_fields(box: list[float]) -> dict[str, float]:
    """(x1, y1, x2, y2) in pixels -> the answer's box fields, to a tenth of a pixel."""
    x1, y1, x2, y2 = (round(value, 1) for value in box)
    return {"left": x1, "top": y1, "right": x2, "bottom": y2}


def jpeg_bytes(image: torch.Tensor, quality: int = 90) -> bytes:
    """uint8 [3, H, W] (any device) -> JPEG bytes."""
    return vision_ops.encode_jpeg(image, quality).numpy().tobytes()
