"""Split one TorchServe request into image bytes and per-request parameters.

TorchServe hands a handler one dict per request. What is in it depends on how the
client sent the image:

- raw body (`curl -T img.jpg`, `--data-binary` with an image Content-Type):
  `{"body": bytearray}`
- multipart form (`curl -F data=@img.jpg -F top_k=3`): one key per form field
- JSON (`{"data": "<base64>", "top_k": 3}`, with any Content-Type): `{"body": bytearray}`,
  parsed here (`parse_json_body`) -- TorchServe's worker would parse an application/json
  body itself, keeping the last of a repeated key, unless TS_DECODE_INPUT_REQUEST is
  "false" (`RAW_JSON`), which the handler sets in its worker at load
- plain base64 text as the body: `{"body": bytearray}`
- query strings reach the handler only on TorchServe's `/invocations` and
  `/<model>/predict` routes (its `/predictions/<model>` route drops them);
- HTTP headers reach it on every route: `X-Top-K: 3` is the parameter `top_k`
  (`header_parameters`), the way to pass parameters with `curl -T`.

TorchServe keeps only the last of a repeated header, form field or query parameter
before a handler runs (its frontend stores them in a map); what a handler can see
repeated (a key twice in a JSON body, a parameter both in a header and in the body, in
X-Top-K and X-Top_K) is refused. The gateway (deploy/haproxy/gateway.cfg) refuses a
repeated X- parameter header.
"""

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from errors import InputError, listed, shown
from imaging import looks_like_image

# TorchServe's worker reads this variable per request: "false" hands JSON bodies over as
# bytes (ts/protocol/otf_message_handler.py), for `parse_json` to refuse repeated keys.
RAW_JSON = ("TS_DECODE_INPUT_REQUEST", "false")

# Where the image may be, in order of preference.
IMAGE_FIELDS = ("data", "body", "image", "file")
# Fields TorchServe itself uses for routing (`/invocations?model_name=...`).
ROUTING_FIELDS = frozenset({"model_name"})

_DATA_URI = re.compile(rb"^data:[\w/+.-]*;base64,")
_BASE64_TEXT = re.compile(rb"^[A-Za-z0-9+/=\s_-]+$")


def parse_json_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """The request's fields, with a body that is JSON (whatever its Content-Type says)
    parsed: InputError if it starts like JSON and does not parse."""
    body = row.get("body")
    if isinstance(body, str):
        body = body.encode("utf-8", errors="replace")
    if isinstance(body, (bytes, bytearray)) and body.lstrip()[:1] in (b"{", b"["):
        return {**row, "body": parse_json(body, "the body")}
    return dict(row)


def split_request(row: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Return (image bytes, parameters) of one request; raise InputError if no image."""
    fields = parse_json_body(row)
    if not fields:
        raise InputError("empty request", "the request has no body; send an image")
    body = fields.get("body")
    if isinstance(body, dict):  # a JSON object: its keys are the request's fields
        del fields["body"]
        fields.update(body)
    elif isinstance(body, list):
        raise InputError("invalid JSON request", 'expected a JSON object like {"data": "<base64 image>"}, got a list')
    for key in ROUTING_FIELDS:
        fields.pop(key, None)
    image_key = next((key for key in IMAGE_FIELDS if key in fields), None)
    if image_key is None:
        received = listed(sorted(fields)) or "none"
        raise InputError(
            "no image in request",
            "send the image as the request body, as a multipart field named 'data', "
            f'or as JSON {{"data": "<base64>"}}; fields received: {received}',
        )
    return image_bytes(fields.pop(image_key)), fields


def parse_json(text: bytes, what: str) -> Any:
    """JSON from a client: InputError if it does not parse, names a key twice in an
    object, or nests deeper than Python's parser goes."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InputError("invalid JSON request", f"{what} nests JSON too deeply") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise InputError("invalid JSON request", f"{what} starts like JSON but does not parse: {err}") from err


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that names a key twice is refused: which value would count is a guess."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise InputError("repeated parameter", f"{shown(key)} appears more than once in a JSON object")
        document[key] = value
    return document


def image_bytes(value: Any) -> bytes:
    """The image bytes of a field that holds either raw bytes or base64 text."""
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        if looks_like_image(data) or not _looks_like_base64(data):
            return data
        try:
            decoded = _decode_base64(data)
        except InputError:
            return data
        # Text that happens to be valid base64 but is no image stays as sent, so the
        # decoder's error quotes what the client actually sent.
        return decoded if looks_like_image(decoded) else data
    if isinstance(value, str):
        return _decode_base64(value.encode("ascii", errors="replace"))
    raise InputError("invalid image field", f"expected image bytes or a base64 string, got JSON {type(value).__name__}")


def _looks_like_base64(data: bytes) -> bool:
    head = data[:4096]
    return bool(_DATA_URI.match(head) or _BASE64_TEXT.match(head))


def _decode_base64(text: bytes) -> bytes:
    text = _DATA_URI.sub(b"", text.strip(), count=1)
    compact = re.sub(rb"\s+", b"", text)
    altchars = b"-_" if (b"-" in compact or b"_" in compact) else None
    try:
        return base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InputError("invalid base64", f"the image field is neither an image nor valid base64: {err}") from err


def header_parameters(headers: Mapping[str, Any], accepted: Collection[str]) -> dict[str, str]:
    """Per-request parameters sent as HTTP headers: `X-Top-K: 3` or `X-Top_K: 3` -> top_k.
    Only headers that name an accepted parameter count: proxies add X- headers of their
    own (X-Forwarded-For, X-Request-Id) that must not make a request fail. Values that
    are not text are TorchServe's per-field entries, not HTTP headers."""
    params: dict[str, str] = {}
    for header, value in headers.items():
        name = header.lower()
        if not (isinstance(value, str) and name.startswith("x-")):
            continue
        param = name[2:].replace("-", "_")
        if param in accepted:
            if param in params:
                raise InputError("repeated parameter", f"{param} is given by more than one X- header")
            params[param] = value
    return params


def merge_parameters(body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """The body's parameters and the headers' together; a parameter in both is refused."""
    both = sorted(set(body) & set(headers))
    if both:
        raise InputError(
            "repeated parameter", f"{', '.join(both)} given both in an X- header and in the body; send it once"
        )
    return {**body, **headers}
