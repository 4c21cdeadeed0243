"""Where a worker runs its model, and loading a model built by scripts/building/compile.py
(a TorchScript file or an AOTInductor package) with the metadata embedded in it."""

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

import torch
import torch.utils._pytree as pytree

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
