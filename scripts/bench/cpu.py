"""CPU time a server spends, read from /proc: TorchServe's Java frontend and its Python
workers apart. Throughput on a shared 2-core machine varies by 15-20 % from minute to
minute; CPU seconds per request vary far less, so a small cost (metrics, a setting) is
resolvable in them where it is not in req/s."""

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def stat_fields(stat: str) -> tuple[str, list[str]]:
    """A /proc/<pid>/stat line -> (command name, the fields after it: state, ppid, ...). The
    name is read between the first '(' and the last ')': it may hold spaces and parentheses."""
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def process_cpu(stat: str) -> tuple[str, int, float]:
    """A /proc/<pid>/stat line -> (command name, session id, user + system CPU seconds)."""
    name, fields = stat_fields(stat)
    session, utime, stime = int(fields[3]), int(fields[11]), int(fields[12])
    return name, session, (utime + stime) / TICKS_PER_SECOND


def session_processes(session: int, proc: Path = Path("/proc")) -> Iterator[tuple[int, str, float]]:
    """(pid, command name, CPU seconds so far) of every live process in `session` (a server
    started with start_new_session)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name, owner, seconds = process_cpu((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not readable
            continue
        if owner == session:
            yield int(entry.name), name, seconds


def session_cpu(session: int, proc: Path = Path("/proc")) -> dict[str, float]:
    """CPU seconds so far of `session`'s processes: {"frontend": the Java processes',
    "workers": the others'}."""
    totals = {"frontend": 0.0, "workers": 0.0}
    for _pid, name, seconds in session_processes(session, proc):
        totals["frontend" if name == "java" else "workers"] += seconds
    return totals


@contextmanager
def stopped(*sessions: int) -> Iterator[None]:
    """Every process of these sessions stopped (SIGSTOP) meanwhile, then continued: an idle
    server that polls its queues (LitServe's processes spend about half a core so) takes
    no CPU from the server being measured beside it."""
    pids = [pid for session in sessions for pid, _name, _seconds in session_processes(session)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    wait_until_stopped(pids)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def wait_until_stopped(pids: list[int], timeout: float = 5.0, proc: Path = Path("/proc")) -> None:
    """SIGSTOP takes effect asynchronously (a process running on another core stops at its
    next entry into the kernel): wait until each of `pids` is stopped or gone."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                stat = (proc / str(pid) / "stat").read_text()
            except OSError:  # gone
                break
            if stat_fields(stat)[1][0] in "tTZX":  # stopped, or dead
                break
            time.sleep(0.001)
