"""The batched image handler every model shares.

A batch flows: per request decode (a failure answers that request alone with a 4xx)
-> per image `prepare` to a fixed size -> one stacked tensor -> one forward pass under
`torch.inference_mode()` -> per request `postprocess`. TorchServe gets exactly one
response per request, in order, each with its own status and content type.

A task subclass sets `settings_class`, `request_params` and `task`, and implements
`prepare` and `postprocess` (and `setup` if it needs data files). `summarise` may do the
batch's post-processing at once where the outputs are (on the GPU: top-k, NMS), ending
in one copy to the host; `postprocess` then builds each answer. Image answers are
JPEG-encoded together at the end of the batch (on the GPU, where the images are). The
images decoded on the CPU reach the GPU in one copy. The compiled model
takes the stacked uint8 images as they are: it normalises them itself, in its graph.
It answers the task's outputs and then each image's feature vector, which the live
drift test reads (drift_monitor.py) off the request path.
"""

import http
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from compiled_model import load_compiled_model, select_device
from cpu_threads import ThreadBudget, thread_budget
from drift_monitor import REFERENCE_FILE, DriftMonitor, DriftReport, load_reference
from errors import InputError, public_detail
from idle_memory import idle_trimmer
from imaging import (
    JPEG_FORMATS,
    ImageInfo,
    LetterboxGeometry,
    check_image,
    decode_checked,
    decode_image_at_least,
    decode_jpegs,
)
from inference_protocol import (
    InferenceRequest,
    inference_answer,
    inference_request_of,
    parse_inference_request,
    read_body,
)
from metrics import (
    BATCH_IMAGES,
    DECODE,
    DRIFT_P_VALUE,
    DRIFT_SCORE,
    DRIFT_TESTS,
    FORWARD,
    POSTPROCESS,
    PREPROCESS,
    REQUESTS,
    STAGE_SECONDS,
    emit,
    error_kind,
    status_class,
)
from payload import RAW_JSON, header_parameters, merge_parameters, split_request
from settings import ImageHandlerSettings, settings_from_mapping, with_overrides
from vision_ops import JPEG_MAX_SIDE, encode_jpegs, to_device

logger = logging.getLogger(__name__)
T = TypeVar("T")

# What every compiled model takes (scripts/building/compile.py): the prepared images as they are.
INPUT_FORMAT = "uint8 RGB [B, 3, H, W]"
# What every compiled model answers: a tuple of the task's outputs, then the features.
OUTPUT_FORMAT = "(*task outputs, features float32 [B, D])"
# How an Open Inference Protocol answer carries the handler's (a JPEG in base64 is 4/3 larger).
V2_FORM = "Open Inference Protocol (a BYTES tensor, an image in base64)"
# An answer header's value, at most: far below the 64 KiB line that HTTP clients accept.
MAX_HEADER_CHARS = 8192


@dataclass(frozen=True)
class Response:
    """One request's answer: body, content type and HTTP status."""

    body: bytes
    content_type: str = "application/json"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()  # extra HTTP response headers
    error: str = ""  # an error answer's kind ("corrupt image"), for the request metrics
    image: torch.Tensor | None = None  # an image answer's uint8 [3, H, W], until encoded (`with_jpegs_encoded`)
    jpeg_quality: int = 0

    @classmethod
    def json(cls, document: Any, status: int = 200) -> "Response":
        return cls((json.dumps(document, separators=(",", ":")) + "\n").encode(), "application/json", status)

    @classmethod
    def failure(cls, status: int, error: str, detail: str) -> "Response":
        """An error answer: its kind, what went wrong (without a path, an address or a
        traceback, and short), and its HTTP status (also in the body: TorchServe's gRPC API
        carries the body but not the status)."""
        document = {"error": error, "detail": public_detail(detail), "status": status}
        return replace(cls.json(document, status=status), error=error)

    @classmethod
    def jpeg(cls, image: torch.Tensor, quality: int, headers=()) -> "Response":
        """uint8 [3, H, W] (any device) as a JPEG answer, encoded with the batch's others
        by `with_jpegs_encoded`."""
        return cls(b"", "image/jpeg", headers=tuple(headers), image=image, jpeg_quality=quality)

    @property
    def size(self) -> int:
        """Bytes TorchServe gets for this answer, besides its framing."""
        return len(self.body) + len(self.content_type) + sum(len(n) + len(v) for n, v in self.headers)


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


