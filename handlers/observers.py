"""What the batch engine calls around the model, never in its way: metrics, the CPU
thread budget, giving idle memory back, and the live input-drift test. An observer's
failure is logged, never a request's.

- Metrics: declared in scripts/configs/metrics.yaml, sent through TorchServe's metrics
  API (`context.metrics`; with metrics_mode=prometheus its frontend exports them); labels
  are bounded (model, stage, status class, error kind), never one per request.
- Thread budget: a CPU worker's torch threads are its share of the cores it may use,
  following the workers alive on the machine (every model, every server) through a
  registry of locked files.
- Idle memory: the memory an idle worker's batches freed, given back to the system.
- Drift: the compiled model's feature vector of every served image goes into a sliding
  window; every `every` images a background thread compares the window with the
  reference sample by the kernel MMD test (drift.py) and publishes the result. The
  request path only copies a batch's features to the CPU and appends them: a batch never
  waits for a test. The reference is the archive's sample (`make archive
  DRIFT_REFERENCE=<dir>`, drift.REFERENCE_FILE) or this worker's first images.
"""

import ctypes
import fcntl
import logging
import math
import os
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from .drift import DriftReport, DriftResult, DriftSettings, mmd_test

logger = logging.getLogger(__name__)


# --- metrics ---------------------------------------------------------------------

REQUESTS = "zoo_requests_total"  # counter: status_class, error
STAGE_SECONDS = "zoo_stage_seconds"  # histogram: stage
# The stages a batch passes, in order: STAGE_SECONDS' "stage" label.
STAGES = DECODE, PREPROCESS, FORWARD, POSTPROCESS = ("decode", "preprocess", "forward", "postprocess")
BATCH_IMAGES = "zoo_forward_batch_images"  # histogram: images per forward pass
TOP1_PROBABILITY = "zoo_top1_probability"  # histogram, classifiers
DETECTIONS_PER_IMAGE = "zoo_detections_per_image"  # histogram, detectors
TOP_DETECTION_CONFIDENCE = "zoo_top_detection_confidence"  # histogram, detectors: an image's best
FACES_PER_IMAGE = "zoo_faces_per_image"  # histogram, face pixelizer
DRIFT_SCORE = "zoo_drift_score"  # gauge: the latest drift test's MMD^2 (observers.py)
DRIFT_P_VALUE = "zoo_drift_p_value"  # gauge: its permutation p-value
DRIFT_TESTS = "zoo_drift_tests_total"  # counter: outcome ("drift", "no_drift")

UNITS = {REQUESTS: "Count", STAGE_SECONDS: "Seconds", BATCH_IMAGES: "Count", TOP1_PROBABILITY: "Ratio"}
UNITS |= {DETECTIONS_PER_IMAGE: "Count", TOP_DETECTION_CONFIDENCE: "Ratio", FACES_PER_IMAGE: "Count"}
UNITS |= {DRIFT_SCORE: "unit", DRIFT_P_VALUE: "Ratio", DRIFT_TESTS: "Count"}
KINDS = {REQUESTS: "COUNTER", DRIFT_TESTS: "COUNTER", DRIFT_SCORE: "GAUGE", DRIFT_P_VALUE: "GAUGE"}  # else HISTOGRAM


def status_class(status: int) -> str:
    """200 -> "2xx", 415 -> "4xx"."""
    return f"{status // 100}xx"


def error_kind(error: str) -> str:
    """An answer's error ("corrupt image") as a label value ("corrupt_image"); "none" for none.
    The handlers' error strings are a fixed vocabulary, so the label set stays bounded."""
    return error.replace(" ", "_") if error else "none"


class Observer:
    """What the batch engine tells an observer, in order; each call does nothing unless
    an observer needs it."""

    def batch_started(self) -> None: ...

    def stage(self, stage: str, seconds: float) -> None: ...  # a stage of the batch (STAGES) ended

    def forwarded(self, images: int, features: torch.Tensor) -> None: ...  # one forward pass

    def observed(self, metric: str, value: float) -> None: ...  # what an answer says (a score, a count)

    def answered(self, outcomes: dict[tuple[int, str], int]) -> None: ...  # (status, error) -> requests

    def batch_ended(self) -> None: ...


