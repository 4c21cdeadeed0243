"""The live drift monitor: reference, window, test schedule, and a request path that
never waits for a test."""

import json
import os
import subprocess
import sys
import threading

import pytest
import torch

from handlers.drift import DriftResult, DriftSettings, load_reference, mmd_test
from handlers.observers import DriftMonitor
from handlers.settings import ImageHandlerSettings, settings_from_mapping
from scripts.zoo import REPO


def sample(n: int, shift: float = 0.0, seed: int = 0, dims: int = 8) -> torch.Tensor:
    return torch.randn(n, dims, generator=torch.Generator().manual_seed(seed)) + shift


class Published(list):
    """The monitor's publish callback: keeps every report."""

    def __call__(self, report):
        self.append(report)


def test_the_first_images_become_the_reference_and_the_rest_the_window():
    published = Published()
    monitor = DriftMonitor(DriftSettings(window=4, every=4, reference_size=6), published)
    first = sample(4, seed=1)
    second = sample(4, seed=2)
    monitor.add(first)
    assert monitor.reference is None
    monitor.add(second)  # completes the reference with 2 rows; the other 2 start the window
    torch.testing.assert_close(monitor.reference, torch.cat([first, second[:2]]))
    monitor.add(sample(2, seed=3))  # window full: 4 rows since the reference, a test is due
    monitor.wait(10)
    assert len(published) == 1 and published[0].window == 4 and published[0].reference == 6


def test_tests_run_every_k_images_once_the_window_is_full():
    published = Published()
    monitor = DriftMonitor(DriftSettings(window=6, every=4, permutations=20), published, reference=sample(10))
    for batch in range(7):
        monitor.add(sample(2, seed=10 + batch))
        monitor.wait(10)
    # 14 images in batches of 2: the first test when the window is full (6 images), then
    # one each time 4 more have come (10, 14).
    assert [report.window for report in published] == [6, 6, 6]
    assert monitor.tests == 3


def test_same_distribution_passes_and_a_shift_is_drift():
    published = Published()
    settings = DriftSettings(window=40, every=40, permutations=200, threshold=0.01)
    monitor = DriftMonitor(settings, published, reference=sample(60, seed=0))
    monitor.add(sample(40, seed=1))
    monitor.wait(10)
    monitor.add(sample(40, shift=1.0, seed=2))
    monitor.wait(10)
    same, shifted = published
    assert same.result.p_value > 0.05 and not same.drifted
    assert shifted.result.p_value < 0.01 and shifted.drifted and shifted.result.score > same.result.score


def test_a_batch_never_waits_for_a_running_test():
    """While a (slow) test runs, add() returns at once and starts no second test; the
    next one starts at the first batch after it ended."""
    release, started, finished, calls = threading.Event(), threading.Event(), threading.Event(), []

    def slow_test(reference, window, permutations, seed):
        calls.append(len(window))
        started.set()
        release.wait(30)
        finished.set()
        return mmd_test(reference, window, permutations, seed)

    published = Published()
    monitor = DriftMonitor(DriftSettings(window=4, every=2), published, reference=sample(8), test=slow_test)
    monitor.add(sample(4, seed=1))
    assert started.wait(10)
    for seed in range(2, 12):
        monitor.add(sample(2, seed=seed))  # due every 2 images, but the test is still running
    # The adds returned while the test was still held: had one waited for it, the test would
    # have finished first (its hold ends after 30 s at the latest). No clock is read.
    assert not finished.is_set() and calls == [4] and not published
    release.set()
    monitor.wait(10)
    monitor.add(sample(1, seed=99))  # overdue: starts at once
    monitor.wait(10)
    assert calls == [4, 4] and len(published) == 2


