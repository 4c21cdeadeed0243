"""Where a peer server's request time goes: each of its processes adds up the time it
spends decoding and in the forward pass, in a small file of its own under $STAGES_DIR,
which the benchmark reads while the server runs -- what our handler's metrics say for ours."""

import mmap
import os
from pathlib import Path

STAGES_ENV = "STAGES_DIR"
COUNTERS = ("requests", "decode_s", "images", "forward_s")  # one float64 each, per worker process


def stage_counters(directory: str | None) -> memoryview | None:
    """This process's COUNTERS, zeroed, in `directory`/<pid>.stages, mapped shared: adding to
    them is a memory write (no system call on the request path), visible to a reader at once."""
    if not directory:
        return None
    path = Path(directory) / f"{os.getpid()}.stages"
    path.write_bytes(bytes(8 * len(COUNTERS)))
    with path.open("r+b") as file:
        return memoryview(mmap.mmap(file.fileno(), 0)).cast("d")


def read_stage_counters(directory: Path) -> dict[str, float]:
    """COUNTERS summed over every worker's file in `directory` (zeros before any worker started)."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    for path in directory.glob("*.stages"):
        values = memoryview(path.read_bytes()).cast("d")
        for name, value in zip(COUNTERS, values, strict=True):
            totals[name] += value
    return totals


def count(counters: memoryview | None, **added: float) -> None:
    """Add to this process's counters by name (COUNTERS); nothing without counters."""
    if counters is not None:
        for name, value in added.items():
            counters[COUNTERS.index(name)] += value
