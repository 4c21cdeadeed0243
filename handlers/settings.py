"""Handler settings: frozen dataclasses read from the `handler:` section of a model's
model-config.yaml, optionally overridden per request.

Unknown keys and out-of-range values fail loudly: in the YAML they stop the worker
from loading (a deployment error), in a request they give that request a 400.
"""

import dataclasses
import math
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .drift import DriftSettings
from .errors import InputError, listed, shown

JPEG_ENCODERS = ("device", "host")  # where a GPU's image answers are encoded (vision_ops.encode_jpegs)

S = TypeVar("S")


@dataclass(frozen=True)
class ImageHandlerSettings:
    """Settings every image handler understands."""

    # Decoded-pixel limit, checked from the header before decoding (decompression bombs).
    max_image_pixels: int = 40_000_000
    # Image size limit. Kept below TorchServe's max_request_size (16 MiB in config.properties)
    # so that too-large images get this handler's JSON 413 rather than the frontend's empty one.
    max_image_bytes: int = 16_000_000
    # Answer size limit (body and headers, as sent: an Open Inference Protocol answer's image
    # in base64), below TorchServe's max_response_size (16 MiB in config.properties), above
    # which its frontend drops the worker. At least 16 KiB: an error answer takes ~5 KB at most.
    max_response_bytes: int = 16_000_000
    # Pixels one forward pass sees at most: a batch with more (large views, a photo's tiles)
    # runs in chunks of whole images (engine.in_chunks), so that its activations' memory is
    # what one such pass needs, not the batch's; one image larger than this runs alone.
    max_forward_pixels: int = 8_294_400
    # Intra-op threads per worker (on a GPU too, for its host work); 0 = CPU cores / busy workers
    # (never oversubscribed).
    num_threads: int = 0
    # Run one dummy batch at load so the first client does not pay for lazy initialisation.
    warmup: bool = True
    # TorchScript on CPU: torch.jit.optimize_for_inference at load (oneDNN-prepacked weights).
    optimize: bool = True
    # JPEGs of a batch: "batched" decodes them in one call on the model's device (nvJPEG on
    # a GPU); "per_image" on the CPU, large ones at a reduced scale; "auto": batched on CUDA.
    jpeg_decoder: str = "auto"
    # Image answers on a GPU: "device" encodes them with nvJPEG; "host" copies them to the
    # host in one transfer and encodes them there, as on the CPU (vision_ops.encode_jpegs).
    jpeg_encoder: str = "device"
    # Feed the model channels-last tensors (faster convolutions on GPUs with fp16/bf16).
    channels_last: bool = False
    # Once the worker has been idle this many seconds, give the memory its batches freed back
    # to the system (glibc keeps it for reuse: observers.IdleTrimmer); 0 = never. A CPU worker
    # that trims also keeps its large buffers between batches (observers.idle_trimmer).
    release_memory_after_s: float = 2.0
    # Emit the handler's metrics (handlers/observers.py; their cost: docs/benchmarks.md).
    metrics: bool = True
    # Send X-Batch-Size (requests TorchServe handed over together) with every answer. Useful
    # when tuning batchSize/maxBatchDelay; off by default: it tells clients about others' traffic.
    batch_size_header: bool = False
    # Live input drift (observers.py): every drift_every images, the kernel MMD test
    # between the last drift_window images' features and the reference (the archive's,
    # else this worker's first drift_reference_size images); p < drift_threshold: a warning.
    drift: bool = True
    drift_window: int = 100
    drift_every: int = 100
    drift_permutations: int = 200
    drift_threshold: float = 0.01
    drift_reference_size: int = 100

    def __post_init__(self):
        self._drift_settings()  # raises ValueError for a bad drift_* value
        check_range("max_image_pixels", self.max_image_pixels, 1, 1_000_000_000)
        check_range("max_image_bytes", self.max_image_bytes, 1, 2**31 - 1)
        check_range("max_response_bytes", self.max_response_bytes, 16_384, 2**31 - 1)
        check_range("max_forward_pixels", self.max_forward_pixels, 1, 1_000_000_000)
        check_range("num_threads", self.num_threads, 0, os.cpu_count() or 1024)
        check_range("release_memory_after_s", self.release_memory_after_s, 0, 3600)
        check_choice("jpeg_decoder", self.jpeg_decoder, ("auto", "batched", "per_image"))
        check_choice("jpeg_encoder", self.jpeg_encoder, JPEG_ENCODERS)

    @property
    def drift_settings(self) -> DriftSettings:
        return self._drift_settings()

    def _drift_settings(self) -> DriftSettings:
        return DriftSettings(
            self.drift_window,
            self.drift_every,
            self.drift_permutations,
            self.drift_threshold,
            self.drift_reference_size,
        )


