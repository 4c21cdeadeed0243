"""Fixtures every layer shares."""

import pytest
from PIL import Image

from scripts.photos import encode, photo


@pytest.fixture(scope="session")
def chelsea() -> Image.Image:
    """skimage's cat photo, 451x300."""
    return photo("chelsea")


@pytest.fixture(scope="session")
def chelsea_jpeg(chelsea) -> bytes:
    return encode(chelsea, "JPEG", quality=95)
