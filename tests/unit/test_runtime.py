"""Device and thread choices of a worker."""

import pytest
import torch

from runtime import configure_threads, select_device, threads_per_worker


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


def test_explicit_thread_count_wins(restore_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert configure_threads(requested=1, workers=1) == 1 == torch.get_num_threads()


def test_operator_omp_num_threads_is_respected(restore_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert configure_threads(requested=0, workers=8) == 1
