"""A TorchServe worker's service: `ZooHandler`, the class TorchServe loads (each model's
entry module names its task), which loads the compiled model and serves batches through
the edge and the engine; and loading a model built by scripts/building/compile.py (a
TorchScript file or an AOTInductor package) with the metadata embedded in it.

    initialize: settings (the YAML's handler: section) -> device -> compiled model ->
                task -> observers -> engine -> warm-up
    handle:     edge.read_request per request -> engine.run -> edge.render -> edge.respond
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from . import edge
from .drift import REFERENCE_FILE, load_reference
from .engine import INPUT_FORMAT, OUTPUT_FORMAT, BatchEngine, Task
from .observers import DriftMonitor, Metrics, Observers, idle_trimmer, thread_budget
from .settings import settings_from_mapping

logger = logging.getLogger(__name__)

# Name of the JSON document scripts/building/compile.py embeds in every TorchScript file.
METADATA_FILE = "metadata.json"


def select_device(gpu_id: int | None) -> torch.device:
    """The device TorchServe assigned to this worker (`gpu_id`), else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device("cuda", int(gpu_id))
    return torch.device("cpu")


def load_compiled_model(path: Path, device: torch.device, optimize: bool = True) -> tuple[object, dict]:
    """Load a model built by scripts/building/compile.py, with its embedded metadata: a TorchScript
    file (.pt), optimised for inference on CPU (oneDNN-prepacked convolutions -- the step
    that cannot be saved, so it runs here), or an AOTInductor package (.pt2)."""
    path = Path(path)
    metadata = read_embedded_metadata(path)
    if path.suffix == ".pt2":
        built_for = metadata.get("device", "cpu")
        if torch.device(built_for).type != device.type:
            raise ValueError(f"{path.name} was compiled by AOTInductor for {built_for}, not {device}: rebuild it there")
        return load_aoti_package(path), metadata
    with warnings.catch_warnings():  # torch 2.14 marks torch.jit deprecated
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), map_location=device)
        model.eval()
        if optimize and device.type == "cpu":
            model = torch.jit.optimize_for_inference(model)
    return model, metadata


def load_aoti_package(path: Path) -> Callable:
    """An AOTInductor package's model, loaded by torch's C++ package loader. torch's Python
    entry point (torch._inductor.aoti_load_package) calls the same loader, after importing
    torch._dynamo, sympy and setuptools: ~110 MB per worker that running a package never
    uses. That entry point stays the fallback should the loader's signature change.

    The loader unpacks the package (the compiled .so and its weights: 190 MB for yolov5l)
    into a new directory under $TMPDIR and deletes it only when the model is destroyed,
    which a worker stopped or killed by TorchServe never does: every worker start would
    leave a copy behind until the disk filled. Here it unpacks into a directory of its own,
    removed as soon as the model is loaded (the process keeps the mapped files open) --
    unless the package keeps GPU kernels in files of their own, which the model reads
    only when it first runs them (a CUDA package built without
    `aot_inductor.embed_kernel_binary`; scripts/building/compile.py embeds them): then the
    directory stays until the model is destroyed, as torch's own loader keeps it."""
    keep = kernel_files_outside_library(package_names(path))
    if keep:
        logger.warning("%s keeps its GPU kernels in separate files: unpacked for as long as it is loaded", path.name)
    with unpacked_in_private_tmpdir(remove=not keep) as unpacked:
        try:
            loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
            model = AOTIPackage(loader)
        except (AttributeError, TypeError) as err:
            logger.info("torch's AOTInductor package loader not callable directly (%s): using aoti_load_package", err)
            model = torch._inductor.aoti_load_package(str(path))
    if keep:
        weakref.finalize(model, shutil.rmtree, unpacked, True)
    return model


# Files of an AOTInductor package holding GPU kernels apart from its shared library.
KERNEL_FILE_SUFFIXES = (".cubin", ".fatbin", ".hsaco", ".spv")


