"""The batch engine: a batch of parsed requests in, one result per request out, in order,
and the interface of the task plug-ins it drives.

A batch flows: per request its settings (the task's, with the request's parameters) and
its image header checked -> decoded (a batch's JPEGs together on a GPU) -> per image the
task's `prepare` to a fixed size (or to `Parts`: the photo seen at several sizes) -> one
stacked tensor per input shape -> one forward pass under `torch.inference_mode()` -> the
task's `summarise` for the pass where the outputs are (on a GPU: top-k, NMS) -> the task's
`conclude` for the whole batch (a photo's parts' summaries joined; the face pixelizer's
mosaic), ending in one copy to the host -> per request the task's `postprocess`, an
`Answer` the edge renders. A request that fails at any step is a `Failure` for it alone; a
step that fails for a whole group is retried image by image.

The compiled model takes the stacked uint8 images as they are (INPUT_FORMAT) and
normalises them in its graph; it answers the task's outputs and then each image's
feature vector (OUTPUT_FORMAT), which the drift observer reads.
"""

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from .errors import InputError
from .imaging import (
    JPEG_FORMATS,
    ImageInfo,
    ModelInput,
    check_image,
    decode_checked,
    decode_image_at_least,
    decode_jpegs,
    input_shape,
    input_views,
    stack_inputs,
)
from .observers import DECODE, FORWARD, POSTPROCESS, PREPROCESS, Observers
from .settings import ImageHandlerSettings, with_overrides
from .vision_ops import to_device

logger = logging.getLogger(__name__)
T = TypeVar("T")

# What every compiled model takes (scripts/building/compile.py): the prepared images as they are.
INPUT_FORMAT = "uint8 RGB [B, 3, H, W]"
# What every compiled model answers: a tuple of the task's outputs, then the features.
OUTPUT_FORMAT = "(*task outputs, features float32 [B, D])"

# One image's slice of a model output: a tensor, or a tuple of them (RetinaFace's three heads).
Output = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Answer:
    """What a task answers for one request, before the edge renders it: JSON fields, or an
    image (uint8 [3, H, W], any device) to send as a JPEG, with extra headers."""

    fields: dict[str, Any] | None = None
    image: torch.Tensor | None = None
    jpeg_quality: int = 90
    headers: tuple[tuple[str, str], ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)  # every per-request parameter's value, as applied
    provenance: dict[str, str] = field(default_factory=dict)  # the weights of the network that ran (name, sha256)


@dataclass(frozen=True)
class Failure:
    """A request that cannot be answered: its HTTP status, the kind of error (a fixed
    vocabulary: "corrupt image"), and what went wrong."""

    status: int
    error: str
    detail: str

    @classmethod
    def of(cls, err: InputError) -> "Failure":
        return cls(err.status, err.error, err.detail)


Result = Answer | Failure
INTERNAL = Failure(500, "internal error", "processing this request failed; see the worker log")


class Readable(Protocol):
    """A parsed request as the engine reads it (the edge's Request)."""

    data: bytes
    params: Mapping[str, Any]
    refused: Failure | None


class Parts(list):
    """What `prepare` answers when a photo is seen at several input shapes: a list of
    (input, geometry), each run in the forward pass of its shape and summarised there;
    `conclude` then gets each part's summary, in this order."""


@dataclass
class Item:
    """One request travelling through the batch."""

    index: int  # position in TorchServe's batch
    data: bytes
    settings: ImageHandlerSettings  # the task's settings class, with this request's parameters
    info: ImageInfo  # its image header, checked
    image: torch.Tensor | None = None  # uint8 [3, H, W] RGB, EXIF applied, on the model's device once moved
    original_size: tuple[int, int] = (0, 0)  # (width, height) of the photo as sent, EXIF applied
    input: ModelInput | Parts | None = None  # `prepare`'s uint8 [3, h, w] (or its Placement), or [V, 3, h, w]
    geometry: Any = None  # how the photo maps into `input` (a LetterboxGeometry, or one per view), for the task
    part: int = 0  # which of `prepare`'s Parts this item stands for in a forward pass (0: the first, or the only)
    observations: list[tuple[str, float]] = field(default_factory=list)  # what the answer says (metrics)

    def observe(self, metric: str, value: float) -> None:
        """Record what this request's answer says (a score, a count) for the metrics."""
        self.observations.append((metric, value))


