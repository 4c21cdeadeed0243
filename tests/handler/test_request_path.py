"""What a request crosses: a batch of JPEGs to each kind of model, traced with a profiler
-- the handler files whose functions run (at most MAX_FILES; a v2 request adds its
protocol's reader, open_inference.py), each request's body parsed once and each answer
rendered once, in both protocols."""

import base64
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from handlers.detector_handler import DetectorHandler
from scripts.samples.photos import encode, photo
from scripts.zoo import REPO
from tests.handler.conftest import DETECTOR_METADATA, RedBoxDetector

HANDLERS = REPO / "handlers"
MAX_FILES = 8
# Each request's body parsed once: these run once per request, or not at all.
PARSING = ("parse_request", "parse_json_body", "split_fields", "read_document", "parse_json", "header_parameters")
# Each answer rendered once: once per request ("render" and "jpegs_of" once per batch).
RENDERING = ("in_protocol", "fitted", "json", "failure")
JPEG = encode(photo("astronaut").resize((320, 240)), "JPEG")


def traced(handler, context, rows: list[dict]) -> tuple[set[str], Counter]:
    """The handler files whose functions ran while `handle` served `rows` (this thread),
    and how often each function of theirs was called."""
    files, calls = set(), Counter()

    def profile(frame, event, _arg):
        if event == "call" and frame.f_code.co_filename.startswith(str(HANDLERS)):
            path = Path(frame.f_code.co_filename)
            files.add(path.relative_to(HANDLERS).as_posix())
            calls[frame.f_code.co_name] += 1

    sys.setprofile(profile)
    try:
        bodies = handler.handle(rows, context)
    finally:
        sys.setprofile(None)
    assert [context.status(index) for index in range(len(rows))] == [200] * len(rows), bodies
    return files, calls


def v2_row(image: bytes) -> dict:
    tensor = {"name": "data", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(image).decode()]}
    return {"body": bytearray(json.dumps({"id": "1", "inputs": [tensor]}).encode())}


@pytest.fixture(params=["classifier", "detector", "face"])
def served(request, make_handler):
    if request.param == "classifier":
        return make_handler()
    if request.param == "detector":
        yaml_config = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "handler": {}}
        return make_handler(RedBoxDetector(), DETECTOR_METADATA, yaml_config, handler_class=DetectorHandler)
    return request.getfixturevalue("pixelizer")


@pytest.mark.parametrize("protocol", ["plain", "v2"])
def test_a_batch_of_jpegs_crosses_few_files_parsed_once_and_rendered_once(served, protocol):
    handler, context = served
    rows = [{"body": bytearray(JPEG)} if protocol == "plain" else v2_row(JPEG) for _ in range(3)]
    files, calls = traced(handler, context, rows)
    assert len(files - {"open_inference.py"}) <= MAX_FILES, sorted(files)
    assert "image_structure.py" not in files  # a JPEG lists nothing Pillow would build
    assert ("open_inference.py" in files) == (protocol == "v2")
    for name in PARSING:
        assert calls[name] in (0, len(rows)), (name, calls[name])
    assert calls["parse_request"] == len(rows) and calls["parse_json"] == (len(rows) if protocol == "v2" else 0)
    assert calls["render"] == 1 and calls["jpegs_of"] == 1
    assert calls["in_protocol"] == calls["fitted"] == len(rows) and calls["failure"] == 0
    image_answers = handler.task.settings.format == "image" if hasattr(handler.task.settings, "format") else False
    assert calls["json"] == (0 if image_answers else len(rows))  # the JSON answer built once, then wrapped
