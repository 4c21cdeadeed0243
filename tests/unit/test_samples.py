"""scripts/samples/photos.py: scikit-image's sample photos read from their files give the
pixels scikit-image's own loaders give, without importing scikit-image (nor SciPy, which a
GPU machine is not given: requirements-gpu-device.txt)."""

import subprocess
import sys

import numpy as np
import pytest
from skimage import data

from scripts.samples.photos import CROP_SOURCES, photo, photo_array
from scripts.zoo import REPO


@pytest.mark.parametrize("name", [*CROP_SOURCES, "retina"])
def test_a_photo_is_the_pixels_scikit_image_loads(name):
    loaded = photo_array(name)
    assert loaded.dtype == np.uint8 and loaded.ndim == 3 and loaded.flags.writeable
    assert np.array_equal(loaded, getattr(data, name)())
    assert photo(name).size == (loaded.shape[1], loaded.shape[0]) and photo(name).mode == "RGB"


def test_a_photo_that_does_not_exist_is_named():
    with pytest.raises(ValueError, match="no photo named 'kitten' among scikit-image's sample data"):
        photo("kitten")


def test_reading_a_photo_imports_neither_scikit_image_nor_scipy():
    code = (
        "import sys\nfrom scripts.samples.photos import photo\nphoto('chelsea')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('skimage', 'scipy')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