def with_jpegs_encoded(responses: list[Response]) -> list[Response]:
    """The responses with every image answer JPEG-encoded: those of one quality in one
    call, on their device (`vision_ops.encode_jpegs`). If the call fails, each image is
    encoded alone, so that only an image that cannot be encoded fails."""
    pending: dict[tuple[int, str], list[int]] = {}
    done = list(responses)
    for index, response in enumerate(responses):
        if response.image is not None and max(response.image.shape[-2:]) > JPEG_MAX_SIDE:
            height, width = response.image.shape[-2:]
            detail = (f"the answer would be a {width}x{height} JPEG, and a JPEG holds at most {JPEG_MAX_SIDE} pixels "
                      "a side; ask for format=json")  # fmt: skip
            done[index] = Response.failure(413, "image answer too large", detail)
        elif response.image is not None:
            pending.setdefault((response.jpeg_quality, response.image.device.type), []).append(index)
    for (quality, _device), indices in pending.items():
        try:
            datas = encode_jpegs([responses[index].image for index in indices], quality)
        except Exception:
            if len(indices) == 1:
                logger.exception("JPEG encoding failed for request %d", indices[0])
                done[indices[0]] = Response.failure(500, "internal error", "encoding the answer image failed")
                continue
            logger.exception("batched JPEG encoding failed; encoding its %d images one by one", len(indices))
            for index in indices:
                done[index] = with_jpegs_encoded([responses[index]])[0]
            continue
        for index, data in zip(indices, datas, strict=True):
            done[index] = replace(responses[index], body=data.numpy().tobytes(), image=None)
    return done


# One image's slice of a model output: a tensor, or a tuple of them (RetinaFace's three heads).
Output = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ReadRequest:
    """A request that was read and whose image header passed the checks (once), not yet decoded."""

    index: int
    data: bytes
    settings: ImageHandlerSettings  # the task's settings class, with this request's overrides
    info: ImageInfo
    inference_request: InferenceRequest | None = None  # an Open Inference Protocol request's


@dataclass
class Item:
    """One decoded request travelling through the batch."""

    index: int  # position in TorchServe's batch
    image: torch.Tensor  # uint8 [3, H, W] RGB at original size, on the model's device
    settings: ImageHandlerSettings  # the task's settings class, with this request's overrides
    original_size: tuple[int, int] = (0, 0)  # (width, height) of the photo as sent, EXIF applied
    input: torch.Tensor | None = None  # `prepare`'s fixed-size uint8 [3, h, w]
    geometry: LetterboxGeometry | None = None  # how the photo maps into `input` (letterbox), for `postprocess`
    observations: list[tuple[str, float]] = field(default_factory=list)  # what `postprocess` saw (metrics)


