"""Where and how a worker runs its model: device, CPU threads, loading a compiled model."""

import contextlib
import ctypes
import fcntl
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.utils._pytree as pytree

logger = logging.getLogger(__name__)

# Name of the JSON document scripts/build/compile.py embeds in every TorchScript file.
METADATA_FILE = "metadata.json"
# Environment variable naming the worker registry's directory (default: under the temp dir).
REGISTRY_ENV = "TS_ZOO_WORKER_REGISTRY"
WORKER_SUFFIX = ".worker"
# A worker that served no batch for this long leaves the cores to the others (seconds).
ACTIVE_WINDOW_S = 10.0


def select_device(gpu_id: int | None) -> torch.device:
    """The device TorchServe assigned to this worker (`gpu_id`), else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device("cuda", int(gpu_id))
    return torch.device("cpu")


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPU cores this process may use: the cores it may run on (taskset, cpuset), and no
    more than its cgroup's CPU quota (a container's CPU limit: Kubernetes' limits.cpu,
    `docker run --cpus`), which affinity does not show."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    return min(cores, max(1, int(quota))) if quota else cores


def cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs the cgroup may use per period (2.0 for a limit of 2 CPUs), None when unlimited
    or unknown: cgroup v2's cpu.max ("200000 100000"), else v1's cfs_quota_us/cfs_period_us."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def threads_per_worker(cores: int, workers: int) -> int:
    """Intra-op threads so that `workers` busy workers never oversubscribe `cores`."""
    return max(1, cores // max(1, workers))


def default_registry_dir() -> Path:
    """Where this machine's CPU workers register: $TS_ZOO_WORKER_REGISTRY, else a per-user
    directory under the system's temporary directory, shared by every TorchServe of the user."""
    configured = os.environ.get(REGISTRY_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"torchserve-zoo-workers-{os.getuid()}"


class WorkerRegistry:
    """The CPU workers alive on this machine, every model and every server together.

    Each worker owns one file in a shared directory and holds an exclusive `flock` on it
    for its whole life: the kernel releases the lock however the process ends (a
    management-API scale-down, SIGKILL, a crash), so a dead worker is never counted and
    its file is removed by whoever looks next. A worker touches its file at every batch;
    one that served no batch for `active_window` seconds does not compete for the cores.
    """

    def __init__(self, directory: Path, active_window: float = ACTIVE_WINDOW_S):
        self.directory = Path(directory)
        self.active_window = active_window
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Locked under a temporary name, then renamed: nobody sees the file unlocked.
        pending = self.directory / f".{os.getpid()}-{uuid.uuid4().hex}.joining"
        self._fd = os.open(pending, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.path = pending.with_name(pending.name[1:].replace(".joining", WORKER_SUFFIX))
        os.rename(pending, self.path)
        self._finalizer = weakref.finalize(self, _leave, self._fd, self.path)

    def heartbeat(self) -> None:
        os.utime(self._fd)

    def active_workers(self) -> int:
        """Workers alive that served a batch in the last `active_window` s, this one included."""
        horizon = time.time() - self.active_window
        active = 1
        for path in self.directory.glob(f"*{WORKER_SUFFIX}"):
            if path != self.path and _alive_since(path, horizon):
                active += 1
        return active

    def leave(self) -> None:
        self._finalizer()


def _alive_since(path: Path, horizon: float) -> bool:
    """Whether another worker holds `path` and touched it after `horizon`; a file nobody
    holds belongs to a dead worker and is removed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # removed meanwhile by another reader: its worker had ended
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:  # held: its worker is alive
        return os.fstat(fd).st_mtime >= horizon
    else:
        path.unlink(missing_ok=True)
        return False
    finally:
        os.close(fd)


def _leave(fd: int, path: Path) -> None:
    path.unlink(missing_ok=True)
    os.close(fd)


class ThreadBudget:
    """This worker's torch CPU threads.

    TorchServe leaves torch's default (one thread per core) in every worker, so N workers
    on N cores run N*N threads and throughput collapses. Here an explicit `num_threads`
    setting wins, then an operator's OMP_NUM_THREADS; otherwise the worker takes cores ÷
    the workers competing for them (`WorkerRegistry.active_workers`), re-read before a
    batch at most every `interval` seconds: scaling a model through the management API,
    or another model getting busy, changes every worker's share within a second.
    """

    def __init__(self, requested: int, registry: WorkerRegistry | None, cores: int, interval: float = 0.5):
        self.registry, self.cores, self.interval = registry, cores, interval
        self.pinned = requested or (torch.get_num_threads() if os.environ.get("OMP_NUM_THREADS") else 0)
        self._checked = -math.inf
        try:
            torch.set_num_interop_threads(1)  # a worker runs one forward pass at a time
        except RuntimeError as err:  # already set, or parallel work already ran in this process
            logger.debug("inter-op threads left at %d: %s", torch.get_num_interop_threads(), err)
        self.threads = self.pinned or threads_per_worker(cores, registry.active_workers() if registry else 1)
        torch.set_num_threads(self.threads)

    def before_batch(self) -> int:
        """Announce this worker as busy and follow the current share of the cores."""
        if self.registry is None:
            return self.threads
        self.registry.heartbeat()
        now = time.monotonic()
        if not self.pinned and now - self._checked >= self.interval:
            self._checked = now
            active = self.registry.active_workers()
            threads = threads_per_worker(self.cores, active)
            if threads != self.threads:
                logger.info(
                    "CPU threads %d -> %d: %d busy workers on %d cores", self.threads, threads, active, self.cores
                )
                torch.set_num_threads(threads)
                self.threads = threads
        return self.threads


def thread_budget(requested: int, registry_dir: Path | None = None) -> ThreadBudget:
    """A CPU worker's ThreadBudget, registered in this machine's worker registry; if the
    registry cannot be used (read-only disk), the worker keeps all usable cores' share
    as if alone, and says so."""
    try:
        registry = WorkerRegistry(registry_dir or default_registry_dir())
    except OSError as err:
        logger.warning("worker registry unavailable (%s): CPU threads will not follow the worker count", err)
        registry = None
    return ThreadBudget(requested, registry, usable_cores())


class IdleTrimmer:
    """Gives the memory a worker's batches freed back to the system once the worker has
    been idle for `after_s` seconds: glibc keeps freed blocks below its mmap threshold
    (which grows to 32 MB) in its heaps for reuse, so a worker that served one burst
    of large batches holds that peak for ever. `malloc_trim(0)` returns the free pages of
    every heap; it runs once per idle period, on a thread of its own, never during a batch
    that has started. `trim` None (not glibc) or `after_s` 0: nothing happens."""

    def __init__(self, after_s: float, trim: Callable[[], object] | None = None):
        self.after_s, self.trim = after_s, trim
        self.trims = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._busy, self._pending, self._ended = False, False, 0.0
        if trim is not None and after_s > 0:
            threading.Thread(target=self._run, name="idle-trimmer", daemon=True).start()

    def batch_started(self) -> None:
        with self._lock:
            self._busy = True

    def batch_ended(self) -> None:
        with self._lock:
            self._busy, self._pending, self._ended = False, True, time.monotonic()
        self._wake.set()

    def _run(self) -> None:
        while self._wake.wait():
            self._wake.clear()
            while True:
                with self._lock:
                    if self._busy or not self._pending:
                        break
                    wait = self._ended + self.after_s - time.monotonic()
                    self._pending = wait > 0
                if wait > 0:
                    time.sleep(wait)  # a batch meanwhile moves the deadline; re-read above
                    continue
                self.trim()
                self.trims += 1
                break


def idle_trimmer(after_s: float) -> IdleTrimmer:
    """An IdleTrimmer calling glibc's malloc_trim; one that does nothing elsewhere (musl, macOS)."""
    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        logger.info("no glibc malloc_trim here: idle workers keep the memory their batches freed")
        return IdleTrimmer(after_s, None)
    return IdleTrimmer(after_s, lambda: malloc_trim(0))


def load_compiled_model(path: Path, device: torch.device, optimize: bool = True) -> tuple[object, dict]:
    """Load a model built by scripts/build/compile.py, with its embedded metadata: a TorchScript
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
    which a worker stopped or killed by TorchServe never does: every worker start used to
    leave a copy behind until the disk filled. Here it unpacks into a directory of its own,
    removed as soon as the model is loaded (the process keeps the mapped files open) --
    unless the package keeps GPU kernels in files of their own, which the model reads
    only when it first runs them (a CUDA package built without
    `aot_inductor.embed_kernel_binary`; scripts/build/compile.py embeds them): then the
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
                raise ValueError(f"{path} has no embedded {METADATA_FILE}: not built by scripts/build/compile.py")
            return json.loads(archive.read(name))
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a compiled model (TorchScript or AOTInductor package): {err}") from err
