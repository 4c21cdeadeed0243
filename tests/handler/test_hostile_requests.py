"""Requests a hostile client can shape, through the whole handler as a worker runs it:
any JSON in any field of a plain or an Open Inference Protocol request, nesting, repeated
keys, over-long names and ids, answers that would not fit. Each gets its own 4xx (never a
5xx, never a failed neighbour), an answer below max_response_bytes, and an error text
that tells nothing about the server."""

import base64
import json
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.detector_handler import DetectorHandler
from handlers.edge import RAW_JSON
from handlers.tasks.face import MAX_HEADER_REGIONS, face_headers
from scripts.samples.photos import encode, photo
from tests.corpus import assert_clean, json_values
from tests.handler.conftest import DETECTOR_METADATA, RedBoxDetector

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
IMAGE = encode(photo("chelsea").resize((64, 48)), "JPEG")
ENCODED = base64.b64encode(IMAGE).decode()


def handle(handler, context, rows: list[dict], headers: list[dict] | None = None) -> list[tuple[int, bytes]]:
    """(status, body) per request of one batch, as TorchServe sends them."""
    context.statuses.clear()
    context.headers.clear()
    context.request_headers = dict(enumerate(headers or []))
    bodies = handler.handle(rows, context)
    assert len(bodies) == len(rows)
    return [(context.status(index), body) for index, body in enumerate(bodies)]


def check_answer(status: int, body: bytes, limit: int = 16_000_000) -> dict | None:
    """Below 500, within the limit; an error is JSON with a clean detail. The error document
    (plain, or the "error" of a v2 answer), None for a 200."""
    assert status < 500, body[:300]
    assert len(body) <= limit
    if status == 200:
        return None
    document = json.loads(body)
    if "outputs" in document:  # a v2 answer: the handler's error rides in its tensor
        document = json.loads(document["outputs"][0]["data"][0])
    assert_clean(document["detail"])
    return document


def as_sent(document) -> dict:
    """A JSON body as TorchServe's worker hands it over once the handler set RAW_JSON: bytes."""
    return {"body": bytearray(json.dumps(document).encode())}


def v2(**fields) -> dict:
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [ENCODED]}
    return {"id": "1", "inputs": [tensor], **fields}


def test_the_handler_asks_torchserve_for_json_bodies_unparsed(make_handler):
    make_handler()
    assert os.environ[RAW_JSON[0]] == RAW_JSON[1]


def test_any_json_in_any_field_of_a_plain_request_is_answered_alone(make_handler):
    handler, context = make_handler()

    @PROPERTY
    @given(field=st.sampled_from(["data", "top_k", "body", "image", "x"]), value=json_values)
    def check(field, value):
        bad, good = handle(handler, context, [as_sent({"data": ENCODED, field: value}), as_sent({"data": ENCODED})])
        check_answer(*bad)
        assert good[0] == 200  # the neighbour in the batch

    check()


@pytest.mark.parametrize("where", ["id", "inputs", "parameters", "tensor", "tensor parameters", "data", "datatype"])
def test_any_json_in_any_field_of_a_v2_request_is_answered_alone(make_handler, where):
    handler, context = make_handler()

    @PROPERTY
    @given(value=json_values)
    def check(value):
        document = v2()
        tensor = document["inputs"][0]
        if where in ("id", "inputs", "parameters"):
            document[where] = value
        elif where == "tensor":
            document["inputs"] = [value, tensor]
        elif where == "tensor parameters":
            tensor["parameters"] = value
        else:
            tensor[where] = value
        bad, good = handle(handler, context, [as_sent(document), as_sent(v2())])
        check_answer(*bad)
        assert good[0] == 200 and json.loads(good[1])["id"] == "1"

    check()


def test_any_binary_v2_header_is_answered_alone(make_handler):
    handler, context = make_handler()

    @PROPERTY
    @given(length=st.one_of(st.text(max_size=8), st.integers(-5, 400).map(str)), size=json_values, tail=st.binary())
    def check(length, size, tail):
        header = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "parameters": {"binary_data_size": size}}]})
        row = {"body": bytearray(header.encode() + tail)}
        (answer,) = handle(handler, context, [row], [{"Inference-Header-Content-Length": length}])
        check_answer(*answer)

    check()


def nested(depth: int, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [50, 990, 5000, 100_000])
def test_parameters_nested_deep_are_a_400(make_handler, depth):
    handler, context = make_handler()
    text = '{"data": "' + ENCODED + '", "top_k": ' + "[" * depth + "1" + "]" * depth + "}"
    v2_text = json.dumps(v2(parameters={"top_k": 1})).replace(
        '"top_k": 1', '"top_k": ' + "[" * depth + "1" + "]" * depth
    )
    for body in (text, v2_text):
        ((status, answer),) = handle(handler, context, [{"body": bytearray(body.encode())}])
        assert status == 400 and len(answer) < 2000, answer[:300]
        check_answer(status, answer)


def test_a_field_name_of_megabytes_is_not_echoed(make_handler):
    handler, context = make_handler()
    for name in ("é" * 5_000_000, "x" * 10_000_000):
        for document in ({"data": ENCODED, name: 1}, {name: ENCODED}, v2(parameters={name: 1})):
            ((status, answer),) = handle(handler, context, [as_sent(document)])
            assert status == 400 and len(answer) < 2000
            check_answer(status, answer)
    many = {"data": ENCODED, **{f"p{index}": index for index in range(100_000)}}
    ((status, answer),) = handle(handler, context, [as_sent(many)])
    assert status == 400 and len(answer) < 2000 and "and 99995 more" in json.loads(answer)["detail"]


