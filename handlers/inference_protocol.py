"""The Open Inference Protocol (KServe v2) on TorchServe's routes: an image as a BYTES
input tensor in, the handler's answer as a BYTES output tensor out. Pure functions.

TorchServe 0.12 passes a v2 request to the handler as it came:
- REST `POST /v2/models/<name>/infer` with a JSON body: `{"body": dict}` (parsed);
  with the binary-data extension (tritonclient's default), the raw body -- a JSON
  header of `Inference-Header-Content-Length` bytes, then the tensors' bytes;
- gRPC `inference.GRPCInferenceService/ModelInfer`: TorchServe rewrites the request as
  that JSON (BYTES contents base64-encoded; `raw_input_contents` are dropped).

The image is the first BYTES input (one element); request-level `parameters` are the
per-request parameters (`{"top_k": 3}`). The answer is one BYTES output: "answer" (the
JSON answer's text) or "image" (a JPEG, base64-encoded, as BYTES in JSON must be text).
"""

import base64
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imaging import InputError

HEADER_LENGTH = "inference-header-content-length"
# Request parameters the protocol (and its clients, e.g. tritonclient's "binary_data_output")
# use for themselves: not the model's parameters.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "binary_data", "binary_data_size", "priority", "timeout", "sequence_id", "sequence_start",
     "sequence_end", "headers"}
)  # fmt: skip


@dataclass(frozen=True)
class InferenceRequest:
    """What an answer must echo: the request's id."""

    id: str


def header_value(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name and isinstance(value, str):
            return value
    return None


def inference_request_of(row: Mapping[str, Any], headers: Mapping[str, Any]) -> InferenceRequest | None:
    """The v2 request this is (its id, when it can be read), or None: never raises, so
    that even a malformed v2 request gets a v2-shaped error answer (TorchServe's gRPC
    front end fails the worker on any other answer to one)."""
    body = row.get("body")
    if isinstance(body, dict) and isinstance(body.get("inputs"), list):
        return InferenceRequest(str(body.get("id", "")))
    if header_value(headers, HEADER_LENGTH) is not None and isinstance(body, (bytes, bytearray)):
        return InferenceRequest("")
    return None


def parse_inference_request(
    row: Mapping[str, Any], headers: Mapping[str, Any]
) -> tuple[bytes, dict[str, Any], InferenceRequest] | None:
    """(image bytes, parameters, request) of a v2 request; None for any other request."""
    body = row.get("body")
    length = header_value(headers, HEADER_LENGTH)
    binary = b""
    if length is not None and isinstance(body, (bytes, bytearray)):
        try:
            size = int(length)
            document, binary = json.loads(bytes(body[:size])), bytes(body[size:])
        except ValueError as err:
            raise InputError("invalid inference request", f"the JSON header does not parse: {err}") from err
    elif isinstance(body, dict) and isinstance(body.get("inputs"), list):
        document = body
    else:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise InputError("invalid inference request", "expected a JSON object with an 'inputs' list")
    image = image_input(document["inputs"], binary)
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InputError("invalid inference request", "'parameters' must be a JSON object")
    model_parameters = {name: value for name, value in parameters.items() if name not in PROTOCOL_PARAMETERS}
    return image, model_parameters, InferenceRequest(str(document.get("id", "")))


def image_input(inputs: list, binary: bytes) -> bytes:
    """The first BYTES input's one element: from its "data" (base64 or text) or, with the
    binary-data extension, from the tensor bytes (a 4-byte little-endian length, then the bytes)."""
    tensor = next((i for i in inputs if isinstance(i, dict) and i.get("datatype") == "BYTES"), None)
    if tensor is None:
        raise InputError("no image in request", "an inference request needs a BYTES input holding the image")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if len(binary) < 4 or len(binary) < size:
            raise InputError("invalid inference request", f"binary_data_size {size} but {len(binary)} bytes sent")
        (length,) = struct.unpack("<I", binary[:4])
        return binary[4 : 4 + length]
    data = tensor.get("data")
    while isinstance(data, list) and len(data) == 1:  # [b64] or [[b64]]
        data = data[0]
    if not isinstance(data, str) or not data:
        raise InputError(
            "no image in request",
            "the BYTES input holds no data (TorchServe's gRPC drops raw_input_contents: send bytes_contents)",
        )
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        return data.encode("latin-1", errors="replace")


def inference_answer(model: str, version: str, request: InferenceRequest, body: bytes, content_type: str) -> dict:
    """A v2 answer holding the handler's answer as one BYTES output."""
    if content_type == "application/json":  # an answer, or an error answer ("error" beside it)
        output = {"name": "answer", "datatype": "BYTES", "shape": [1], "data": [body.decode().strip()]}
    else:
        output = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(body).decode()],
                  "parameters": {"content_type": content_type, "encoding": "base64"}}  # fmt: skip
    return {"model_name": model, "model_version": version, "id": request.id, "outputs": [output]}