class Task:
    """A task plug-in: what one kind of model does to a photo, and nothing about the
    server, the protocol or the batch. `name` is the compiled model's metadata["task"];
    `request_params` maps each per-request parameter to the setting it overrides."""

    name: str = ""
    settings_class: type = ImageHandlerSettings
    request_params: dict[str, str] = {}
    parameter_choices: dict[str, tuple[str, ...]] = {}  # request parameter -> the values it takes

    def __init__(self, settings: ImageHandlerSettings, metadata: dict, model_dir: Path, device: torch.device,
                 companions: dict[str, dict] | None = None):  # fmt: skip
        self.settings, self.metadata, self.device = settings, metadata, device
        self.companions = companions or {}  # the metadata of the other networks its archive holds, by name

    def resolve(self, settings: ImageHandlerSettings) -> ImageHandlerSettings:
        """A request's settings, checked against the model and completed, before any
        inference runs: raise InputError for a value the model cannot take."""
        return settings

    def network(self, item: Item) -> str:
        """Which network serves this item: the model's own (""), or a companion by name."""
        return ""

    def provenance(self, item: Item) -> dict[str, str]:
        """The weights that answered this item: those of the network that ran it."""
        name = self.network(item)
        weights = (self.companions[name] if name else self.metadata)["weights"]
        return {"weights": weights["name"], "weights_sha256": weights["sha256"]}

    def decode_at_least(self, settings: ImageHandlerSettings) -> tuple[int, str] | None:
        """(size, "cover" | "contain") when the task only needs the image at that size:
        large JPEGs are then decoded at a reduced scale. None: decode at full size."""
        return None

    def prepare(self, item: Item) -> tuple[ModelInput, Any]:
        """item.image uint8 [3, H, W] -> (uint8 [3, h, w] of the model's input size, or a
        Placement that the batch builds, with its geometry), or several views of the photo:
        ([V, 3, h, w], a geometry per view); or Parts: views of several shapes."""
        raise NotImplementedError

    def summarise(self, outputs: Output, items: list[Item]) -> list[Any]:
        """A forward pass's outputs (batched, on the model's device: one row per view, the
        items' views in order) -> what `postprocess` takes for each item, in order. By
        default each image's slice of the outputs (one view each)."""
        return list(unbatch(outputs, len(items)))

    def conclude(self, items: list[Item], parts: list[list[Any]]) -> list[Any]:
        """The batch's items (each with `summarise`'s result for each of its parts, in the
        order `prepare` gave them; one part unless it gave Parts) -> what `postprocess`
        takes for each item, in order. By default each item's only part's summary."""
        if any(len(summaries) != 1 for summaries in parts):
            raise NotImplementedError(f"{type(self).__name__} prepares Parts but does not conclude them")
        return [summaries[0] for summaries in parts]

    def postprocess(self, summary: Any, item: Item) -> Answer:
        """One item's `summarise` result -> its answer."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a client needs to know of this task beyond its parameters (class names)."""
        return {}

    def letterbox_size(self, configured: int) -> int:
        """The configured letterbox size, or the model's own; a multiple of its stride."""
        size, stride = configured or self.metadata["input_size"][0], self.metadata["stride"]
        if size % stride:
            raise ValueError(f"input_size {size} is not a multiple of the model's stride {stride}")
        return size


