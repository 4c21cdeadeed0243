"""Real photos (scikit-image's sample data, public domain) and an encoder: test and
benchmark inputs wherever a result must make sense."""

import io

import numpy as np
from PIL import Image
from skimage import data as photos


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(name: str) -> Image.Image:
    """A real photo from scikit-image as an RGB PIL image (chelsea, astronaut, coffee, ...)."""
    return Image.fromarray(np.asarray(getattr(photos, name)())).convert("RGB")


def photo_bytes(name: str, fmt: str = "JPEG", **options) -> bytes:
    return encode(photo(name), fmt, **options)