class BatchedImageHandler:
    settings_class: type = ImageHandlerSettings
    request_params: dict[str, str] = {}  # request parameter -> the setting it overrides
    parameter_choices: dict[str, tuple[str, ...]] = {}  # request parameter -> the values it takes
    task: str = ""  # the compiled model's metadata["task"] this handler serves

    # --- TorchServe entry points -------------------------------------------------

    def initialize(self, context) -> None:
        # JSON bodies reach the handler unparsed, to be parsed strictly (payload.RAW_JSON):
        # this worker process serves this handler alone.
        os.environ[RAW_JSON[0]] = RAW_JSON[1]
        yaml_config = context.model_yaml_config or {}
        self.model_name = context.model_name
        self.settings = settings_from_mapping(self.settings_class, yaml_config.get("handler"))
        self.device = select_device(context.system_properties.get("gpu_id"))
        self.batch_size = int(context.system_properties.get("batch_size") or 1)
        # CPU threads follow the workers alive on the machine (cpu_threads.ThreadBudget).
        self.threads: ThreadBudget | None = None
        if self.device.type == "cpu":
            self.threads = thread_budget(self.settings.num_threads)
        model_dir = Path(context.system_properties["model_dir"])
        model_file = model_dir / context.manifest["model"]["serializedFile"]
        self.model, self.metadata = load_compiled_model(model_file, self.device, self.settings.optimize)
        if self.metadata.get("task") != self.task:
            raise ValueError(f"{model_file.name} is a {self.metadata.get('task')!r} model, not {self.task!r}")
        if self.metadata.get("input_format") != INPUT_FORMAT or self.metadata.get("output_format") != OUTPUT_FORMAT:
            raise ValueError(
                f"{model_file.name} does not take {INPUT_FORMAT} batches and answer {OUTPUT_FORMAT}: "
                "rebuild it with `make archive`"
            )
        weights = self.metadata["weights"]
        self.provenance = {"weights": weights["name"], "weights_sha256": weights["sha256"]}
        self.setup(model_dir)
        self.memory = idle_trimmer(self.settings.release_memory_after_s)
        if self.settings.warmup:
            self.warmup()
        self.memory.batch_ended()  # loading and warming up freed memory too
        self.drift = self.start_drift_monitor(model_dir, context) if self.settings.drift else None
        logger.info(
            "%s ready on %s (%s threads), weights: %s",
            self.model_name,
            self.device,
            self.threads.threads if self.threads else "n/a",
            self.metadata["weights"]["name"],
        )

    def handle(self, data: list[dict], context) -> list[bytes]:
        if is_describe_call(data, context):
            return [json.dumps(self.describe(), separators=(",", ":")).encode()]
        self.memory.batch_started()
        try:
            return self._handle(data, context)
        finally:
            self.memory.batch_ended()

    def _handle(self, data: list[dict], context) -> list[bytes]:
        if self.threads is not None:
            self.threads.before_batch()
        with torch.inference_mode():
            # results[i] is request i's Item while it is in flight, then its Response.
            with self._timed(context, DECODE):
                results, inference_requests = self._decode_batch(data, context)
            with self._timed(context, PREPROCESS):
                results = [self._guarded(r.index, self._prepare, r) if isinstance(r, Item) else r for r in results]
            results = self._to_device(results)
            items = [result for result in results if isinstance(result, Item)]
            if items:
                groups = self._forward(items, context)
                with self._timed(context, POSTPROCESS):
                    for group, outputs in groups:
                        for item, result in zip(group, self._postprocess_group(group, outputs), strict=True):
                            results[item.index] = result
                    results = with_jpegs_encoded(results)
                for item in items:
                    for name, value in item.observations:
                        self._emit(context, name, value)
        if self.settings.batch_size_header:
            header = ("X-Batch-Size", str(len(data)))
            results = [replace(response, headers=(*response.headers, header)) for response in results]
        limit = self.settings.max_response_bytes
        results = [fitted(response, limit) for response in results]
        for index, request in inference_requests.items():
            answer = self._inference_answer(request, results[index], context)
            fitting = fitted(answer, limit, V2_FORM)  # an answer too large is refused in the protocol's shape too
            results[index] = answer if fitting is answer else self._inference_answer(request, fitting, context)
        return self._respond(results, context)

    def _inference_answer(self, request: InferenceRequest, response: Response, context) -> Response:
        """An Open Inference Protocol request's answer: the response as a v2 output tensor;
        an error keeps its status, with the protocol's "error" message beside the tensor."""
        version = str(context.manifest.get("model", {}).get("modelVersion", "1"))
        document = inference_answer(self.model_name, version, request, response.body, response.content_type)
        if response.status != 200:
            failure = json.loads(response.body)
            document = {"error": f"{failure['error']}: {failure['detail']}", **document}
        return replace(
            response, body=json.dumps(document, separators=(",", ":")).encode(), content_type="application/json"
        )

    # --- for the task subclasses ---------------------------------------------------

    @staticmethod
    def observe(item: "Item", metric: str, value: float) -> None:
        """Record what this request's answer says (a score, a count) for the metrics."""
        item.observations.append((metric, value))

    def answer(self, item: "Item", **fields: Any) -> Response:
        """A JSON answer: the model's name and the provenance of its weights, then `fields`,
        then the per-request parameters this answer was computed with."""
        document = {"model": self.model_name, **self.provenance, **fields}
        return Response.json({**document, "parameters": self.applied_parameters(item.settings)})

    def image_answer(self, item: "Item", image: torch.Tensor, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        """A JPEG answer; its X-Parameters header says what `answer` puts in "parameters"."""
        settings = item.settings
        applied = json.dumps(self.applied_parameters(settings), separators=(",", ":"))
        headers = (*headers, ("X-Parameters", applied))
        return Response.jpeg(image, settings.jpeg_quality, headers)

    def describe(self) -> dict[str, Any]:
        """What a client (the web page) needs to know of this model: its task, its weights
        (and whether they are random), the largest image it takes, and each per-request
        parameter with its default (and its values, where they are a choice)."""
        weights = self.metadata["weights"]
        return {
            "model": self.model_name,
            "task": self.task,
            **self.provenance,
            "random_weights": weights["name"] == "random",
            "max_image_bytes": self.settings.max_image_bytes,
            "max_image_pixels": self.settings.max_image_pixels,
            "parameters": self.applied_parameters(self.resolve(self.settings)),
            "choices": {param: list(values) for param, values in self.parameter_choices.items()},
        }

    def applied_parameters(self, settings: ImageHandlerSettings) -> dict[str, Any]:
        """Every per-request parameter's value for this request: its own, else the default.
        Lets a client see that a parameter it sent was (or was not) taken."""
        values = {param: getattr(settings, field) for param, field in self.request_params.items()}
        return {param: list(value) if isinstance(value, tuple) else value for param, value in values.items()}

    def letterbox_size(self, configured: int) -> int:
        """The configured letterbox size, or the model's own; a multiple of its stride."""
        size, stride = configured or self.metadata["input_size"][0], self.metadata["stride"]
        if size % stride:
            raise ValueError(f"input_size {size} is not a multiple of the model's stride {stride}")
        return size

    # --- live input drift -----------------------------------------------------------

    def start_drift_monitor(self, model_dir: Path, context) -> DriftMonitor:
        """The worker's drift monitor, with the archive's reference sample if it holds one."""
        reference = None
        if (model_dir / REFERENCE_FILE).is_file():
            weights = self.metadata["weights"]["sha256"]
            reference = load_reference(model_dir / REFERENCE_FILE, self.metadata["feature_size"], weights)
        settings = self.settings.drift_settings
        logger.info(
            "%s drift test every %d images, window %d, reference: %s",
            self.model_name,
            settings.every,
            settings.window,
            f"{len(reference)} images from the archive" if reference is not None else
            f"the first {settings.reference_size} images served",
        )  # fmt: skip
        return DriftMonitor(settings, lambda report: self._publish_drift(context, report), reference)

    def _publish_drift(self, context, report: DriftReport) -> None:
        """A drift test's result as metrics, and a warning when it finds drift (a background thread)."""
        result = report.result
        self._emit(context, DRIFT_SCORE, result.score)
        self._emit(context, DRIFT_P_VALUE, result.p_value)
        self._emit(context, DRIFT_TESTS, 1, outcome="drift" if report.drifted else "no_drift")
        (logger.warning if report.drifted else logger.info)(
            "%s: %s: MMD^2 %.4g, p-value %.4g (threshold %g), the last %d images vs a reference of %d",
            self.model_name,
            "INPUT DRIFT" if report.drifted else "no input drift",
            result.score,
            result.p_value,
            self.settings.drift_threshold,
            report.window,
            report.reference,
        )

    def _observe_drift(self, features: torch.Tensor) -> None:
        if self.drift is None:
            return
        try:
            self.drift.add(features)
        except Exception:  # the drift test is an observer: it must never fail a request
            logger.exception("drift monitor: could not add a batch's features")

    # --- task hooks --------------------------------------------------------------

    def setup(self, model_dir: Path) -> None:
        """Read data files and check metadata, after the model is loaded."""

    def resolve(self, settings: ImageHandlerSettings) -> ImageHandlerSettings:
        """A request's settings, checked against the model and completed, before any
        inference runs: raise InputError for a value the model cannot take."""
        return settings

    def decode_at_least(self, settings: ImageHandlerSettings) -> tuple[int, str] | None:
        """(size, "cover" | "contain") when the task only needs the image at that size:
        large JPEGs are then decoded at a reduced scale. None: decode at full size."""
        return None

    def prepare(self, item: Item) -> tuple[torch.Tensor, LetterboxGeometry | None]:
        """item.image uint8 [3, H, W] -> (uint8 [3, h, w] of the model's input size, its geometry)."""
        raise NotImplementedError

    def summarise(self, outputs: Output, items: list[Item]) -> list[Any]:
        """A forward pass's outputs (batched, on the model's device) -> what `postprocess`
        takes for each item, in order. By default each image's slice of the outputs; a task
        does its batch-wide work here (top-k, NMS) and copies the results to the host once."""
        return list(unbatch(outputs, len(items)))

    def postprocess(self, summary: Any, item: Item) -> Response:
        """One item's `summarise` result -> that request's response."""
        raise NotImplementedError

    def warmup(self) -> None:
        """Run a dummy image through the model so that lazy initialisation (and
        TorchScript's profiling runs) happen at load time, not on a client's request."""
        image = torch.full((3, 480, 640), 114, dtype=torch.uint8, device=self.device)
        item = Item(0, image, self.resolve(self.settings), (640, 480))
        # TorchScript specialises on each batch shape (and cuDNN picks its kernels per shape):
        # on a GPU, where batches of any size up to batch_size form under load, every size is
        # run at load, so that no request meets a first-time shape; on the CPU, the two ends.
        sizes = range(1, self.batch_size + 1) if self.device.type == "cuda" else sorted({1, self.batch_size})
        with torch.inference_mode():
            prepared, geometry = self.prepare(item)
            item.input, item.geometry = prepared, geometry
            for batch in sizes:
                inputs = prepared.expand(batch, *prepared.shape).contiguous()
                for _ in range(3):
                    outputs, _features = split_features(self.model(inputs))
                self.summarise(outputs, [item] * batch)  # the post-processing's kernels too

    # --- the batch pipeline ------------------------------------------------------

    def _decode_batch(self, data: list[dict], context) -> tuple[list["Item | Response"], dict[int, InferenceRequest]]:
        """Each request decoded (or its error Response), and the Open Inference Protocol
        requests among them by index."""
        headers = [request_headers(context, index) for index in range(len(data))]
        rows = [self._guarded(index, read_body, row, headers[index]) for index, row in enumerate(data)]
        inference_requests = {
            index: request
            for index, row in enumerate(rows)
            if not isinstance(row, Response) and (request := inference_request_of(row, headers[index])) is not None
        }
        read = [
            self._guarded(index, self._read, index, row, headers[index]) if not isinstance(row, Response) else row
            for index, row in enumerate(rows)
        ]
        unread = [r for r in read if isinstance(r, ReadRequest)]
        together = self._decode_jpegs_together(unread)
        inference_requests |= {r.index: r.inference_request for r in unread if r.inference_request is not None}
        decoded = [self._guarded(r.index, self._decode, r, together) if isinstance(r, ReadRequest) else r for r in read]
        return decoded, inference_requests

    def _read(self, index: int, row: dict, headers: dict[str, str]) -> ReadRequest:
        inference = parse_inference_request(row, headers)
        data, params, request = inference if inference is not None else (*split_request(row), None)
        params = merge_parameters(params, header_parameters(headers, self.request_params))
        settings = self.resolve(with_overrides(self.settings, params, self.request_params))
        if len(data) > settings.max_image_bytes:
            raise InputError(
                "image too large", f"{len(data)} bytes exceeds the limit of {settings.max_image_bytes}", 413
            )
        return ReadRequest(index, data, settings, check_image(data, settings.max_image_pixels), request)

    def _decode_jpegs_together(self, requests: list[ReadRequest]) -> dict[int, torch.Tensor]:
        """The batch's JPEGs decoded in one call on the model's device, when configured
        (on CUDA by default). If any of them is corrupt, none are: each is then decoded
        on its own, so that only the corrupt one fails."""
        mode = self.settings.jpeg_decoder
        if mode == "per_image" or (mode == "auto" and self.device.type != "cuda"):
            return {}
        jpegs = [request for request in requests if request.info.format in JPEG_FORMATS]
        if not jpegs:
            return {}
        try:
            images = decode_jpegs([request.data for request in jpegs], self.device)
        except RuntimeError as err:
            logger.warning("batched JPEG decode failed (%s); decoding the %d JPEGs one by one", err, len(jpegs))
            return {}
        return {request.index: image for request, image in zip(jpegs, images, strict=True)}

    def _decode(self, request: ReadRequest, decoded: dict[int, torch.Tensor]) -> Item:
        settings = request.settings
        hint = self.decode_at_least(settings)
        if request.index in decoded:
            image, original = decoded[request.index], None
        elif hint is None:
            image, original = decode_checked(request.data, request.info), None
        else:
            image, original = decode_image_at_least(request.data, request.info, *hint)
        original = original or (image.shape[-1], image.shape[-2])  # decoded at full size
        return Item(request.index, image, settings, original)

    def _to_device(self, results: list["Item | Response"]) -> list["Item | Response"]:
        """The images decoded on the host moved to the model's device, in one copy."""
        on_host = [result for result in results if isinstance(result, Item) and result.image.device != self.device]
        for item, image in zip(on_host, to_device([item.image for item in on_host], self.device), strict=True):
            item.image = image
        return results

    def _prepare(self, item: Item) -> Item:
        item.input, item.geometry = self.prepare(item)
        return item

    def _forward(self, items: list[Item], context) -> list[tuple[list[Item], Output | list[Response]]]:
        """The model's outputs for groups of `items`, batched: one forward pass per input
        shape (a request may ask for another input size); a group that failed as a whole
        is split, so that an image the model cannot process fails alone."""
        groups: dict[tuple[int, ...], list[Item]] = {}
        for item in items:
            groups.setdefault(tuple(item.input.shape), []).append(item)
        return [result for group in groups.values() for result in self._forward_group(group, context)]

    def _forward_group(self, items: list[Item], context) -> list[tuple[list[Item], Output | list[Response]]]:
        try:
            self._emit(context, BATCH_IMAGES, len(items))
            with self._timed(context, FORWARD):
                inputs = torch.stack([item.input for item in items])  # uint8: the model converts
                if self.settings.channels_last:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                outputs, features = split_features(self.model(inputs))
            self._observe_drift(features)
            return [(items, outputs)]
        except Exception:
            if len(items) == 1:
                logger.exception("inference failed for request %d", items[0].index)
                detail = "the model failed on this image; see the worker log"
                return [(items, [Response.failure(500, "inference failed", detail)])]
            logger.exception("batched inference failed; retrying its %d images one by one", len(items))
            return [result for item in items for result in self._forward_group([item], context)]

    def _postprocess_group(self, items: list[Item], outputs: Output | list[Response]) -> list[Response]:
        """One forward pass's items answered: `summarise` for the group, then `postprocess`
        per item. If `summarise` fails for the group, each item is summarised alone."""
        if isinstance(outputs, list):  # the forward pass failed: its error answers
            return outputs
        try:
            summaries = self.summarise(outputs, items)
        except Exception:
            if len(items) == 1:
                logger.exception("post-processing failed for request %d", items[0].index)
                return [Response.failure(500, "internal error", "processing this request failed; see the worker log")]
            logger.exception("batched post-processing failed; retrying its %d images one by one", len(items))
            return [
                self._postprocess_group([item], output_slice(outputs, position))[0]
                for position, item in enumerate(items)
            ]
        return [
            self._guarded(item.index, self.postprocess, summary, item)
            for item, summary in zip(items, summaries, strict=True)
        ]

    @staticmethod
    def _guarded(index: int, step: Callable[..., T], *args) -> T | Response:
        """Run one request's step; its failure becomes that request's error response."""
        try:
            return step(*args)
        except InputError as err:
            return Response.failure(err.status, err.error, err.detail)
        except Exception:  # a bug or resource failure on one request must not fail the batch
            logger.exception("request %d of the batch failed in %s", index, getattr(step, "__name__", step))
            return Response.failure(500, "internal error", "processing this request failed; see the worker log")

    def _respond(self, responses: list[Response], context) -> list[bytes]:
        # One counter increment per outcome in the batch (usually one), not one per request.
        outcomes = Counter((status_class(response.status), error_kind(response.error)) for response in responses)
        for (status, error), count in outcomes.items():
            self._emit(context, REQUESTS, count, status_class=status, error=error)
        for index, response in enumerate(responses):
            context.set_response_content_type(index, response.content_type)
            for name, value in response.headers:
                context.set_response_header(index, name, value)
            if response.status != 200:
                context.set_response_status(response.status, http.HTTPStatus(response.status).phrase, index)
        return [response.body for response in responses]

    def _emit(self, context, name: str, value: float, **labels: str) -> None:
        if self.settings.metrics:
            emit(context, self.model_name, name, value, **labels)

    @contextmanager
    def _timed(self, context, stage: str) -> Iterator[None]:
        """Time a stage of the batch into zoo_stage_seconds{stage=...}."""
        started = time.perf_counter()
        yield
        self._emit(context, STAGE_SECONDS, time.perf_counter() - started, stage=stage)


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


def split_features(answer: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> tuple[Output, torch.Tensor]:
    """A compiled model's answer (OUTPUT_FORMAT) -> (the task's outputs: one tensor, or a
    tuple of them, features Tensor[B, D])."""
    *outputs, features = answer
    return (outputs[0] if len(outputs) == 1 else tuple(outputs)), features


def output_slice(outputs: Output, position: int) -> Output:
    """Image `position` of batched outputs, keeping the batch dimension (a batch of one)."""
    if isinstance(outputs, torch.Tensor):
        return outputs[position : position + 1]
    return type(outputs)(part[position : position + 1] for part in outputs)


def unbatch(outputs: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor], size: int) -> Iterator[Output]:
    """Split a batched model output (a tensor, or a tuple/list of tensors) per image."""
    for index in range(size):
        if isinstance(outputs, torch.Tensor):
            yield outputs[index]
        else:
            yield type(outputs)(part[index] for part in outputs)
