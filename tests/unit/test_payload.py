"""Splitting TorchServe request rows into image bytes and parameters."""

import base64

import pytest

from handlers.edge import image_bytes, parse_request
from handlers.errors import InputError


def split_request(row: dict) -> tuple[bytes, dict]:
    """A plain request's image and parameters, as the edge parses them."""
    request = parse_request(row, {}, ())
    return request.data, request.params


JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def test_raw_body():
    assert split_request({"body": bytearray(JPEG)}) == (JPEG, {})


def test_multipart_fields_give_image_and_parameters():
    row = {"data": bytearray(PNG), "top_k": bytearray(b"3")}
    assert split_request(row) == (PNG, {"top_k": bytearray(b"3")})


@pytest.mark.parametrize("field", ["data", "image", "file"])
def test_multipart_image_field_names(field):
    assert split_request({field: bytearray(JPEG)})[0] == JPEG


def test_json_object_with_base64_data_and_parameters():
    row = {"body": {"data": base64.b64encode(JPEG).decode(), "top_k": 2}}
    assert split_request(row) == (JPEG, {"top_k": 2})


def test_json_body_without_json_content_type_is_parsed():
    row = {"body": bytearray(b'  {"data": "' + base64.b64encode(JPEG) + b'", "top_k": 2}')}
    assert split_request(row) == (JPEG, {"top_k": 2})


def test_invocations_query_parameters_without_routing_field():
    row = {"model_name": "mobilenet_v2", "top_k": "1", "body": bytearray(JPEG)}
    assert split_request(row) == (JPEG, {"top_k": "1"})


@pytest.mark.parametrize(
    "encoded",
    [
        base64.b64encode(JPEG),
        base64.b64encode(JPEG) + b"\n",
        base64.encodebytes(JPEG),  # wrapped at 76 columns
        b"data:image/jpeg;base64," + base64.b64encode(JPEG),
        base64.urlsafe_b64encode(JPEG),
    ],
)
def test_plain_base64_bodies(encoded):
    assert image_bytes(bytearray(encoded)) == JPEG
    assert image_bytes(encoded.decode()) == JPEG


@pytest.mark.parametrize("data", [b"<html>hi</html>", b"just some text", b"abc"])
def test_bodies_that_are_not_base64_pass_through_for_the_decoder(data):
    assert image_bytes(bytearray(data)) == data


@pytest.mark.parametrize(
    "row, error",
    [
        ({}, "empty request"),
        ({"body": bytearray(b'{"data": "aGk=", oops')}, "invalid JSON request"),
        ({"top_k": b"3"}, "no image in request"),
        ({"body": {"top_k": 3}}, "no image in request"),
        ({"body": [1, 2]}, "invalid JSON request"),
        ({"body": {"data": 42}}, "invalid image field"),
        ({"body": {"data": "not base64 at all!"}}, "invalid base64"),
    ],
)
def test_requests_without_a_usable_image(row, error):
    with pytest.raises(InputError) as caught:
        split_request(row)
    assert caught.value.status == 400 and caught.value.error == error
