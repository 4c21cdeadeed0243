"""Every image shape through every handler kind: any width x height from 1x1 to the
pixel limit, any aspect ratio, in every accepted format and colour mode, through each
decode path (reduced-scale JPEG draft, full decode, batched JPEG decode), letterbox,
resize/crop and pixelation, gives a valid answer of the photo's size, or a 413 above the
pixel limit -- never a 500, and never a failed neighbour in the same batch."""

import io
import json
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from handlers.classifier_handler import ClassifierHandler
from handlers.detector_handler import DetectorHandler
from handlers.face_pixelizer_handler import FacePixelizerHandler
from scripts.building.inprocess import FakeContext
from scripts.samples.photos import encode, photo
from tests.handler.conftest import (
    DETECTOR_METADATA,
    TINY_METADATA,
    RedBoxDetector,
    TinyColorClassifier,
    write_model_dir,
)

# Low enough that the strategies below reach both sides of it cheaply.
PIXEL_LIMIT = 120_000
# The colour modes each format can hold (PIL's encoders).
MODES = {
    "JPEG": ("L", "RGB", "CMYK"),
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "WEBP": ("RGB", "RGBA"),
    "GIF": ("L", "P"),
    "BMP": ("1", "L", "P", "RGB"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "F"),
}
# One real photo scaled to every size: content the models can make sense of.
SOURCE = photo("astronaut")
NEIGHBOUR = encode(photo("chelsea").resize((225, 150)), "JPEG")  # within the limit

sides = st.one_of(
    st.tuples(st.integers(1, 6), st.integers(500, 40_000)),  # a few pixels by thousands
    st.tuples(st.integers(1, 48), st.integers(1, 48)),  # tiny
    st.tuples(st.integers(1, 700), st.integers(1, 700)),  # around the models' input sizes
    st.tuples(st.integers(1, 40), st.integers(100, 3000)),  # elongated, across the JPEG reduction steps
)
sizes = sides.flatmap(lambda size: st.sampled_from([size, size[::-1]]))


@dataclass(frozen=True)
class Kind:
    name: str
    handler: object
    context: FakeContext
    formats: tuple[str, ...]  # values of the `format` parameter to try ("" = the default answer)


def build(handler_class, model_dir, jpeg_decoder: str) -> tuple[object, FakeContext]:
    yaml = {"handler": {"max_image_pixels": PIXEL_LIMIT, "jpeg_decoder": jpeg_decoder, "warmup": False}}
    context = FakeContext(model_dir, yaml)
    handler = handler_class()
    handler.initialize(context)
    return handler, context


@pytest.fixture(scope="module")
def kinds(tmp_path_factory, face_model_dir) -> dict[str, Kind]:
    """Each handler kind twice: JPEGs decoded one by one (large ones at a reduced scale),
    and the batched JPEG decode (what a GPU worker uses, here on the CPU)."""
    classifier_dir = write_model_dir(tmp_path_factory.mktemp("classifier"), TinyColorClassifier(), TINY_METADATA)
    detector_dir = write_model_dir(tmp_path_factory.mktemp("detector"), RedBoxDetector(), DETECTOR_METADATA)
    built = []
    for decoder in ("per_image", "batched"):
        for name, handler_class, model_dir, formats in (
            ("classifier", ClassifierHandler, classifier_dir, ("",)),
            ("detector", DetectorHandler, detector_dir, ("json", "image")),
            ("face", FacePixelizerHandler, face_model_dir, ("json", "image")),
        ):
            built.append(Kind(f"{name}/{decoder}", *build(handler_class, model_dir, decoder), formats))
    return {kind.name: kind for kind in built}


def encoded(size: tuple[int, int], fmt: str, mode: str) -> bytes:
    try:
        return encode(SOURCE.resize(size).convert(mode), fmt)
    except (OSError, ValueError):  # beyond what the format can hold (WebP: 16383 px a side)
        assume(False)


KINDS = [f"{name}/{decoder}" for decoder in ("per_image", "batched") for name in ("classifier", "detector", "face")]


@pytest.mark.parametrize("kind_name", KINDS)
@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(size=sizes, fmt=st.sampled_from(list(MODES)), data=st.data())
def test_any_shape_in_any_format_is_answered_at_its_size_or_refused_as_too_large(kinds, kind_name, size, fmt, data):
    kind = kinds[kind_name]
    mode = data.draw(st.sampled_from(MODES[fmt]), label="mode")
    answer = data.draw(st.sampled_from(kind.formats), label="format")
    image = encoded(size, fmt, mode)
    row = {"data": image, **({"format": answer.encode()} if answer else {})}
    context = kind.context
    context.statuses.clear()
    context.content_types.clear()
    result, neighbour = kind.handler.handle([row, {"data": NEIGHBOUR}], context)
    assert context.status(1) == 200, "a neighbour in the batch was affected"
    width, height = size
    if width * height > PIXEL_LIMIT:
        assert context.status(0) == 413 and json.loads(result)["error"] == "image too large"
        return
    assert context.status(0) == 200, result[:300]
    if context.content_types[0] == "image/jpeg":
        assert Image.open(io.BytesIO(result)).size == size
        return
    document = json.loads(result)
    if kind.name.startswith("classifier"):
        assert len(document["predictions"]) == min(kind.handler.task.settings.top_k, len(kind.handler.task.labels))
    else:
        assert document["image_size"] == [width, height]
        found = document.get("detections", document.get("faces"))
        assert all(0 <= f["left"] <= f["right"] <= width and 0 <= f["top"] <= f["bottom"] <= height for f in found)
