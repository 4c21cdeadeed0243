"""scripts/bench/cpu.py against real processes: CPU time read per session, and a session
stopped while another server is measured."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.bench.cpu import session_cpu, session_processes, stopped


def state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


@pytest.fixture
def busy_session():
    """A process in a session of its own, spinning on a core."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def test_a_stopped_session_spends_no_cpu_and_runs_again_afterwards(busy_session):
    assert [pid for pid, _name, _seconds in session_processes(busy_session)] == [busy_session]
    time.sleep(0.3)
    with stopped(busy_session):
        assert state(busy_session) == "T"
        before = session_cpu(busy_session)["workers"]
        time.sleep(0.5)
        assert session_cpu(busy_session)["workers"] == before
    assert state(busy_session) in "RS"
    time.sleep(0.5)
    assert session_cpu(busy_session)["workers"] > before


def test_a_session_without_processes_is_stopped_trivially():
    with stopped(2**22 + 12345):  # no such session
        pass
