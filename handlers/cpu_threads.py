"""A CPU worker's torch threads: its share of the cores it may use, following the workers
alive on the machine (every model, every server) through a registry of locked files."""

import fcntl
import logging
import math
import os
import tempfile
import time
import uuid
import weakref
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

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
