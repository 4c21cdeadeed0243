"""Device and thread choices of a worker."""

import gc
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree

from handlers.observers import (
    IdleTrimmer,
    ThreadBudget,
    WorkerRegistry,
    cgroup_cpu_quota,
    idle_trimmer,
    thread_budget,
    threads_per_worker,
    usable_cores,
)
from handlers.service import kernel_files_outside_library, load_aoti_package, select_device
from scripts.zoo import REPO


@pytest.mark.parametrize(
    "cores, workers, threads", [(2, 1, 2), (2, 2, 1), (2, 4, 1), (16, 4, 4), (16, 3, 5), (1, 0, 1)]
)
def test_threads_never_oversubscribe(cores, workers, threads):
    assert threads_per_worker(cores, workers) == threads
    assert threads * max(workers, 1) <= max(cores, max(workers, 1))


def test_cpu_when_no_gpu_assigned():
    assert select_device(None) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cpu_when_gpu_assigned_but_cuda_missing():
    assert select_device(0) == torch.device("cpu")


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_an_explicit_thread_count_is_pinned(restore_threads, tmp_path):
    budget = ThreadBudget(1, WorkerRegistry(tmp_path), cores=8, interval=0)
    WorkerRegistry(tmp_path).heartbeat()  # another busy worker does not change a pinned count
    assert budget.before_batch() == 1 == torch.get_num_threads()


def test_operator_omp_num_threads_is_respected(restore_threads, monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    budget = ThreadBudget(0, WorkerRegistry(tmp_path), cores=8, interval=0)
    assert budget.before_batch() == 1 == torch.get_num_threads()


def test_threads_follow_the_busy_workers_alive(restore_threads, monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    budget = ThreadBudget(0, WorkerRegistry(tmp_path), cores=8, interval=0)
    assert budget.threads == 8 == torch.get_num_threads()  # alone
    others = [WorkerRegistry(tmp_path) for _ in range(3)]
    for other in others:
        other.heartbeat()
    assert budget.before_batch() == 2 == torch.get_num_threads()  # four busy workers
    others[0].leave()
    os.utime(others[1].path, (0, 0))  # idle for longer than the active window
    assert budget.before_batch() == 4 == torch.get_num_threads()
    assert not others[0].path.exists()


def test_a_killed_worker_is_never_counted_and_its_file_goes(tmp_path):
    registry = WorkerRegistry(tmp_path)
    code = (
        "import sys, time; from handlers.observers import WorkerRegistry; "
        f"r = WorkerRegistry({str(tmp_path)!r}); r.heartbeat(); print(r.path, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        other = Path(child.stdout.readline().strip())
        assert registry.active_workers() == 2
        child.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel drops its lock
        child.wait(timeout=30)
        assert registry.active_workers() == 1
        assert not other.exists()
    finally:
        child.kill()
        child.wait()


def test_without_a_usable_registry_the_worker_still_runs(restore_threads, tmp_path, caplog):
    (tmp_path / "file").write_text("")
    budget = thread_budget(0, tmp_path / "file" / "registry")  # cannot be a directory
    assert budget.registry is None and budget.before_batch() == budget.threads >= 1
    assert "worker registry unavailable" in caplog.text


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),  # cgroup v2: limits.cpu 2
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup files: unknown
        ({"cpu.max": "garbage"}, None),
    ],
)
def test_the_cgroup_cpu_quota_is_read_from_v1_or_v2(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_a_container_cpu_limit_caps_the_usable_cores(tmp_path):
    """A pod limited to 1.5 CPUs on a machine of many cores: threads for 1 core, not all."""
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == affinity  # no quota
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(affinity + 8) * 100000} 100000\n")  # above the cores: the cores
    assert usable_cores(tmp_path) == affinity


def counting_trimmer(after_s: float) -> tuple[IdleTrimmer, threading.Semaphore]:
    trimmed = threading.Semaphore(0)
    return IdleTrimmer(after_s, trimmed.release), trimmed


def test_an_idle_worker_gives_memory_back_once_per_idle_period():
    trimmer, trimmed = counting_trimmer(0.05)
    trimmer.batch_started()
    trimmer.batch_ended()
    started = time.monotonic()
    assert trimmed.acquire(timeout=10)
    assert time.monotonic() - started >= 0.04  # not before `after_s` of idleness
    assert not trimmed.acquire(timeout=0.2)  # still idle: nothing more to give back
    trimmer.batch_started()
    trimmer.batch_ended()
    assert trimmed.acquire(timeout=10) and trimmer.trims == 2


