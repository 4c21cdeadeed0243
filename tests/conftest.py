"""Fixtures every layer shares."""

import pytest
from PIL import Image

from scripts.samples.photos import encode, photo


@pytest.fixture(scope="session")
def chelsea() -> Image.Image:
    """skimage's cat photo, 451x300."""
    return photo("chelsea")


@pytest.fixture(scope="session")
def chelsea_jpeg(chelsea) -> bytes:
    return encode(chelsea, "JPEG", quality=95)


@pytest.fixture(scope="session", autouse=True)
def worker_registry(tmp_path_factory):
    """Handlers built by the tests, and the TorchServe workers they start, register in a
    registry of their own, not in the machine's (handlers/observers.py::WorkerRegistry)."""
    from handlers.observers import REGISTRY_ENV

    with pytest.MonkeyPatch.context() as patch:
        directory = tmp_path_factory.mktemp("workers")
        patch.setenv(REGISTRY_ENV, str(directory))
        yield directory
