"""The protocol edge: each TorchServe request parsed once into one `Request` (image bytes,
parameters, protocol, id), and each result rendered once into the bytes, content type,
status and headers TorchServe sends (plain JSON or JPEG, or an Open Inference Protocol
answer; errors; size limits).

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
repeated X- parameter header. An Open Inference Protocol (v2) request's document is read
by open_inference.py.
"""

import base64
import binascii
import http
import json
import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .engine import Answer, Failure, Result
from .errors import InputError, listed, public_detail, shown
from .imaging import looks_like_image
from .open_inference import answer_document, echoed_id, header_size, read_document
from .vision_ops import JPEG_MAX_SIDE, encode_jpegs

logger = logging.getLogger(__name__)

PLAIN, V2 = "plain", "v2"  # a request's protocol: answered as it asked
# A v2 request with the binary-data extension: its JSON header's length (then the tensors' bytes).
HEADER_LENGTH = "inference-header-content-length"
# An answer header's value, at most: far below the 64 KiB line that HTTP clients accept.
MAX_HEADER_CHARS = 8192
# How an Open Inference Protocol answer carries the handler's (a JPEG in base64 is 4/3 larger).
V2_FORM = "Open Inference Protocol (a BYTES tensor, an image in base64)"


@dataclass(frozen=True)
class Request:
    """One TorchServe request, parsed: what the engine serves and the edge answers."""

    data: bytes = b""  # the image's bytes
    params: dict[str, Any] = field(default_factory=dict)  # per-request parameters, as sent
    protocol: str = PLAIN  # PLAIN or V2: the shape of its answer
    id: str = ""  # a v2 request's id, echoed
    refused: Failure | None = None  # why it cannot be served (answered in its protocol's shape)


def read_request(row: Mapping[str, Any], headers: Mapping[str, Any], accepted: Collection[str]) -> Request:
    """`parse_request`, never raising: a request that cannot be read is refused, in the
    shape of its protocol (TorchServe's gRPC front end fails the worker on any other
    answer to a v2 request)."""
    try:
        return parse_request(row, headers, accepted)
    except InputError as err:
        return Request(**_protocol_of(row, headers), refused=Failure.of(err))
    except Exception:  # a bug must fail this request alone
        logger.exception("reading a request failed")
        return Request(
            **_protocol_of(row, headers), refused=Failure(500, "internal error", "reading the request failed")
        )


def parse_request(row: Mapping[str, Any], headers: Mapping[str, Any], accepted: Collection[str]) -> Request:
    """One request's image, parameters (from its body, form or query, and its X- headers
    naming an `accepted` parameter), protocol and id; InputError if it cannot be read."""
    body = row.get("body")
    length = header_value(headers, HEADER_LENGTH)
    if length is not None and isinstance(body, (bytes, bytearray)):  # v2 with the binary-data extension
        size = header_size(length, len(body))
        document = parse_json(bytes(body[:size]), "the inference request's JSON header")
        data, params, request_id = read_document(document, bytes(body[size:]))
        protocol = V2
    else:
        fields = parse_json_body(row)
        if is_inference_document(fields.get("body")):
            (data, params, request_id), protocol = read_document(fields["body"]), V2
        else:
            (data, params), request_id, protocol = split_fields(fields), "", PLAIN
    params = merge_parameters(params, header_parameters(headers, accepted))
    return Request(data, params, protocol, request_id)


def _protocol_of(row: Mapping[str, Any], headers: Mapping[str, Any]) -> dict[str, str]:
    """The protocol (and id) of a request that could not be read, from what can be."""
    body = row.get("body")
    if header_value(headers, HEADER_LENGTH) is not None and isinstance(body, (bytes, bytearray)):
        return {"protocol": V2}
    try:
        body = parse_json_body(row).get("body")
    except InputError:
        return {"protocol": PLAIN}
    return {"protocol": V2, "id": echoed_id(body.get("id"))} if is_inference_document(body) else {"protocol": PLAIN}


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