class BatchEngine:
    """Runs one task's model over batches of parsed requests (see the module's docstring)."""

    def __init__(self, task: Task, model: Callable, device: torch.device, observers: Observers | None = None,
                 companions: dict[str, Callable] | None = None):  # fmt: skip
        self.task, self.model, self.device = task, model, device
        self.models = {"": model, **(companions or {})}  # the networks by name: the model's own, then its companions
        self.settings = task.settings
        self.observers = observers or Observers()

    def run(self, requests: list[Readable]) -> list[Result]:
        timed = self.observers.timed
        with torch.inference_mode():
            # results[i] is request i's Item while it is in flight, then its Answer or Failure.
            with timed(DECODE):
                results = [request.refused or guarded(index, self._read, index, request)
                           for index, request in enumerate(requests)]  # fmt: skip
                results = self._decode_all(results)
            # Each image on the model's device before `prepare`: resizing runs where the model does.
            self._to_device([result for result in results if isinstance(result, Item)])
            with timed(PREPROCESS):
                results = [guarded(r.index, self._prepare, r) if isinstance(r, Item) else r for r in results]
            items = [result for result in results if isinstance(result, Item)]
            groups = self._forward([part for item in items for part in parts_of(item)])
            with timed(POSTPROCESS):
                summaries: dict[tuple[int, int], Any] = {}  # (request, part) -> its summary, or its Failure
                for group, outputs in groups:
                    for part, summary in zip(group, self._summarise_group(group, outputs), strict=True):
                        summaries[part.index, part.part] = summary
                for item, result in zip(items, self._conclude(items, summaries), strict=True):
                    results[item.index] = result
        for item in items:
            for name, value in item.observations:
                self.observers.observed(name, value)
        return results

    def applied_parameters(self, settings: ImageHandlerSettings) -> dict[str, Any]:
        """Every per-request parameter's value for a request: its own, else the default.
        Lets a client see that a parameter it sent was (or was not) taken."""
        values = {param: getattr(settings, name) for param, name in self.task.request_params.items()}
        return {param: list(value) if isinstance(value, tuple) else value for param, value in values.items()}

    def _read(self, index: int, request: Readable) -> Item:
        settings = with_overrides(self.settings, request.params, self.task.request_params)
        settings = self.task.resolve(settings)
        if len(request.data) > settings.max_image_bytes:
            detail = f"{len(request.data)} bytes exceeds the limit of {settings.max_image_bytes}"
            raise InputError("image too large", detail, 413)
        return Item(index, request.data, settings, check_image(request.data, settings.max_image_pixels))

    def _decode_all(self, results: list) -> list:
        items = [result for result in results if isinstance(result, Item)]
        together = self._decode_jpegs_together(items)
        return [guarded(r.index, self._decode, r, together) if isinstance(r, Item) else r for r in results]

    def _decode_jpegs_together(self, items: list[Item]) -> dict[int, torch.Tensor]:
        """The batch's JPEGs decoded in one call on the model's device, when configured
        (on CUDA by default). If any of them is corrupt, none are: each is then decoded
        on its own, so that only the corrupt one fails."""
        mode = self.settings.jpeg_decoder
        if mode == "per_image" or (mode == "auto" and self.device.type != "cuda"):
            return {}
        jpegs = [item for item in items if item.info.format in JPEG_FORMATS]
        if not jpegs:
            return {}
        try:
            images = decode_jpegs([item.data for item in jpegs], self.device)
        except RuntimeError as err:
            logger.warning("batched JPEG decode failed (%s); decoding the %d JPEGs one by one", err, len(jpegs))
            return {}
        return {item.index: image for item, image in zip(jpegs, images, strict=True)}

    def _decode(self, item: Item, decoded: dict[int, torch.Tensor]) -> Item:
        hint = self.task.decode_at_least(item.settings)
        if item.index in decoded:
            item.image, original = decoded[item.index], None
        elif hint is None:
            item.image, original = decode_checked(item.data, item.info), None
        else:
            item.image, original = decode_image_at_least(item.data, item.info, *hint)
        item.original_size = original or (item.image.shape[-1], item.image.shape[-2])  # decoded at full size
        return item

    def _to_device(self, items: list[Item]) -> list[Item]:
        """The images decoded on the host moved to the model's device, in one copy."""
        on_host = [item for item in items if item.image.device != self.device]
        for item, image in zip(on_host, to_device([item.image for item in on_host], self.device), strict=True):
            item.image = image
        return items

    def _prepare(self, item: Item) -> Item:
        prepared = self.task.prepare(item)
        # Parts stay whole in `input` (parts_of splits them for the forward passes).
        item.input, item.geometry = (prepared, None) if isinstance(prepared, Parts) else prepared
        return item

    def _forward(self, items: list[Item]) -> list[tuple[list[Item], Output | Failure]]:
        """The model's outputs for groups of `items`, batched: one forward pass per network
        and input shape (a request may ask for another input size, or another network)."""
        groups: dict[tuple, list[Item]] = {}
        for item in items:
            groups.setdefault((self.task.network(item), *input_shape(item.input)), []).append(item)
        return [result for (network, *_), group in groups.items() for result in self._forward_group(group, network)]

    def _forward_group(self, items: list[Item], network: str = "") -> list[tuple[list[Item], Output | Failure]]:
        """One forward pass; if it fails, the group is split, so that an image the model
        cannot process fails alone."""
        try:
            with self.observers.timed(FORWARD):
                answer = in_chunks(self.models[network], self._stacked(items), self.settings.max_forward_pixels)
                outputs, features = split_features(answer)
            if not network:  # the drift test watches the model's own network
                requests, rows = first_parts(items, features)
                if requests:
                    self.observers.forwarded(requests, rows)
            return [(items, outputs)]
        except Exception:
            if len(items) == 1:
                logger.exception("inference failed for request %d", items[0].index)
                return [(items, Failure(500, "inference failed", "the model failed on this image; see the worker log"))]
            logger.exception("batched inference failed; retrying its %d images one by one", len(items))
            return [result for item in items for result in self._forward_group([item], network)]

    def _stacked(self, items: list[Item]) -> torch.Tensor:
        """The items' views as one uint8 batch (the model converts), built in the served memory format."""
        return stack_inputs([item.input for item in items], self.settings.channels_last)

    def _summarise_group(self, items: list[Item], outputs: Output | Failure) -> list[Any]:
        """One forward pass's items summarised (`summarise`), or each one's Failure. If
        `summarise` fails for the group, each item is summarised alone."""
        if isinstance(outputs, Failure):
            return [outputs] * len(items)
        try:
            return self.task.summarise(outputs, items)
        except Exception:
            if len(items) == 1:
                logger.exception("post-processing failed for request %d", items[0].index)
                return [INTERNAL]
            logger.exception("batched post-processing failed; retrying its %d images one by one", len(items))
            starts = [0]
            for item in items:
                starts.append(starts[-1] + input_views(item.input))
            return [self._summarise_group([item], output_slice(outputs, starts[at], starts[at + 1]))[0]
                    for at, item in enumerate(items)]  # fmt: skip

    def _conclude(self, items: list[Item], summaries: dict[tuple[int, int], Any]) -> list[Result]:
        """The batch's items answered: `conclude` for those whose every part was summarised
        (one whose part failed gets that Failure), then `postprocess` per item."""
        parts = [[summaries[item.index, part] for part in range(part_count(item))] for item in items]
        failed = [next((s for s in mine if isinstance(s, Failure)), None) for mine in parts]
        ready = [(item, mine) for item, mine, failure in zip(items, parts, failed, strict=True) if failure is None]
        concluded = iter(self._concluded(ready))
        results = []
        for item, failure in zip(items, failed, strict=True):
            summary = failure or next(concluded)
            answered = summary if isinstance(summary, Failure) else guarded(item.index, self._answer, summary, item)
            results.append(answered)
        return results

    def _concluded(self, ready: list[tuple[Item, list[Any]]]) -> list[Any]:
        """`conclude` for the batch; if it fails, for each item alone (INTERNAL where it still does)."""
        if not ready:
            return []
        try:
            return self.task.conclude([item for item, _ in ready], [mine for _, mine in ready])
        except Exception:
            if len(ready) == 1:
                logger.exception("post-processing failed for request %d", ready[0][0].index)
                return [INTERNAL]
            logger.exception("batched post-processing failed; concluding its %d images one by one", len(ready))
            return [self._concluded([pair])[0] for pair in ready]

    def _answer(self, summary: Any, item: Item) -> Answer:
        answer = self.task.postprocess(summary, item)
        return replace(answer, parameters=self.applied_parameters(item.settings), provenance=self.task.provenance(item))

    def warmup(self, batch_size: int) -> None:
        """Run a dummy image through the model and the post-processing so that lazy
        initialisation (and TorchScript's profiling runs) happen at load time, not on a
        client's request. TorchScript specialises on each batch shape (and cuDNN picks its
        kernels per shape): on a GPU, where batches of any size up to batch_size form
        under load, every size is run; on the CPU, the two ends."""
        settings = self.task.resolve(self.settings)
        item = Item(0, b"", settings, ImageInfo("JPEG", 640, 480), original_size=(640, 480))
        item.image = torch.full((3, 480, 640), 114, dtype=torch.uint8, device=self.device)
        sizes = range(1, batch_size + 1) if self.device.type == "cuda" else sorted({1, batch_size})
        with torch.inference_mode():
            self._prepare(item)
            parts = parts_of(item)
            for batch in sizes:
                summaries = []
                for part in parts:
                    inputs = self._stacked([part] * batch)  # as served: the same memory format
                    for _ in range(3):
                        outputs, _features = split_features(self.models[self.task.network(part)](inputs))
                    summaries.append(self.task.summarise(outputs, [part] * batch))
                self.task.conclude([item] * batch, [list(row) for row in zip(*summaries, strict=True)])