# Run in a fresh process: whether libgomp throttles depends on every OpenMP team the
# process has ever started, and pytest's process has run torch on many threads.
REQUEST_PATH_AFTER_A_TEST = """
import json, resource, torch
from handlers.observers import DriftMonitor
from handlers.drift import DriftSettings

layers = 12
model = torch.nn.Sequential(*[torch.nn.Conv2d(16, 16, 3, padding=1) for _ in range(layers)]).eval()
image = torch.rand(1, 16, 64, 64)

def switches_per_pass(passes=20):
    with torch.inference_mode():
        model(image)
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(passes):
            model(image)
        after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_nvcsw + after.ru_nivcsw - before.ru_nvcsw - before.ru_nivcsw) / passes

alone = switches_per_pass()
features = torch.randn(200, 512)  # resnet18's feature size: the test's matrix products run in parallel
monitor = DriftMonitor(DriftSettings(window=100, every=100, permutations=50), lambda report: None, features[:100])
monitor.add(features[100:])
monitor.wait(60)
assert monitor.tests == 1
after_a_test = switches_per_pass()
print(json.dumps({"layers": layers, "alone": alone, "after_a_test": after_a_test, "threads": torch.get_num_threads()}))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="on one core no OpenMP team has a second thread")
def test_a_drift_test_does_not_slow_the_request_paths_forward_pass():
    """The drift test runs torch on a thread of its own; were its OpenMP team as large as
    the request path's, libgomp would stop spinning between parallel regions in every team
    (more OpenMP threads than cores), and every later forward pass would put its threads
    to sleep and wake them at each layer: a context switch per layer where there was none."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(script: str) -> str:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()[-1]

    measured = json.loads(run(REQUEST_PATH_AFTER_A_TEST))
    assert measured["threads"] == int(run("import torch; print(torch.get_num_threads())"))  # the request path's
    assert measured["after_a_test"] < measured["alone"] + measured["layers"] / 2, measured


def test_a_failing_test_is_logged_and_the_monitor_goes_on(caplog):
    outcomes = iter([RuntimeError("boom"), None])

    def flaky(reference, window, permutations, seed):
        error = next(outcomes)
        if error:
            raise error
        return DriftResult(0.0, 0.5, 1.0, torch.zeros(0))

    published = Published()
    monitor = DriftMonitor(DriftSettings(window=2, every=2), published, reference=sample(4), test=flaky)
    monitor.add(sample(2, seed=1))
    monitor.wait(10)
    monitor.add(sample(2, seed=2))
    monitor.wait(10)
    assert "drift test failed" in caplog.text and len(published) == 1


def test_features_may_come_from_any_device_and_dtype():
    published = Published()
    monitor = DriftMonitor(DriftSettings(window=2, every=2, reference_size=2), published)
    monitor.add(sample(4).to(torch.bfloat16))
    assert monitor.reference.dtype == torch.float32 and monitor.reference.device.type == "cpu"


def test_the_archive_reference_must_match_the_model(tmp_path):
    path = tmp_path / "drift_reference.pt"
    torch.save({"features": sample(5, dims=3), "weights_sha256": "abc"}, path)
    assert load_reference(path, 3, "abc").shape == (5, 3)
    with pytest.raises(ValueError, match="other weights"):
        load_reference(path, 3, "def")
    with pytest.raises(ValueError, match=r"expected \[N >= 2, 4\]"):
        load_reference(path, 4, "abc")


@pytest.mark.parametrize(
    "setting, value",
    [("drift_window", 1), ("drift_every", 0), ("drift_permutations", -1), ("drift_threshold", 0.0),
     ("drift_threshold", 1.5), ("drift_reference_size", 1)],
)  # fmt: skip
def test_bad_drift_settings_fail_the_load(setting, value):
    with pytest.raises(ValueError, match=setting):
        settings_from_mapping(ImageHandlerSettings, {setting: value})


def test_drift_settings_come_from_the_yaml():
    settings = settings_from_mapping(ImageHandlerSettings, {"drift_window": 50, "drift_threshold": 0.001})
    assert settings.drift_settings == DriftSettings(window=50, threshold=0.001)
