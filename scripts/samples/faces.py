"""Real faces laid out to measure an anonymiser's recall: the 100 face crops of Labeled
Faces in the Wild that ship with scikit-image (`skimage.data.lfw_subset()`: 25x25
grayscale, the first 100 faces, the next 100 not), in grids at one size under one
condition, and in crowds of mixed sizes; with each face's box, so that a detector's
answer can be scored. Deterministic for a seed."""

import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from scripts.samples.photos import photo

Box = tuple[int, int, int, int]  # (x1, y1, x2, y2) in pixels

BACKGROUND = 0.5  # grids are laid on mid gray, as LFW's crops are cut from photos of all kinds
# Conditions, each a crop (float gray [0, 1], resized) -> an RGB array in [0, 1].
TINT = (1.0, 0.8, 0.55)  # warm light: red kept, blue at half


def _gray(crop: np.ndarray) -> np.ndarray:
    return np.repeat(crop[..., None], 3, axis=2)


CONDITIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "plain": _gray,
    "dark": lambda crop: _gray(crop * 0.25),
    "low contrast": lambda crop: _gray(0.5 + (crop - 0.5) * 0.3),
    "bright": lambda crop: _gray(0.55 + crop * 0.45),
    "tinted": lambda crop: _gray(crop) * np.array(TINT),
}
# Conditions of the whole picture, after the layout: each face turned, blur, JPEG artefacts.
TURNED_DEGREES = (10, 30)


@dataclass(frozen=True)
class FaceSet:
    name: str
    data: bytes  # the picture as sent (PNG, or JPEG for the JPEG condition)
    boxes: tuple[Box, ...]  # where the faces are; a set of non-faces lists where its crops are
    faces: bool  # whether the crops are faces (recall) or not (false detections)


def lfw_crops(faces: bool) -> list[np.ndarray]:
    """The 100 face (or non-face) crops, float gray [0, 1], 25x25."""
    from skimage.data import lfw_subset

    crops = lfw_subset()
    return list(crops[:100] if faces else crops[100:])