def parts_of(item: Item) -> list[Item]:
    """The items that stand for a request in the forward passes: one per part of its Parts
    (each with that part's input and geometry, sharing the request's observations), or the
    request's own item."""
    if not isinstance(item.input, Parts):
        return [item]
    return [replace(item, input=model_input, geometry=geometry, part=part)
            for part, (model_input, geometry) in enumerate(item.input)]  # fmt: skip


def first_parts(items: list[Item], features: torch.Tensor) -> tuple[int, torch.Tensor]:
    """A forward pass's items and features (a row per view) -> how many of them are a
    request's first part, and those parts' rows: the drift test and the batch-fill metric
    see each request once (a photo also seen at another size is another part)."""
    keep, row = [], 0
    for item in items:
        views = input_views(item.input)
        if item.part == 0:
            keep.extend(range(row, row + views))
        row += views
    return sum(item.part == 0 for item in items), features if len(keep) == row else features[keep]


def part_count(item: Item) -> int:
    return len(item.input) if isinstance(item.input, Parts) else 1


def guarded(index: int, step: Callable[..., T], *args) -> T | Failure:
    """Run one request's step; its failure becomes that request's Failure."""
    try:
        return step(*args)
    except InputError as err:
        return Failure.of(err)
    except Exception:  # a bug or resource failure on one request must not fail the batch
        logger.exception("request %d of the batch failed in %s", index, getattr(step, "__name__", step))
        return INTERNAL


