"""Open Inference Protocol (KServe v2) requests and answers, as TorchServe hands them over."""

import base64
import json
import struct

import pytest

from handlers.edge import PLAIN, V2, Request, parse_request, read_request
from handlers.errors import InputError
from handlers.open_inference import answer_document

IMAGE = b"\xff\xd8\xff\xe0 a jpeg"


def binary_request(image: bytes, parameters: dict | None = None) -> tuple[dict, dict]:
    """What tritonclient's HTTP client sends by default: a JSON header, then the tensor bytes."""
    element = struct.pack("<I", len(image)) + image
    header = {"id": "7", "inputs": [{"name": "data", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(element)}}]}  # fmt: skip
    if parameters:
        header["parameters"] = parameters
    text = json.dumps(header).encode()
    return {"body": bytearray(text + element)}, {"Inference-Header-Content-Length": str(len(text))}


def test_binary_extension_request():
    row, headers = binary_request(IMAGE, {"top_k": 3, "binary_data_output": True})  # tritonclient adds the latter
    assert parse_request(row, headers, ()) == Request(IMAGE, {"top_k": 3}, V2, "7")


def test_json_request_with_base64_data_as_torchserve_parses_it():
    body = {"id": "a", "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                   "data": [base64.b64encode(IMAGE).decode()]}]}  # fmt: skip
    assert parse_request({"body": body}, {}, ()) == Request(IMAGE, {}, V2, "a")


def test_other_requests_are_not_inference_requests():
    assert parse_request({"body": bytearray(IMAGE)}, {}, ()).protocol == PLAIN
    assert parse_request({"body": {"data": "aGVsbG8="}}, {}, ()).protocol == PLAIN
    assert parse_request({"data": IMAGE, "top_k": b"3"}, {}, ()).protocol == PLAIN


@pytest.mark.parametrize(
    "inputs, message",
    [([{"name": "x", "datatype": "FP32", "data": [1.0]}], "needs a BYTES input"),
     ([{"name": "x", "datatype": "BYTES", "data": []}], "holds no data"),
     ([{"name": "x", "datatype": "BYTES", "shape": [1]}], "raw_input_contents")],
)  # fmt: skip
def test_requests_without_an_image_are_refused_with_the_reason(inputs, message):
    with pytest.raises(InputError, match=message):
        parse_request({"body": {"inputs": inputs}}, {}, ())


def test_a_broken_binary_header_is_refused_but_still_known_as_an_inference_request():
    row, headers = {"body": bytearray(b"{not json")}, {"inference-header-content-length": "9"}
    with pytest.raises(InputError, match="does not parse"):
        parse_request(row, headers, ())
    refused = read_request(row, headers, ())
    assert (refused.protocol, refused.id, refused.refused.status) == (V2, "", 400)
    refused = read_request({"body": {"id": "3", "inputs": []}}, {}, ())
    assert (refused.protocol, refused.id) == (V2, "3")
    assert read_request({"body": bytearray(b"\x00")}, {}, ()).protocol == PLAIN


def test_answers_are_one_bytes_output():
    answer = answer_document("m", "1.0", "7", b'{"a":1}\n', "application/json")
    output = {"name": "answer", "datatype": "BYTES", "shape": [1], "data": ['{"a":1}']}
    assert answer == {"model_name": "m", "model_version": "1.0", "id": "7", "outputs": [output]}
    image = answer_document("m", "1.0", "", IMAGE, "image/jpeg")["outputs"][0]
    assert image["name"] == "image" and base64.b64decode(image["data"][0]) == IMAGE


@pytest.mark.parametrize(
    "size, message",
    [("12", "must be a byte count"), (True, "must be a byte count"), (-1, "must be a byte count"),
     (10**12, "add up to more than"), (2, "too short")],
)  # fmt: skip
def test_a_binary_data_size_that_does_not_match_the_bytes_sent_is_refused(size, message):
    row, headers = binary_request(IMAGE)
    text = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "parameters": {"binary_data_size": size}}]})
    row = {"body": bytearray(text.encode() + bytes(row["body"])[int(headers["Inference-Header-Content-Length"]) :])}
    with pytest.raises(InputError, match=message):
        parse_request(row, {"Inference-Header-Content-Length": str(len(text))}, ())


@pytest.mark.parametrize("request_id", ["x" * 257, 7, ["a"], {}])
def test_an_id_that_cannot_be_echoed_is_refused_and_the_answer_echoes_none(request_id):
    row = {"body": {"id": request_id, "inputs": [{"name": "x", "datatype": "BYTES", "data": ["aGk="]}]}}
    with pytest.raises(InputError, match="'id' must be a string"):
        parse_request(row, {}, ())
    assert read_request(row, {}, ()).id == ""