class Observers(Observer):
    """Every observer of a worker, called in turn: one that fails is logged and the others,
    and the batch, go on."""

    def __init__(self, *observers: Observer):
        self.observers = [observer for observer in observers if observer is not None]

    def _each(self, call: str, *args) -> None:
        for observer in self.observers:
            try:
                getattr(observer, call)(*args)
            except Exception:
                logger.exception("observer %s failed in %s", type(observer).__name__, call)

    def batch_started(self) -> None:
        self._each("batch_started")

    def stage(self, stage: str, seconds: float) -> None:
        self._each("stage", stage, seconds)

    def forwarded(self, images: int, features: torch.Tensor) -> None:
        self._each("forwarded", images, features)

    def observed(self, metric: str, value: float) -> None:
        self._each("observed", metric, value)

    def answered(self, outcomes: dict[tuple[int, str], int]) -> None:
        self._each("answered", outcomes)

    def batch_ended(self) -> None:
        self._each("batch_ended")

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.stage(stage, time.perf_counter() - started)


class Metrics(Observer):
    """The handler's metrics for one model, through TorchServe's `context.metrics` (the
    worker's context, set by the handler for each batch)."""

    def __init__(self, model_name: str, context=None):
        self.model_name, self.context = model_name, context

    def emit(self, name: str, value: float, **labels: str) -> None:
        """One observation of metric `name` (its kind from KINDS, else a histogram), with
        `labels` in the order the metrics config declares them."""
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        from ts.metrics.dimension import Dimension  # TorchServe's, where there is a context
        from ts.metrics.metric_type_enum import MetricTypes

        dimensions = [Dimension("ModelName", self.model_name), Dimension("Level", "Model")]
        dimensions += [Dimension(key, value) for key, value in labels.items()]
        metrics.add_metric(name, value, UNITS[name], None, dimensions, MetricTypes[KINDS.get(name, "HISTOGRAM")])

    def stage(self, stage: str, seconds: float) -> None:
        self.emit(STAGE_SECONDS, seconds, stage=stage)

    def forwarded(self, images: int, features: torch.Tensor) -> None:
        self.emit(BATCH_IMAGES, images)

    def observed(self, metric: str, value: float) -> None:
        self.emit(metric, value)

    def answered(self, outcomes: dict[tuple[int, str], int]) -> None:
        # One counter increment per outcome in the batch (usually one), not one per request.
        for (status, error), count in outcomes.items():
            self.emit(REQUESTS, count, status_class=status_class(status), error=error_kind(error))

    def drift_tested(self, report: DriftReport) -> None:
        """A drift test's result (from the test's thread)."""
        self.emit(DRIFT_SCORE, report.result.score)
        self.emit(DRIFT_P_VALUE, report.result.p_value)
        self.emit(DRIFT_TESTS, 1, outcome="drift" if report.drifted else "no_drift")


# --- the CPU thread budget ------------------------------------------------------------

# Environment variable naming the worker registry's directory (default: under the temp dir).
REGISTRY_ENV = "TS_ZOO_WORKER_REGISTRY"
WORKER_SUFFIX = ".worker"
# A worker that served no batch for this long leaves the cores to the others (seconds).
ACTIVE_WINDOW_S = 10.0


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


class ThreadBudget(Observer):
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

    def batch_started(self) -> None:
        self.before_batch()


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


# --- idle memory ---------------------------------------------------------------------


class IdleTrimmer(Observer):
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


# glibc's mallopt parameters, and the value that lifts a threshold out of reach.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, OUT_OF_REACH = -1, -3, 2**31 - 1