def package_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def kernel_files_outside_library(names: list[str]) -> bool:
    """Whether a package (by its file names) loads kernels from separate files at run time."""
    return any(name.endswith(KERNEL_FILE_SUFFIXES) for name in names)


@contextlib.contextmanager
def unpacked_in_private_tmpdir(remove: bool = True):
    """$TMPDIR pointed at a new directory for the block, that directory deleted after it
    (with whatever the block unpacked there) unless `remove` is false and the block
    succeeded. Not for threads that create temp files meanwhile: a worker loads its model
    before it serves."""
    private = tempfile.mkdtemp(prefix="zoo-unpack-")
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = private
    succeeded = False
    try:
        yield Path(private)
        succeeded = True
    finally:
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous
        if remove or not succeeded:
            shutil.rmtree(private, ignore_errors=True)


class AOTIPackage:
    """A loaded AOTInductor model called with tensors, answering as it was exported (a
    tensor, or a tuple or list of them)."""

    def __init__(self, loader):
        self.loader = loader
        self.out_spec = pytree.treespec_loads(loader.get_call_spec()[1])

    def __call__(self, *tensors: torch.Tensor):
        return pytree.tree_unflatten(self.loader.boxed_run(list(tensors)), self.out_spec)


def read_embedded_metadata(path: Path) -> dict:
    """metadata.json from a TorchScript file or an AOTInductor package (both are zips)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")), None)
            if name is None:
                raise ValueError(f"{path} has no embedded {METADATA_FILE}: not built by scripts/building/compile.py")
            return json.loads(archive.read(name))
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a compiled model (TorchScript or AOTInductor package): {err}") from err


class ZooHandler:
    """What TorchServe calls: `initialize(context)` once, `handle(data, context)` per
    batch, one answer per request, in order. An entry module subclasses it, naming its task."""

    task_class: type[Task] = Task

    def initialize(self, context) -> None:
        # JSON bodies reach the handler unparsed, to be parsed strictly (edge.RAW_JSON):
        # this worker process serves this handler alone.
        os.environ[edge.RAW_JSON[0]] = edge.RAW_JSON[1]
        properties = context.system_properties
        settings = settings_from_mapping(
            self.task_class.settings_class, (context.model_yaml_config or {}).get("handler")
        )
        self.device = select_device(properties.get("gpu_id"))
        model_dir = Path(properties["model_dir"])
        model_file = model_dir / context.manifest["model"]["serializedFile"]
        # Before the model runs; a GPU worker's host work (decoding, resizing there) shares the cores too.
        threads = thread_budget(settings.num_threads)
        model, self.metadata = load_compiled_model(model_file, self.device, settings.optimize)
        check_model(model_file.name, self.metadata, self.task_class.name)
        companions, described = {}, {}
        for name, file in self.metadata.get("companions", {}).items():  # other networks the task may run
            companions[name], described[name] = load_compiled_model(model_dir / file, self.device, settings.optimize)
            check_model(file, described[name], self.task_class.name)
        self.task = self.task_class(settings, self.metadata, model_dir, self.device, described)
        weights = self.metadata["weights"]
        version = str(context.manifest.get("model", {}).get("modelVersion", "1"))
        provenance = {"weights": weights["name"], "weights_sha256": weights["sha256"]}
        self.about = edge.About(
            context.model_name, version, provenance, settings.max_response_bytes, settings.jpeg_encoder
        )
        self.metrics = Metrics(context.model_name, context) if settings.metrics else None
        self.memory = idle_trimmer(settings.release_memory_after_s, reuse_large_buffers=self.device.type == "cpu")
        self.threads = threads
        self.observers = Observers(self.metrics, threads, self.memory)
        self.engine = BatchEngine(self.task, model, self.device, self.observers, companions)
        if settings.warmup:
            self.engine.warmup(int(properties.get("batch_size") or 1))
        self.memory.batch_ended()  # loading and warming up freed memory too
        self.drift = self.start_drift_monitor(model_dir) if settings.drift else None
        if self.drift is not None:
            self.observers.observers.append(self.drift)
        logger.info("%s ready on %s (%s threads), weights: %s", context.model_name, self.device,
                    threads.threads, weights["name"])  # fmt: skip

    def handle(self, data: list[dict], context) -> list[bytes]:
        if edge.is_describe_call(data, context):
            return [json.dumps(self.describe(), separators=(",", ":")).encode()]
        if self.metrics is not None:
            self.metrics.context = context
        self.observers.batch_started()
        try:
            accepted = self.task.request_params
            requests = [edge.read_request(row, edge.request_headers(context, index), accepted)
                        for index, row in enumerate(data)]  # fmt: skip
            results = self.engine.run(requests)
            extra = (("X-Batch-Size", str(len(data))),) if self.task.settings.batch_size_header else ()
            responses = edge.render(results, requests, self.about, extra)
            outcomes: dict[tuple[int, str], int] = {}
            for response in responses:
                outcomes[response.status, response.error] = outcomes.get((response.status, response.error), 0) + 1
            self.observers.answered(outcomes)
            return edge.respond(responses, context)
        finally:
            self.observers.batch_ended()

    def describe(self) -> dict[str, Any]:
        """What a client (the web page) needs to know of this model: its task, its weights
        (and whether they are random), the largest image it takes, and each per-request
        parameter with its default (and its values, where they are a choice: a yes/no one's too)."""
        task, settings = self.task, self.task.settings
        parameters = self.engine.applied_parameters(task.resolve(settings))
        choices = {param: [True, False] for param, value in parameters.items() if isinstance(value, bool)}
        return {
            "model": self.about.model,
            "task": task.name,
            **self.about.provenance,
            "random_weights": self.metadata["weights"]["name"] == "random",
            "max_image_bytes": settings.max_image_bytes,
            "max_image_pixels": settings.max_image_pixels,
            "parameters": parameters,
            "choices": choices | {param: list(values) for param, values in task.parameter_choices.items()},
            **task.describe(),
        }

    def start_drift_monitor(self, model_dir: Path) -> DriftMonitor:
        """The worker's drift monitor, with the archive's reference sample if it holds one."""
        reference = None
        if (model_dir / REFERENCE_FILE).is_file():
            weights = self.metadata["weights"]["sha256"]
            reference = load_reference(model_dir / REFERENCE_FILE, self.metadata["feature_size"], weights)
        settings = self.task.settings.drift_settings
        logger.info("%s drift test every %d images, window %d, reference: %s", self.about.model, settings.every,
                    settings.window, f"{len(reference)} images from the archive" if reference is not None else
                    f"the first {settings.reference_size} images served")  # fmt: skip
        return DriftMonitor(settings, self.publish_drift, reference)

    def publish_drift(self, report) -> None:
        """A drift test's result as metrics, and a warning when it finds drift (the test's thread)."""
        if self.metrics is not None:
            self.metrics.drift_tested(report)
        result = report.result
        (logger.warning if report.drifted else logger.info)(
            "%s: %s: MMD^2 %.4g, p-value %.4g (threshold %g), the last %d images vs a reference of %d",
            self.about.model, "INPUT DRIFT" if report.drifted else "no input drift", result.score, result.p_value,
            self.task.settings.drift_threshold, report.window, report.reference,
        )  # fmt: skip


def check_model(name: str, metadata: dict, task: str) -> None:
    """A compiled model this handler can serve: the task's, taking and answering what the engine expects."""
    if metadata.get("task") != task:
        raise ValueError(f"{name} is a {metadata.get('task')!r} model, not {task!r}")
    if metadata.get("input_format") != INPUT_FORMAT or metadata.get("output_format") != OUTPUT_FORMAT:
        raise ValueError(f"{name} does not take {INPUT_FORMAT} batches and answer {OUTPUT_FORMAT}: "
                         "rebuild it with `make archive`")  # fmt: skip