def in_chunks(model, batch: torch.Tensor, max_pixels: int) -> list[torch.Tensor]:
    """A compiled model's answer for a batch [B, C, H, W], run on at most `max_pixels` of it
    at a time (a batch of large views, a photo's tiles: the activations' memory grows with
    the pixels of one pass), in chunks of whole rows -- at least one -- joined in order."""
    rows = max(1, max_pixels // (batch.shape[-2] * batch.shape[-1]))
    if len(batch) <= rows:
        return model(batch)
    count = -(-len(batch) // rows)  # chunks of about equal size
    answers = [model(chunk) for chunk in batch.tensor_split(count)]
    return [torch.cat(parts) for parts in zip(*answers, strict=True)]


def split_features(answer: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> tuple[Output, torch.Tensor]:
    """A compiled model's answer (OUTPUT_FORMAT) -> (the task's outputs: one tensor, or a
    tuple of them, features Tensor[B, D])."""
    *outputs, features = answer
    return (outputs[0] if len(outputs) == 1 else tuple(outputs)), features


def output_slice(outputs: Output, start: int, stop: int) -> Output:
    """Rows start..stop of batched outputs (one item's views), keeping the batch dimension."""
    if isinstance(outputs, torch.Tensor):
        return outputs[start:stop]
    return type(outputs)(part[start:stop] for part in outputs)


def unbatch(outputs: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor], size: int) -> Iterator[Output]:
    """Split a batched model output (a tensor, or a tuple/list of tensors) per image."""
    for index in range(size):
        if isinstance(outputs, torch.Tensor):
            yield outputs[index]
        else:
            yield type(outputs)(part[index] for part in outputs)
