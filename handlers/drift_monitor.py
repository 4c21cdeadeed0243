"""Live input drift, per worker: the compiled model's feature vector of every served
image goes into a sliding window; every `every` images a background thread compares
the window with the reference sample by the kernel MMD test (drift.py) and hands the
result to `publish` (the handler turns it into metrics and a warning).

The request path only copies a batch's features to the CPU and appends them: a batch
never waits for a test. While a test runs, new images keep filling the window and the
next test starts at the first batch after it ends.

The reference is the sample stored in the archive (`make archive DRIFT_REFERENCE=<dir>`,
file REFERENCE_FILE) or, without one, the first `reference_size` images this worker
serves.
"""

import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from drift import DriftResult, mmd_test

logger = logging.getLogger(__name__)

REFERENCE_FILE = "drift_reference.pt"  # in the model directory, written by scripts/building/drift_reference.py


@dataclass(frozen=True)
class DriftSettings:
    window: int = 100  # the most recent images compared with the reference
    every: int = 100  # images between two tests
    permutations: int = 200  # relabellings for the p-value (its resolution is 1 / (1 + permutations))
    threshold: float = 0.01  # p-values below it are drift: a warning in the log
    reference_size: int = 100  # images taken as the reference when the archive holds none

    def __post_init__(self):
        for name, low in (("window", 2), ("every", 1), ("permutations", 0), ("reference_size", 2)):
            if not low <= getattr(self, name) <= 100_000:
                raise ValueError(f"drift_{name} must be between {low} and 100000, got {getattr(self, name)}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"drift_threshold must be between 0 and 1, got {self.threshold}")


@dataclass(frozen=True)
class DriftReport:
    """One test's result, with what it compared."""

    result: DriftResult
    window: int  # images in the window
    reference: int  # images in the reference
    drifted: bool  # p-value below the threshold


def load_reference(path: Path, feature_size: int, weights_sha256: str | None) -> torch.Tensor:
    """The archive's reference features (Tensor[N, feature_size]); refused when they come
    from other weights or another feature size: compared with this model's features they
    would report drift that is not there."""
    stored = torch.load(path, map_location="cpu", weights_only=True)
    features = stored["features"]
    if features.ndim != 2 or features.shape[1] != feature_size or len(features) < 2:
        raise ValueError(f"{path.name}: features of shape {tuple(features.shape)}, expected [N >= 2, {feature_size}]")
    if stored.get("weights_sha256") != weights_sha256:
        raise ValueError(f"{path.name} was computed with other weights than this model's: rebuild the archive")
    return features.float()


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


class DriftMonitor:
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