def test_a_long_or_odd_v2_id_is_refused_and_not_echoed(make_handler):
    handler, context = make_handler()
    for request_id in ("i" * 10_000_000, ["a"] * 1000, nested(900, "a"), 7):
        ((status, answer),) = handle(handler, context, [as_sent(v2(id=request_id))])
        assert status == 400 and len(answer) < 2000
        assert json.loads(answer)["id"] == ""
    ((status, answer),) = handle(handler, context, [as_sent(v2(id="i" * 256))])
    assert status == 200 and json.loads(answer)["id"] == "i" * 256


def test_a_key_twice_in_any_json_body_is_refused_naming_it(make_handler):
    handler, context = make_handler()
    plain = f'{{"data": "{ENCODED}", "top_k": 1, "top_k": 2}}'
    protocol = json.dumps(v2(parameters={"top_k": 1})).replace('"top_k": 1', '"top_k": 1, "top_k": 2')
    for body in (plain, protocol):
        ((status, answer),) = handle(handler, context, [{"body": bytearray(body.encode())}])
        assert status == 400 and "'top_k' appears more than once" in check_answer(status, answer)["detail"]


def test_an_answer_that_would_not_fit_is_a_413_for_that_request_alone(make_handler):
    """The detector's image answer fits as a JPEG and not as a v2 answer (an image in
    base64 is 4/3 larger): the limit is checked on what is sent, for that request alone."""
    photo_jpeg = encode(photo("astronaut"), "JPEG", quality=95)
    detector = (RedBoxDetector(), DETECTOR_METADATA)
    probe, probe_context = make_handler(*detector, {"handler": {"input_size": 320}}, DetectorHandler)
    jpeg_size = len(probe.handle([{"data": photo_jpeg, "format": b"image"}], probe_context)[0])
    limit = jpeg_size + 2000  # the JPEG and its headers fit; 4/3 of it does not
    yaml = {"batchSize": 4, "handler": {"input_size": 320, "max_response_bytes": limit}}
    handler, context = make_handler(RedBoxDetector(), DETECTOR_METADATA, yaml, DetectorHandler)
    document = v2(parameters={"format": "image"})
    document["inputs"][0]["data"] = [base64.b64encode(photo_jpeg).decode()]
    rest, protocol, json_v2 = handle(
        handler, context, [{"data": photo_jpeg, "format": b"image"}, as_sent(document), as_sent(v2())]
    )
    assert rest[0] == 200 and json_v2[0] == 200
    assert protocol[0] == 413
    answer = json.loads(protocol[1])
    assert answer["id"] == "1" and answer["error"].startswith("result too large")
    assert "Open Inference Protocol" in check_answer(*protocol, limit=limit)["detail"]


def test_a_v2_request_refused_with_a_413_gets_a_v2_answer_beside_its_neighbour(make_handler):
    """An image over the pixel limit is refused in the protocol's shape, once, and the
    plain request batched with it is answered."""
    handler, context = make_handler(yaml={"batchSize": 4, "handler": {"max_image_pixels": 1000}})
    small = encode(photo("chelsea").resize((32, 24)), "JPEG")
    protocol, plain = handle(handler, context, [as_sent(v2()), {"data": small}])
    assert protocol[0] == 413 and plain[0] == 200
    answer = json.loads(protocol[1])
    assert answer["id"] == "1" and answer["error"].startswith("image too large")
    assert json.loads(answer["outputs"][0]["data"][0])["status"] == 413


def test_the_face_boxes_header_is_bounded_and_says_what_it_left_out():
    regions = [(x, y, x + 40_000_000, y + 1) for x in range(70) for y in range(70)]  # 4,900 faces on a 40 MP line
    headers = dict(face_headers(regions))
    assert headers["X-Faces"] == "4900" and headers["X-Face-Boxes-Omitted"] == str(4900 - MAX_HEADER_REGIONS)
    assert len(json.loads(headers["X-Face-Boxes"])) == MAX_HEADER_REGIONS and len(headers["X-Face-Boxes"]) < 8192
    assert "X-Face-Boxes-Omitted" not in dict(face_headers(regions[:MAX_HEADER_REGIONS]))


def test_classes_are_echoed_once_each_by_name(make_handler):
    yaml = {"batchSize": 4, "handler": {"input_size": 320}}
    handler, context = make_handler(RedBoxDetector(), DETECTOR_METADATA, yaml, DetectorHandler)
    ((status, answer),) = handle(handler, context, [{"data": IMAGE, "classes": b",".join([b"car", b"2"] * 100_000)}])
    assert status == 200 and json.loads(answer)["parameters"]["classes"] == ["car"]


def test_binary_data_offsets_follow_the_inputs_before_the_image(make_handler):
    handler, context = make_handler()
    other = struct.pack("<4f", 1, 2, 3, 4)
    element = struct.pack("<I", len(IMAGE)) + IMAGE
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}},
                         {"name": "image", "datatype": "BYTES", "shape": [1],
                          "parameters": {"binary_data_size": len(element)}}]}  # fmt: skip
    text = json.dumps(header).encode()
    ((status, answer),) = handle(
        handler,
        context,
        [{"body": bytearray(text + other + element)}],
        [{"Inference-Header-Content-Length": str(len(text))}],
    )
    assert status == 200, answer