def idle_trimmer(after_s: float, reuse_large_buffers: bool = False) -> IdleTrimmer:
    """An IdleTrimmer calling glibc's malloc_trim; one that does nothing elsewhere (musl, macOS).

    `reuse_large_buffers` (a CPU worker that trims when idle): glibc serves a block over its
    mmap threshold (32 MB at most) with a fresh mapping and unmaps it when freed, so every
    forward pass page-faults its large activations in again, zeroed by the kernel -- half
    of CenterFace's time on a 4 MP photo (1.12 s vs 0.55 s; 0.35 vs 0.24 s at 1600x1024).
    With both thresholds out of reach they stay in the heap and are reused by the next
    pass; the trimmer gives them back once the worker idles."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        malloc_trim = libc.malloc_trim
    except (OSError, AttributeError):
        logger.info("no glibc malloc_trim here: idle workers keep the memory their batches freed")
        return IdleTrimmer(after_s, None)
    if reuse_large_buffers and after_s > 0:
        reused = libc.mallopt(M_MMAP_THRESHOLD, OUT_OF_REACH) and libc.mallopt(M_TRIM_THRESHOLD, OUT_OF_REACH)
        logger.info("large buffers %s between batches", "reused" if reused else "mapped afresh (mallopt refused)")
    return IdleTrimmer(after_s, lambda: malloc_trim(0))


# --- live input drift ---------------------------------------------------------------


def background_thread() -> None:
    """Set up the drift test's thread: nice 19 and one torch thread.

    Nice 19: on a busy machine the test takes what the request path leaves (Linux: a
    thread's priority is its own; elsewhere it would be the process's).

    One torch thread: a torch op on a second Python thread starts an OpenMP team of its
    own, and once a process's OpenMP threads outnumber its cores, libgomp stops spinning
    between parallel regions in every team of the process (its "throttled" spin count):
    from then on each forward pass of the request path puts its threads to sleep and wakes
    them at every layer (resnet18 at batch 1 on 2 cores: 143 context switches instead of 1,
    and 38 -> 50 ms per pass). OpenMP's thread count is per calling thread, so this sizes
    the test's team only, provided the request path's team was sized first (DriftMonitor)."""
    if sys.platform == "linux":
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError as err:
            logger.warning("drift test thread keeps its priority: %s", err)
    torch.set_num_threads(1)


class DriftMonitor(Observer):
    """The live drift test of one worker (see the module's docstring); `publish` gets
    each test's report on the test's thread."""

    def __init__(
        self,
        settings: DriftSettings,
        publish: Callable[[DriftReport], None],
        reference: torch.Tensor | None = None,
        test: Callable[..., DriftResult] = mmd_test,
    ):
        self.settings = settings
        self.publish = publish
        self.test = test
        self.reference = reference  # Tensor[N, D] once known
        self._collected: list[torch.Tensor] = []  # the first served images' features, until the reference is full
        self._window: deque[torch.Tensor] = deque(maxlen=settings.window)
        self._since_test = 0
        self._lock = threading.Lock()
        self._running: Future | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="drift-test", initializer=background_thread)
        self.tests = 0  # tests run so far
        # torch sizes a thread's OpenMP team at its first parallel op from the last
        # torch.set_num_threads of any thread, and the test's thread sets 1: size the
        # request path's thread (this one) now, from its own setting.
        torch.get_num_threads()

    def add(self, features: torch.Tensor) -> None:
        """The request path: a batch's features (Tensor[B, D], any device) join the
        reference (while it fills) or the window, and a test starts in the background
        when one is due and none is running."""
        rows = features.detach().float().cpu().unbind(0)
        with self._lock:
            if self.reference is None:
                rows = self._collect(rows)
                if self.reference is None:
                    return
            self._window.extend(rows)
            self._since_test += len(rows)
            due = self._since_test >= self.settings.every and len(self._window) == self.settings.window
            if not due or (self._running is not None and not self._running.done()):
                return
            self._since_test = 0
            snapshot = list(self._window)
            self._running = self._executor.submit(self._run, snapshot)

    def forwarded(self, images: int, features: torch.Tensor) -> None:
        self.add(features)

    def _collect(self, rows: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Rows join the reference until it is full -> the rows left over (the window's first)."""
        needed = self.settings.reference_size - len(self._collected)
        self._collected.extend(rows[:needed])
        if len(self._collected) == self.settings.reference_size:
            self.reference, self._collected = torch.stack(self._collected), []
            logger.info("drift reference: the first %d images this worker served", len(self.reference))
        return rows[needed:]

    def _run(self, window: list[torch.Tensor]) -> None:
        try:
            with torch.inference_mode():
                result = self.test(self.reference, torch.stack(window), self.settings.permutations, seed=self.tests)
            self.tests += 1
            drifted = result.p_value < self.settings.threshold
            self.publish(DriftReport(result, len(window), len(self.reference), drifted))
        except Exception:  # a failed test must not stop the monitor (nor reach a request)
            logger.exception("drift test failed")

    def wait(self, timeout: float | None = None) -> None:
        """Until the running test (if any) has published: for tests and shutdown."""
        running = self._running
        if running is not None:
            running.result(timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
