"""Split one TorchServe request into image bytes and per-request parameters.

TorchServe hands a handler one dict per request. What is in it depends on how the
client sent the image:

- raw body (`curl -T img.jpg`, `--data-binary` with an image Content-Type):
  `{"body": bytearray}`
- multipart form (`curl -F data=@img.jpg -F top_k=3`): one key per form field
- JSON (`{"data": "<base64>", "top_k": 3}` with Content-Type application/json):
  `{"body": dict}`, already parsed by TorchServe
- plain base64 text as the body: `{"body": bytearray or str}`
- query strings reach the handler only on TorchServe's `/invocations` and
  `/<model>/predict` routes (its `/predictions/<model>` route drops them);
- HTTP headers reach it on every route: `X-Top-K: 3` is the parameter `top_k`
  (`header_parameters`), the way to pass parameters with `curl -T`.

TorchServe keeps only the last of a repeated form field or query parameter before a
handler runs; what a handler can see repeated (a key twice in a JSON body it parses, a
parameter both in a header and in the body) is refused.
"""

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from imaging import InputError, looks_like_image
from settings import shown

# Where the image may be, in order of preference.
IMAGE_FIELDS = ("data", "body", "image", "file")
# Fields TorchServe itself uses for routing (`/invocations?model_name=...`).
ROUTING_FIELDS = frozenset({"model_name"})

_DATA_URI = re.compile(rb"^data:[\w/+.-]*;base64,")
_BASE64_TEXT = re.compile(rb"^[A-Za-z0-9+/=\s_-]+$")


def split_request(row: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Return (image bytes, parameters) of one request; raise InputError if no image."""
    fields = dict(row)
    if not fields:
        raise InputError("empty request", "the request has no body; send an image")
    body = fields.get("body")
    if isinstance(body, (bytes, bytearray)) and body.lstrip()[:1] in (b"{", b"["):
        body = _parse_json(body)  # JSON sent without Content-Type: application/json
    if isinstance(body, dict):  # a JSON object: its keys are the request's fields
        del fields["body"]
        fields.update(body)
    elif isinstance(body, list):
        raise InputError("invalid JSON request", 'expected a JSON object like {"data": "<base64 image>"}, got a list')
    for key in ROUTING_FIELDS:
        fields.pop(key, None)
    image_key = next((key for key in IMAGE_FIELDS if key in fields), None)
    if image_key is None:
        received = ", ".join(sorted(fields)) or "none"
        raise InputError(
            "no image in request",
            "send the image as the request body, as a multipart field named 'data', "
            f'or as JSON {{"data": "<base64>"}}; fields received: {received}',
        )
    return image_bytes(fields.pop(image_key)), fields


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InputError("invalid JSON request", f"the body starts like JSON but does not parse: {err}") from err


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that names a key twice is refused: which value would count is a guess.
    (A body sent as application/json is parsed by TorchServe, which keeps the last.)"""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise InputError("repeated parameter", f"{shown(key)} appears more than once in the JSON body")
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