def split_fields(fields: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """A request's fields (its JSON body parsed) -> (image bytes, parameters); InputError
    if there is no image."""
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


def header_value(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name and isinstance(value, str):
            return value
    return None


def is_inference_document(body: Any) -> bool:
    """Whether a JSON body is a v2 request (an object with "inputs")."""
    return isinstance(body, dict) and "inputs" in body


# --- answers ----------------------------------------------------------------------


@dataclass(frozen=True)
class About:
    """What every answer of a model says of it, and how its answers are rendered."""

    model: str
    version: str  # the archive's model version (a v2 answer's model_version)
    provenance: dict[str, str]  # the weights' name and sha256
    max_response_bytes: int  # an answer's size, at most (its body and headers, as sent)
    jpeg_encoder: str = "device"  # where a GPU's image answers are encoded (settings.JPEG_ENCODERS)


@dataclass(frozen=True)
class Response:
    """One request's answer as TorchServe sends it."""

    body: bytes
    content_type: str = "application/json"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    error: str = ""  # an error answer's kind ("corrupt image"), for the request metrics
    detail: str = ""  # an error answer's detail

    @classmethod
    def json(cls, document: Any, status: int = 200) -> "Response":
        return cls((json.dumps(document, separators=(",", ":")) + "\n").encode(), "application/json", status)

    @classmethod
    def failure(cls, status: int, error: str, detail: str) -> "Response":
        """An error answer: its kind, what went wrong (without a path, an address or a
        traceback, and short), and its HTTP status (also in the body: TorchServe's gRPC API
        carries the body but not the status)."""
        detail = public_detail(detail)
        document = {"error": error, "detail": detail, "status": status}
        return replace(cls.json(document, status=status), error=error, detail=detail)

    @property
    def size(self) -> int:
        """Bytes TorchServe gets for this answer, besides its framing."""
        return len(self.body) + len(self.content_type) + sum(len(n) + len(v) for n, v in self.headers)


def render(results: list[Result], requests: list[Request], about: About, headers=()) -> list[Response]:
    """Each result as its request's answer, once: image answers JPEG-encoded together
    (`jpegs_of`), JSON answers with the model and its weights, every answer with
    `headers`, within the size limit, in the request's protocol."""
    jpegs = jpegs_of(results, about.jpeg_encoder)
    responses = []
    for index, (result, request) in enumerate(zip(results, requests, strict=True)):
        result = jpegs.get(index, result)
        if isinstance(result, Failure):
            response = Response.failure(result.status, result.error, result.detail)
        elif isinstance(result, bytes):
            answer = results[index]
            applied = ("X-Parameters", json.dumps(answer.parameters, separators=(",", ":")))
            response = Response(result, "image/jpeg", headers=(*answer.headers, applied))
        else:
            provenance = result.provenance or about.provenance  # the network that ran, where a model has several
            document = {"model": about.model, **provenance, **result.fields, "parameters": result.parameters}
            response = Response.json(document)
        response = replace(response, headers=(*response.headers, *headers))
        responses.append(in_protocol(response, request, about))
    return responses


def in_protocol(response: Response, request: Request, about: About) -> Response:
    """The response in the request's protocol, within the size limit: too large, a 413
    that says why (in that protocol's shape too)."""
    if request.protocol != V2:
        return fitted(response, about.max_response_bytes)
    error = f"{response.error}: {response.detail}" if response.status != 200 else ""
    document = answer_document(about.model, about.version, request.id, response.body, response.content_type, error)
    answer = replace(
        response, body=json.dumps(document, separators=(",", ":")).encode(), content_type="application/json"
    )
    fitting = fitted(answer, about.max_response_bytes, V2_FORM)
    return answer if fitting is answer else in_protocol(fitting, request, about)


def fitted(response: Response, limit: int, form: str = "") -> Response:
    """`response` if it fits in `limit` bytes and each header in MAX_HEADER_CHARS, else a
    413 that says why. TorchServe's frontend closes a worker's channel on an answer above
    its max_response_size (the client gets "Worker died.", the batch fails, the worker
    restarts), and HTTP clients refuse a header line above 64 KiB (Python's http.client)."""
    long_header = next(((name, value) for name, value in response.headers if len(value) > MAX_HEADER_CHARS), None)
    if long_header is not None:
        name, value = long_header
        detail = f"its {name} header would be {len(value)} characters, over the limit of {MAX_HEADER_CHARS}"
    elif response.size > limit:
        detail = f"the {form or response.content_type} answer would be {response.size} bytes, over the limit of {limit}"
    else:
        return response
    hint = "send a smaller image, or ask for format=json or for fewer results"
    return Response.failure(413, "result too large", f"{detail} (max_response_bytes); {hint}")


def jpegs_of(results: list[Result], encoder: str = "device") -> dict[int, bytes | Failure]:
    """The image answers among `results` by index, JPEG-encoded:
    those of one quality on one device in one call (`vision_ops.encode_jpegs`, on a GPU by
    `encoder`). If the call fails, each image is encoded alone, so that only an image that
    cannot be encoded fails; one no JPEG can hold fails before the call."""
    pending: dict[tuple[int, str], list[int]] = {}
    done: dict[int, bytes | Failure] = {}
    for index, result in enumerate(results):
        if not isinstance(result, Answer) or result.image is None:
            continue
        height, width = result.image.shape[-2:]
        if max(height, width) > JPEG_MAX_SIDE:
            detail = (f"the answer would be a {width}x{height} JPEG, and a JPEG holds at most {JPEG_MAX_SIDE} pixels "
                      "a side; ask for format=json")  # fmt: skip
            done[index] = Failure(413, "image answer too large", detail)
        else:
            pending.setdefault((result.jpeg_quality, result.image.device.type), []).append(index)
    for (quality, _device), indices in pending.items():
        try:
            datas = encode_jpegs([results[index].image for index in indices], quality, encoder)
        except Exception:
            if len(indices) == 1:
                logger.exception("JPEG encoding failed for request %d", indices[0])
                done[indices[0]] = Failure(500, "internal error", "encoding the answer image failed")
                continue
            logger.exception("batched JPEG encoding failed; encoding its %d images one by one", len(indices))
            done.update({index: jpegs_of([results[index]], encoder)[0] for index in indices})
            continue
        for index, data in zip(indices, datas, strict=True):
            done[index] = data.numpy().tobytes()
    return done


def respond(responses: list[Response], context) -> list[bytes]:
    """The bodies TorchServe sends, each request's status, content type and headers set
    on the context."""
    for index, response in enumerate(responses):
        context.set_response_content_type(index, response.content_type)
        for name, value in response.headers:
            context.set_response_header(index, name, value)
        if response.status != 200:
            context.set_response_status(response.status, http.HTTPStatus(response.status).phrase, index)
    return [response.body for response in responses]


def is_describe_call(data: list[dict], context) -> bool:
    """Whether this is TorchServe's describe call (GET /models/<name>?customized=true on the
    management API): a batch of one request with no input at all, marked by the frontend
    with the header `describe: True`. A client can send that header on a prediction too
    (the frontend passes every request header on), but a prediction always carries its
    body or form fields: it is never taken for the describe call."""
    return len(data) == 1 and not data[0] and request_headers(context, 0).get("describe") == "True"


def request_headers(context, index: int) -> dict[str, Any]:  # values: str, or TorchServe's per-field dicts
    """Request `index`'s HTTP headers as TorchServe hands them over (none from a context
    without them)."""
    get_all = getattr(context, "get_all_request_header", None)
    try:
        return dict(get_all(index) or {}) if get_all else {}
    except (IndexError, KeyError, AttributeError, TypeError) as err:
        logger.warning("request %d: no request headers from the context (%r); X- parameters ignored", index, err)
        return {}
