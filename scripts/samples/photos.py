"""Real photos (scikit-image's sample data, public domain) and an encoder: test and
benchmark inputs wherever a result must make sense.

The photos are the files scikit-image ships beside its `data` module, read here with PIL
(the same pixels its loaders give) without importing scikit-image: its `data` module
imports SciPy, 35 MB more to carry to a GPU machine that has no package index."""

import importlib.util
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

# Colour photos of different kinds: a portrait, a cat, a cup, a rocket, a microscope slide, a sky.
CROP_SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


EXIF_ORIENTATION = 0x0112  # the EXIF tag a camera writes instead of turning the pixels


def encode(image: Image.Image, fmt: str, orientation: int | None = None, **options) -> bytes:
    """`image` as `fmt` with PIL's `options`; `orientation` (1-8): tagged with it in EXIF,
    which tells a viewer how to turn the stored pixels (6: 90 degrees clockwise)."""
    if orientation is not None:
        options["exif"] = exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


# scikit-image's name of a photo -> its file, where the file is named otherwise.
PHOTO_FILES = {"immunohistochemistry": "ihc.png"}


def photo_file(name: str) -> Path:
    """The file of scikit-image's sample photo `name` (chelsea, astronaut, coffee, ...)."""
    spec = importlib.util.find_spec("skimage")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-image (its sample photos) is not installed", name="skimage")
    folder = Path(spec.submodule_search_locations[0]) / "data"
    files = [folder / PHOTO_FILES[name]] if name in PHOTO_FILES else sorted(folder.glob(f"{name}.[jp][pn]g"))
    if not files or not files[0].is_file():
        raise ValueError(f"no photo named {name!r} among scikit-image's sample data ({folder})")
    return files[0]


def photo(name: str) -> Image.Image:
    """A real photo from scikit-image as an RGB PIL image (chelsea, astronaut, coffee, ...)."""
    with Image.open(photo_file(name)) as image:
        return image.convert("RGB")


def photo_array(name: str) -> np.ndarray:
    """A real photo from scikit-image as uint8 RGB, height x width x 3 (a writable copy)."""
    return np.array(photo(name))


def photo_bytes(name: str, fmt: str = "JPEG", **options) -> bytes:
    return encode(photo(name), fmt, **options)


def photo_crops(count: int, seed: int, size: int = 200, distort: bool = False) -> list[Image.Image]:
    """Random size x size crops of the CROP_SOURCES photos, in turn: two calls with other
    seeds are two samples of one distribution. `distort`: heavily blurred, darkened to
    35 % and noised (sigma 25), the kind of input a drift test must flag."""
    generator = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        image = photo(CROP_SOURCES[index % len(CROP_SOURCES)])
        x, y = (int(generator.integers(0, side - size)) for side in image.size)
        crop = image.crop((x, y, x + size, y + size))
        if distort:
            crop = crop.filter(ImageFilter.GaussianBlur(6))
            pixels = np.asarray(crop).astype(np.float32) * 0.35 + generator.normal(0, 25, (size, size, 3))
            crop = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        crops.append(crop)
    return crops


def write_images(directory: Path, images: list[Image.Image], fmt: str = "PNG") -> Path:
    """images -> directory/00.png, 01.png, ... (the directory is created)."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        image.save(directory / f"{index:02d}.{fmt.lower()}", fmt)
    return directory
