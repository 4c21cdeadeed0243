"""scripts/child_process.py: a child server that exits before it answers is reported at
once (with its log), one that answers is waited for, and stopping it ends its whole
process group, a child that ignores SIGTERM included."""

import sys
import time

import psutil
import pytest

from scripts.child_process import ChildFailed, running, spawn, stop, wait_ready
from scripts.zoo import REPO

PYTHON = sys.executable


def test_a_child_that_exits_first_is_reported_at_once_with_its_log(tmp_path):
    log = tmp_path / "child.log"
    process = spawn([PYTHON, "-c", "import sys; print('cannot import litserve'); sys.exit(3)"], REPO, log=log)
    with pytest.raises(ChildFailed, match=f"the peer exited with status 3 before it answered; see {log}"):
        wait_ready(process, lambda: False, timeout=300, what="the peer", log=log)
    assert "cannot import litserve" in log.read_text()


def test_a_child_is_waited_for_until_it_answers_and_not_past_the_timeout(tmp_path):
    flag = tmp_path / "ready"
    command = [PYTHON, "-c", f"import time, pathlib; time.sleep(0.5); pathlib.Path({str(flag)!r}).touch(); "
               "time.sleep(60)"]  # fmt: skip
    with running(command, flag.exists, timeout=30, what="the server", cwd=REPO, grace=5) as process:
        assert flag.exists() and process.poll() is None
    assert process.poll() is not None
    silent = spawn([PYTHON, "-c", "import time; time.sleep(60)"], REPO)
    with pytest.raises(ChildFailed, match="did not answer within 0 s"):
        wait_ready(silent, lambda: False, timeout=0.5, what="the server")
    stop(silent, grace=5)


def test_stopping_ends_the_whole_group_even_a_child_that_ignores_sigterm():
    script = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); time.sleep(60)")  # fmt: skip
    process = spawn([PYTHON, "-c", script], REPO)
    deadline = time.monotonic() + 30
    while not psutil.Process(process.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    (grandchild,) = psutil.Process(process.pid).children()
    stop(process, grace=0.5)
    assert process.poll() is not None
    grandchild.wait(timeout=10)  # killed with its group
    assert not grandchild.is_running()
