"""A server run as a child process, one lifecycle for every place that starts one (the bench
harness's servers and peers, a private TorchServe, the replicas, the deployment launcher,
the web page): started in a session of its own, so that it and everything it starts form
one process group; waited for until it answers, and said to have failed as soon as it
exits rather than when a timeout ends; stopped with SIGTERM to its group, then SIGKILL
after a grace period. Standard library only: the runtime image's launcher uses it.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

POLL_S = 0.3  # how often readiness is asked


class ChildFailed(RuntimeError):
    """The child exited before it answered, or did not answer in time."""


def console_script(name: str) -> str:
    """A Python package's command (torchserve, torch-model-archiver): beside this
    interpreter, as a venv has it, else on PATH (`pip install --target DIR` puts it in
    DIR/bin, as on the lent GPU machine)."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is neither beside {sys.executable} nor on PATH: install its package")
    return found


def spawn(command: list[str], cwd: Path, env: Mapping[str, str] | None = None, log: Path | None = None
          ) -> subprocess.Popen:  # fmt: skip
    """`command` in a session of its own; its output appended to `log`, or where this
    process's goes (a container's launcher: the container's log)."""
    environment = None if env is None else dict(env)
    if log is None:
        return subprocess.Popen(command, cwd=cwd, env=environment, start_new_session=True)
    with open(log, "ab") as output:
        return subprocess.Popen(command, cwd=cwd, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def wait_ready(process: subprocess.Popen, ready: Callable[[], bool], timeout: float, what: str,
               log: Path | None = None) -> None:  # fmt: skip
    """Until `ready()` says so; ChildFailed as soon as the process exits, or after `timeout` s.
    `ready` answers False while the child cannot be reached yet (it need not catch that)."""
    deadline = time.monotonic() + timeout
    where = f"; see {log}" if log else ""
    while True:
        if process.poll() is not None:
            raise ChildFailed(f"{what} exited with status {process.returncode} before it answered{where}")
        try:
            if ready():
                return
        except OSError:  # refused, reset: not listening yet (requests' errors are OSErrors too)
            pass
        if time.monotonic() > deadline:
            raise ChildFailed(f"{what} did not answer within {timeout:.0f} s{where}")
        time.sleep(POLL_S)


def stop(process: subprocess.Popen, grace: float, signum: int = signal.SIGTERM) -> None:
    """`signum` to the child's process group; SIGKILL to the group if the child has not
    exited `grace` s later."""
    if process.poll() is None:
        signal_group(process.pid, signum)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        signal_group(process.pid, signal.SIGKILL)
        process.wait()


def signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass  # gone already


@contextmanager
def running(command: list[str], ready: Callable[[], bool], timeout: float, what: str, cwd: Path,
            env: Mapping[str, str] | None = None, log: Path | None = None,
            grace: float = 30) -> Iterator[subprocess.Popen]:  # fmt: skip
    """The child started, once it answers; stopped when the block ends."""
    process = spawn(command, cwd, env, log)
    try:
        wait_ready(process, ready, timeout, what, log)
        yield process
    finally:
        stop(process, grace)