# What a detecting task answers: the found objects or faces, or the photo as JPEG.
OUTPUT_FORMATS = ("json", "image")


@dataclass(frozen=True)
class DetectionSettings(ImageHandlerSettings):
    """What every detecting handler shares (the object detectors, the face pixelizer)."""

    # Letterbox size; 0 = the size the model was compiled and checked at (640).
    input_size: int = 0
    score_threshold: float = 0.25  # a detection's minimum score
    iou_threshold: float = 0.45  # NMS
    format: str = "json"  # "json": what was found; "image": the photo as JPEG (boxes drawn, or faces hidden)
    jpeg_quality: int = 90  # for format=image

    def __post_init__(self):
        super().__post_init__()
        check_range("input_size", self.input_size, 0, 4096)
        check_range("score_threshold", self.score_threshold, 0.0, 1.0)
        check_range("iou_threshold", self.iou_threshold, 0.0, 1.0)
        check_range("jpeg_quality", self.jpeg_quality, 1, 100)
        check_choice("format", self.format, OUTPUT_FORMATS)


# The per-request parameters every detecting handler accepts -> the DetectionSettings field.
DETECTION_PARAMS = {"confidence": "score_threshold", "iou": "iou_threshold", "format": "format"}


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {shown(value)}")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {shown(value)}")


def settings_from_mapping(cls: type[S], mapping: Mapping[str, Any] | None) -> S:
    """Build `cls` from a YAML mapping; unknown keys and bad values raise ValueError."""
    mapping = dict(mapping or {})
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ValueError(f"unknown handler setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {name: coerce(name, value, hints[name]) for name, value in mapping.items()}
    return cls(**values)


def with_overrides(settings: S, params: Mapping[str, Any], allowed: Mapping[str, str]) -> S:
    """Apply per-request parameters (`allowed` maps each accepted parameter to the
    setting it overrides); any problem is the client's: InputError, HTTP 400 naming the
    parameter. Nothing here can raise anything else, whatever JSON or form value it gets."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise InputError("unknown parameter", f"{listed(unknown)} (accepted per request: {accepted})")
    hints = typing.get_type_hints(type(settings))
    for name, value in params.items():
        field = allowed[name]
        try:
            if is_empty(value):
                raise ValueError(f"{name} is empty, got {shown(value)}; leave it out to use the default")
            settings = dataclasses.replace(settings, **{field: coerce(name, value, hints[field])})
        except ValueError as err:
            raise InputError("invalid parameter", f"{name}: {err}") from err
    return settings


def is_empty(value: Any) -> bool:
    """null, "", whitespace, [] or {}: a parameter sent without a value."""
    if isinstance(value, (bytes, bytearray, str)):
        return not value.strip()
    return value is None or (isinstance(value, (list, tuple, dict)) and not value)


def coerce(name: str, value: Any, target: Any) -> Any:
    """Convert a YAML, JSON, form or query value to the field's type, or raise ValueError."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    origin = typing.get_origin(target)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {shown(value)}")
        (item_type, _ellipsis) = typing.get_args(target)
        if any(is_empty(item) for item in items):
            raise ValueError(f"{name} has an empty entry: {shown(value)}")
        return tuple(coerce(name, _index_text(item, item_type), item_type) for item in items)
    if target is bool:
        return _to_bool(name, value)
    if target in (int, float):
        return _to_number(name, value, target)
    if target is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {shown(value)}")
        return value.strip()
    raise TypeError(f"unsupported settings type {target!r} for {name}")


def _index_text(item: Any, item_type: Any) -> Any:
    """A JSON integer in a list of names (`"classes": [0, "car"]`) is a class index."""
    if item_type is str and isinstance(item, int) and not isinstance(item, bool):
        return str(item)
    return item


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"{name} must be true or false, got {shown(value)}")


_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


def _to_number(name: str, value: Any, target: type) -> int | float:
    """An int or float from a number or its text. Python ints are exact however many
    digits a client sends, so they are range-checked as ints, never through float()
    (which overflows); NaN and infinities (JSON's NaN, 1e999) are refused."""
    if isinstance(value, str):
        try:
            value = int(value) if target is int and _INTEGER.fullmatch(value) else float(value)
        except ValueError:  # not a number, or an integer of more than 4300 digits
            raise ValueError(f"{name} must be a number, got {shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {shown(value)}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {shown(value)}")
        if target is int:
            if not value.is_integer():
                raise ValueError(f"{name} must be an integer, got {shown(value)}")
            return int(value)
        return value
    if target is float:
        if abs(value) > 2**53:  # beyond any setting's range, and float() may overflow
            raise ValueError(f"{name} is out of range, got {shown(value)}")
        return float(value)
    return value
