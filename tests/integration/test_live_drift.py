"""Live input drift through a real TorchServe: crops of real photos keep the drift
p-value high; the same crops heavily blurred, darkened and noised push it below the
threshold. The result is read where an operator reads it: the Prometheus metrics."""

import time

import pytest

from scripts.samples.photos import encode, photo_crops
from tests.integration.conftest import DRIFT_PROBES, DRIFT_REFERENCE_SIZE, DRIFT_SETTINGS, DRIFT_WINDOW, scrape

pytestmark = pytest.mark.integration


def drift_state(server, model: str) -> tuple[float, float | None]:
    """(drift tests run so far, the latest p-value) of `model`, from the metrics address."""
    metrics = scrape(server)
    mine = {"ModelName": model, "Level": "Model"}
    tests = sum(metrics.get(("zoo_drift_tests_total", frozenset({**mine, "outcome": o}.items())), 0.0)
                for o in ("drift", "no_drift"))  # fmt: skip
    return tests, metrics.get(("zoo_drift_p_value", frozenset(mine.items())))


def send(server, model: str, images) -> None:
    statuses = [server.predict(model, data=encode(image, "JPEG", quality=90)).status_code for image in images]
    assert statuses == [200] * len(images)


def p_value_after(server, model: str, tests: float, timeout: float = 60) -> float:
    """The p-value once the test that makes `tests` tests has been published. The worker
    sends the gauges before the counter, but a scrape is not atomic: one running while
    they arrive can show the new count beside the old gauges (TorchServe collects the
    gauges first). The scrape after the one that shows the count has both."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = drift_state(server, model)
        if done >= tests:
            done, p_value = drift_state(server, model)
            assert done == tests, f"{model}: {done} drift tests, expected {tests}"
            return p_value
        time.sleep(0.2)
    raise AssertionError(f"{model}: no drift test {tests} within {timeout} s")


@pytest.mark.parametrize("model", list(DRIFT_PROBES))
def test_drift_p_value_falls_on_distorted_photos(torchserve, model):
    _, archived = DRIFT_PROBES[model]
    if not archived:  # the reference is the first images this worker serves
        send(torchserve, model, photo_crops(DRIFT_REFERENCE_SIZE, seed=0))
    assert drift_state(torchserve, model) == (0, None)  # no test before a full window
    send(torchserve, model, photo_crops(DRIFT_WINDOW, seed=1))  # other crops of the same photos
    undistorted = p_value_after(torchserve, model, 1)
    send(torchserve, model, photo_crops(DRIFT_WINDOW, seed=1, distort=True))
    distorted = p_value_after(torchserve, model, 2)
    threshold = DRIFT_SETTINGS["drift_threshold"]
    print(f"{model}: p-value {undistorted:.4f} on photos, {distorted:.4f} on distorted photos")
    assert undistorted > 0.05 and distorted < threshold, (undistorted, distorted)
    warnings = (torchserve.workdir / "logs" / "model_log.log").read_text(errors="replace")
    assert f"{model}: INPUT DRIFT" in warnings
