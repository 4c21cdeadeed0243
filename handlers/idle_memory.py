"""Giving back to the system the memory an idle worker's batches freed."""

import ctypes
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


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
