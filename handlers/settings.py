"""Handler settings: frozen dataclasses read from the `handler:` section of a model's
model-config.yaml, optionally overridden per request.

Unknown keys and out-of-range values fail loudly: in the YAML they stop the worker
from loading (a deployment error), in a request they give that request a 400.
"""

import dataclasses
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from imaging import InputError

S = TypeVar("S")


@dataclass(frozen=True)
class ImageHandlerSettings:
    """Settings every image handler understands."""

    # Decoded-pixel limit, checked from the header before decoding (decompression bombs).
    max_image_pixels: int = 40_000_000
    # Image size limit. Kept below TorchServe's max_request_size (16 MiB in config.properties)
    # so that too-large images get this handler's JSON 413 rather than the frontend's empty one.
    max_image_bytes: int = 16_000_000
    # Image-output size limit, below TorchServe's max_response_size (16 MiB in config.properties).
    max_response_bytes: int = 16_000_000
    # Intra-op threads per worker on CPU; 0 = CPU cores / maxWorkers (never oversubscribed).
    num_threads: int = 0
    # Run one dummy batch at load so the first client does not pay for lazy initialisation.
    warmup: bool = True
    # TorchScript on CPU: torch.jit.optimize_for_inference at load (oneDNN-prepacked weights).
    optimize: bool = True
    # JPEGs of a batch: "batched" decodes them in one call on the model's device (nvJPEG on
    # a GPU); "per_image" on the CPU, large ones at a reduced scale; "auto": batched on CUDA.
    jpeg_decoder: str = "auto"
    # Feed the model channels-last tensors (faster convolutions on GPUs with fp16/bf16).
    channels_last: bool = False
    # Send X-Batch-Size (requests TorchServe handed over together) with every answer. Useful
    # when tuning batchSize/maxBatchDelay; off by default: it tells clients about others' traffic.
    batch_size_header: bool = False

    def __post_init__(self):
        check_range("max_image_pixels", self.max_image_pixels, 1, 1_000_000_000)
        check_range("max_image_bytes", self.max_image_bytes, 1, 2**31 - 1)
        check_range("max_response_bytes", self.max_response_bytes, 1, 2**31 - 1)
        check_range("num_threads", self.num_threads, 0, os.cpu_count() or 1024)
        if self.jpeg_decoder not in ("auto", "batched", "per_image"):
            raise ValueError(f"jpeg_decoder must be auto, batched or per_image, got {self.jpeg_decoder!r}")


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}")


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
    setting it overrides); any problem is the client's: InputError, HTTP 400."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise InputError("unknown parameter", f"{', '.join(unknown)} (accepted per request: {accepted})")
    hints = typing.get_type_hints(type(settings))
    for name, value in params.items():
        field = allowed[name]
        try:
            settings = dataclasses.replace(settings, **{field: coerce(name, value, hints[field])})
        except ValueError as err:
            raise InputError("invalid parameter", f"{name}: {err}") from err
    return settings


def coerce(name: str, value: Any, target: Any) -> Any:
    """Convert a YAML, JSON, form or query value to the field's type, or raise ValueError."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    origin = typing.get_origin(target)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        (item_type, _ellipsis) = typing.get_args(target)
        return tuple(coerce(name, item, item_type) for item in items if item != "")
    if target is bool:
        return _to_bool(name, value)
    if target in (int, float):
        return _to_number(name, value, target)
    if target is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported settings type {target!r} for {name}")


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _to_number(name: str, value: Any, target: type) -> int | float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if target is int:
        if number != int(number):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(number)
    return float(number)