def test_no_trim_while_batches_keep_coming():
    trimmer, trimmed = counting_trimmer(0.3)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # a batch every 50 ms: never idle for 0.3 s
        trimmer.batch_started()
        time.sleep(0.03)
        trimmer.batch_ended()
        time.sleep(0.02)
        assert trimmer.trims == 0
    assert trimmed.acquire(timeout=10)


def test_a_long_batch_is_not_trimmed_under():
    trimmer, trimmed = counting_trimmer(0.05)
    trimmer.batch_ended()
    trimmer.batch_started()  # before the idle period ran out
    assert not trimmed.acquire(timeout=0.3)
    trimmer.batch_ended()
    assert trimmed.acquire(timeout=10)


def test_releasing_memory_can_be_turned_off():
    trimmer = IdleTrimmer(0, lambda: pytest.fail("trimmed with after_s 0"))
    trimmer.batch_ended()
    time.sleep(0.1)
    assert trimmer.trims == 0
    assert idle_trimmer(1.0).trim is not None  # glibc here


# A process that frees a 64 MB block and takes another (glibc's malloc, each page written):
# the page faults the second costs, then a third's after the idle trim.
REUSE_PROBE = """
import ctypes, resource, sys
from handlers.observers import idle_trimmer
trimmer = idle_trimmer(1.0, reuse_large_buffers=sys.argv[1] == "reuse")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def block_faults():
    before, block = faults(), libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
    return faults() - before
block_faults()
again = block_faults()
trimmer.trim()  # what the worker does once idle: the block goes back to the system
print(again, block_faults())
"""


def test_a_cpu_worker_reuses_large_buffers_between_batches_and_returns_them_when_idle():
    """glibc maps a block over 32 MB afresh each time (16384 page faults for 64 MB);
    idle_trimmer(reuse_large_buffers=True) keeps it in the heap for the next batch, and
    the idle trim gives it back (faulted in again afterwards)."""
    pages = (64 << 20) // resource.getpagesize()

    def probe(mode: str) -> list[int]:
        done = subprocess.run([sys.executable, "-c", REUSE_PROBE, mode], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return [int(value) for value in done.stdout.split()]

    mapped_again, _ = probe("map")
    reused, after_trim = probe("reuse")
    assert mapped_again > 0.9 * pages and reused < 0.05 * pages and after_trim > 0.9 * pages


class FakePackageLoader:
    """torch's AOTInductor package loader, as far as load_aoti_package uses it: it unpacks
    the package under $TMPDIR, where a CUDA package's kernel files are read at first run."""

    def __init__(self, path, model_name, run_single_threaded, num_runners, device_index):
        self.unpacked = Path(tempfile.mkdtemp(dir=os.environ["TMPDIR"])) / "kernels.cubin"  # as the C++ loader
        self.unpacked.write_bytes(b"kernel")

    def get_call_spec(self):
        return "", pytree.treespec_dumps(pytree.tree_flatten(torch.zeros(1))[1])


def package_with(tmp_path, *names) -> Path:
    path = tmp_path / "model.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"")
    return path


def test_only_a_package_with_separate_gpu_kernels_reads_files_at_run_time():
    assert kernel_files_outside_library(["model/data/aotinductor/model/abc.cubin", "model/abc.wrapper.so"])
    assert not kernel_files_outside_library(["model/data/aotinductor/model/abc.wrapper.so", "model/extra/m.json"])


def test_gpu_kernel_files_stay_unpacked_while_the_model_lives(tmp_path, monkeypatch):
    """A CUDA package whose kernels are files of their own (not embedded in the library)
    reads them when it first runs: deleting them after loading crashed the worker."""
    monkeypatch.setattr(torch._C._aoti, "AOTIModelPackageLoader", FakePackageLoader)
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    separate = load_aoti_package(package_with(tmp_path, "model/data/aotinductor/model/k.cubin"))
    kernel_file = separate.loader.unpacked
    assert kernel_file.exists()
    del separate
    gc.collect()
    assert not kernel_file.parent.parent.exists()  # gone with the model
    embedded = load_aoti_package(package_with(tmp_path, "model/data/aotinductor/model/k.wrapper.so"))
    assert not embedded.loader.unpacked.exists()  # gone as soon as it is loaded