def resized(crop: np.ndarray, size: int) -> np.ndarray:
    picture = Image.fromarray(np.uint8(np.clip(crop, 0, 1) * 255))
    return np.asarray(picture.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255


def turned(tile: np.ndarray, degrees: float) -> np.ndarray:
    """An RGB tile turned about its centre, the corners it uncovers filled with the background."""
    picture = Image.fromarray(np.uint8(np.clip(tile, 0, 1) * 255))
    fill = (round(BACKGROUND * 255),) * 3
    return np.asarray(picture.rotate(degrees, Image.Resampling.BICUBIC, fillcolor=fill), dtype=np.float64) / 255


def encoded(canvas: np.ndarray, jpeg_quality: int = 0) -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(np.uint8(np.clip(canvas, 0, 1) * 255 + 0.5))
    picture.save(buffer, "JPEG", quality=jpeg_quality) if jpeg_quality else picture.save(buffer, "PNG")
    return buffer.getvalue()


def grid(size: int, condition: str = "plain", faces: bool = True, seed: int = 0) -> FaceSet:
    """The 100 crops at `size` pixels, 10 x 10, half a crop apart, under `condition`: one of
    CONDITIONS, or "turned" (each face by 10-30 degrees, either way), "blurred" (a Gaussian
    of size/12 px), "jpeg" (the picture at quality 25)."""
    rng = random.Random(seed)
    gap = max(4, size // 2)
    side = 10 * size + 11 * gap
    canvas = np.full((side, side, 3), BACKGROUND)
    boxes = []
    for index, crop in enumerate(lfw_crops(faces)):
        tile = CONDITIONS.get(condition, _gray)(resized(crop, size))
        if condition == "turned":
            tile = turned(tile, rng.uniform(*TURNED_DEGREES) * rng.choice((-1, 1)))
        x, y = gap + (index % 10) * (size + gap), gap + (index // 10) * (size + gap)
        canvas[y : y + size, x : x + size] = tile
        boxes.append((x, y, x + size, y + size))
    if condition == "blurred":
        picture = Image.fromarray(np.uint8(canvas * 255)).filter(ImageFilter.GaussianBlur(size / 12))
        canvas = np.asarray(picture, dtype=np.float64) / 255
    kind = "faces" if faces else "non-faces"
    data = encoded(canvas, 25 if condition == "jpeg" else 0)
    return FaceSet(f"{kind}, {size} px, {condition}", data, tuple(boxes), faces)


def crowd(width: int, height: int, smallest: int, largest: int, seed: int = 0, colour: bool = True) -> FaceSet:
    """The 100 faces at sizes spread between `smallest` and `largest` pixels, scattered over
    a width x height picture of a real background (skimage's coffee, blurred) without
    overlapping: a crowd, as a photo of many people at many distances shows it. LFW's
    faces are gray: on the colour photo they are a collage no camera makes; `colour`
    False: the background in black and white too, as a black-and-white photo shows a crowd."""
    rng = random.Random(seed)
    background = photo("coffee").convert("RGB" if colour else "L").convert("RGB")
    background = background.resize((width, height)).filter(ImageFilter.GaussianBlur(8))
    canvas = np.asarray(background, dtype=np.float64) / 255
    taken = np.zeros((height, width), dtype=bool)
    boxes = []
    for crop in lfw_crops(True):
        size = round(smallest * (largest / smallest) ** rng.random())  # as many small faces as large, per octave
        for _ in range(1000):
            x, y = rng.randrange(0, width - size), rng.randrange(0, height - size)
            margin = size // 4
            area = taken[max(0, y - margin) : y + size + margin, max(0, x - margin) : x + size + margin]
            if not area.any():
                break
        else:
            continue  # no room left at this size
        canvas[y : y + size, x : x + size] = _gray(resized(crop, size))
        taken[y : y + size, x : x + size] = True
        boxes.append((x, y, x + size, y + size))
    name = f"crowd {width}x{height}{'' if colour else ' in black and white'}, faces {smallest}-{largest} px"
    return FaceSet(name, encoded(canvas), tuple(boxes), True)


@dataclass(frozen=True)
class Walker:
    """One face of a walking crowd: its crop (RGB [0, 1], its size), where it starts, and
    how it moves each frame (a constant walk, and a bob of a few pixels)."""

    tile: np.ndarray
    x: float
    y: int
    step: float  # pixels per frame, either way
    bob: float  # the bob's phase

    def box(self, frame: int) -> Box:
        size = self.tile.shape[0]
        x, y = round(self.x + self.step * frame), self.y + round(BOB * math.sin(0.4 * frame + self.bob))
        return (x, y, x + size, y + size)


BOB = 2  # pixels up and down as a face walks


def walking_crowd(width: int, height: int, frames: int, smallest: int = 20, largest: int = 96, seed: int = 0):
    """A crowd walking across a real background (skimage's coffee, blurred): LFW's 100
    faces in rows, each row at one size between `smallest` and `largest` px walking left
    or right at its own speed, each face bobbing; no face leaves the frame or meets
    another. Yields each frame (uint8 [H, W, 3]) with its faces' boxes."""
    rng = random.Random(seed)
    background = photo("coffee").resize((width, height)).filter(ImageFilter.GaussianBlur(8))
    crops, walkers, top = lfw_crops(True), [], BOB + 2
    while crops:
        size = round(smallest * (largest / smallest) ** rng.random())
        if top + size + BOB + 2 > height:
            break
        step = rng.uniform(0.5, 3.0) * rng.choice((-1, 1))
        travel = abs(step) * (frames - 1)
        x = (travel if step < 0 else 0) + rng.uniform(2, size)
        while crops and x + size + (0 if step < 0 else travel) < width - 2:
            walkers.append(Walker(_gray(resized(crops.pop(0), size)), x, top, step, rng.uniform(0, 2 * math.pi)))
            x += size * rng.uniform(1.4, 2.2)
        top += size + 2 * BOB + max(4, size // 4)
    for frame in range(frames):
        canvas = np.asarray(background, dtype=np.float64) / 255
        boxes = tuple(walker.box(frame) for walker in walkers)
        for walker, (x1, y1, x2, y2) in zip(walkers, boxes, strict=True):
            canvas[y1:y2, x1:x2] = walker.tile
        yield np.uint8(np.clip(canvas, 0, 1) * 255 + 0.5), boxes


def covered(box: Box, mask: np.ndarray) -> float:
    """The fraction of a face's box that a boolean mask [H, W] covers."""
    x1, y1, x2, y2 = box
    return float(mask[y1:y2, x1:x2].mean())


def box_iou(a: Box | tuple[float, ...], b: Box | tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


MATCH_IOU = 0.3  # a detection this much over a face's crop box found it (LFW's crops are tight)


def found(faces: tuple[Box, ...], detections: list[tuple[float, ...]], min_iou: float = MATCH_IOU) -> int:
    """How many faces a detection matches, each detection matching one face at most
    (the best-overlapping first)."""
    pairs = sorted(((box_iou(face, det), i, j) for i, face in enumerate(faces) for j, det in enumerate(detections)),
                   reverse=True)  # fmt: skip
    faces_left, detections_left, count = set(range(len(faces))), set(range(len(detections))), 0
    for iou, i, j in pairs:
        if iou < min_iou:
            break
        if i in faces_left and j in detections_left:
            faces_left.discard(i)
            detections_left.discard(j)
            count += 1
    return count
