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
The edge (edge.py) reads the body and its JSON; these functions read the document.
"""

import base64
import re
import struct
from typing import Any

from .errors import InputError, shown

# Request parameters the protocol (and its clients, e.g. tritonclient's "binary_data_output")
# use for themselves: not the model's parameters.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "binary_data", "binary_data_size", "priority", "timeout", "sequence_id", "sequence_start",
     "sequence_end", "headers"}
)  # fmt: skip


_BYTE_COUNT = re.compile(r"\s*[0-9]{1,12}\s*")  # ASCII digits: str.isdigit() takes "²", which int() refuses
# An id is echoed in the answer: a longer one is refused rather than sent back.
MAX_ID_CHARS = 256


def echoed_id(value: Any) -> str:
    """A request's id as the answer may echo it: "" unless it is a string of at most MAX_ID_CHARS."""
    return value if isinstance(value, str) and len(value) <= MAX_ID_CHARS else ""


def read_document(document: Any, binary: bytes = b"") -> tuple[bytes, dict[str, Any], str]:
    """(image bytes, the model's parameters, the id to echo) of a v2 request's JSON
    document (and, with the binary-data extension, the tensor bytes after its header).
    Whatever the document holds, one that cannot be read raises InputError."""
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise InputError("invalid inference request", "expected a JSON object with an 'inputs' list")
    request_id = document.get("id")
    request_id = "" if request_id is None else request_id
    if not isinstance(request_id, str) or len(request_id) > MAX_ID_CHARS:
        raise InputError("invalid inference request", f"'id' must be a string of at most {MAX_ID_CHARS} characters")
    image = image_input(document["inputs"], binary)
    parameters = document.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise InputError(
            "invalid inference request", f"'parameters' must be a JSON object, got {json_type(parameters)}"
        )
    model_parameters = {name: value for name, value in parameters.items() if name not in PROTOCOL_PARAMETERS}
    return image, model_parameters, request_id


def header_size(length: str, body_size: int) -> int:
    """The Inference-Header-Content-Length header's value, checked against the body."""
    if not _BYTE_COUNT.fullmatch(length) or int(length) > body_size:
        raise InputError(
            "invalid inference request",
            f"Inference-Header-Content-Length must be a byte count of at most the body's {body_size} bytes",
        )
    return int(length)


def json_type(value: Any) -> str:
    """A JSON value's type, as a client would name it."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def image_input(inputs: list, binary: bytes) -> bytes:
    """The first BYTES input's one element: from its "data" (base64 or text) or, with the
    binary-data extension, from the tensor bytes (each input's binary_data_size bytes in
    order; a BYTES element is a 4-byte little-endian length, then the bytes)."""
    offset = 0
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise InputError("invalid inference request", f"each input must be a JSON object, got {json_type(tensor)}")
        size = binary_data_size(tensor)
        if size is not None and offset + size > len(binary):
            raise InputError(
                "invalid inference request",
                f"the inputs' binary_data_size add up to more than the {len(binary)} bytes sent",
            )
        if tensor.get("datatype") == "BYTES":
            return bytes_element(binary[offset : offset + size]) if size is not None else data_element(tensor)
        offset += size or 0
    raise InputError("no image in request", "an inference request needs a BYTES input holding the image")


def binary_data_size(tensor: dict) -> int | None:
    """An input's binary_data_size parameter (None: its data is in the JSON)."""
    parameters = tensor.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise InputError("invalid inference request", f"an input's 'parameters' must be a JSON object, got "
                         f"{json_type(parameters)}")  # fmt: skip
    size = parameters.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InputError("invalid inference request", f"binary_data_size must be a byte count, got {shown(size)}")
    return size


def bytes_element(data: bytes) -> bytes:
    """A BYTES tensor's first element in the binary-data extension's layout."""
    if len(data) < 4:
        raise InputError("invalid inference request", f"the BYTES input's binary data is {len(data)} bytes: too short")
    (length,) = struct.unpack("<I", data[:4])
    if length > len(data) - 4:
        raise InputError(
            "invalid inference request",
            f"the BYTES element claims {length} bytes, the binary data holds {len(data) - 4}",
        )
    return data[4 : 4 + length]


def data_element(tensor: dict) -> bytes:
    """A BYTES tensor's first element from its JSON "data": base64, else the text's bytes."""
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


def answer_document(model: str, version: str, request_id: str, body: bytes, content_type: str,
                    error: str = "") -> dict:  # fmt: skip
    """A v2 answer holding the handler's answer (JSON text, or an image) as one BYTES
    output; an error answer has the protocol's "error" message beside it."""
    if content_type == "application/json":
        output = {"name": "answer", "datatype": "BYTES", "shape": [1], "data": [body.decode().strip()]}
    else:
        output = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(body).decode()],
                  "parameters": {"content_type": content_type, "encoding": "base64"}}  # fmt: skip
    document = {"model_name": model, "model_version": version, "id": request_id, "outputs": [output]}
    return {"error": error, **document} if error else document
