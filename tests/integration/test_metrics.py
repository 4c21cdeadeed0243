"""The handlers' metrics as a real TorchServe exports them at its metrics address, in
Prometheus' text format (scripts/configs/metrics.yaml declares them)."""

import time

import pytest

from scripts.samples.photos import encode, photo
from scripts.serve.server import local_torchserve
from scripts.zoo import REPO
from tests.integration.conftest import scrape

pytestmark = pytest.mark.integration


def change(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_a_known_mix_of_requests_is_counted_and_timed(torchserve):
    model = "mobilenet_v2"
    good, corrupt = encode(photo("chelsea"), "JPEG"), encode(photo("coffee"), "JPEG")[:2000]
    mine = {"ModelName": model, "Level": "Model"}
    before = scrape(torchserve)
    statuses = [torchserve.predict(model, data=good).status_code for _ in range(3)]
    statuses += [torchserve.predict(model, data=corrupt).status_code]
    statuses += [torchserve.predict(model, data=good, headers={"X-Top-K": "0"}).status_code]
    assert statuses == [200, 200, 200, 400, 400]
    after = scrape(torchserve)

    def counted(status_class: str, error: str) -> float:
        return change(before, after, "zoo_requests_total", **mine, status_class=status_class, error=error)

    assert counted("2xx", "none") == 3
    assert counted("4xx", "corrupt_image") == 1
    assert counted("4xx", "invalid_parameter") == 1
    assert change(before, after, "zoo_top1_probability_count", **mine) == 3
    assert 3 * 0.5 < change(before, after, "zoo_top1_probability_sum", **mine) <= 3  # the cat: confident
    forwards = change(before, after, "zoo_forward_batch_images_count", **mine)
    assert 1 <= forwards <= 3 and change(before, after, "zoo_forward_batch_images_sum", **mine) == 3
    for stage in ("decode", "preprocess", "forward", "postprocess"):
        count = change(before, after, "zoo_stage_seconds_count", **mine, stage=stage)
        seconds = change(before, after, "zoo_stage_seconds_sum", **mine, stage=stage)
        assert count >= 1 and 0 < seconds / count < 5, (stage, count, seconds)  # plausible per batch


@pytest.mark.parametrize(
    "model, metrics", [("yolov5s", ["zoo_detections_per_image"]), ("face_pixelizer", ["zoo_faces_per_image"])]
)
def test_what_the_detectors_find_is_measured(torchserve, model, metrics):
    before = scrape(torchserve)
    form = {"confidence": "0"} if model == "yolov5s" else {"format": "json"}
    response = torchserve.predict(model, method="POST", files={"data": encode(photo("astronaut"), "JPEG")}, data=form)
    found = response.json()["detections" if model == "yolov5s" else "faces"]
    after = scrape(torchserve)
    mine = {"ModelName": model, "Level": "Model"}
    for name in metrics:
        assert change(before, after, f"{name}_count", **mine) == 1
        assert change(before, after, f"{name}_sum", **mine) == len(found)
    if model == "yolov5s":
        assert change(before, after, "zoo_top_detection_confidence_count", **mine) == 1  # one line per answer
        best = change(before, after, "zoo_top_detection_confidence_sum", **mine)
        assert best == pytest.approx(max(d["confidence"] for d in found), abs=1e-3)
    else:
        assert len(found) == 1  # the astronaut


def test_gpu_utilisation_and_memory_are_exported_from_nvml(archives):
    """TorchServe runs the collector config.properties names (installed by the set-up) and
    exports its GPU lines in Prometheus' format: here from a stand-in NVML with two GPUs,
    as on a GPU machine from the driver's. Every interval, with no traceback in the log."""
    store, stand_in = archives[0], {"PYTHONPATH": str(REPO / "tests" / "fakes" / "nvml")}
    with local_torchserve(store, ["mobilenet_v2"], {"metric_time_interval": "1"}, env=stand_in) as server:
        deadline, samples = time.monotonic() + 60, {}
        while time.monotonic() < deadline and ("GPUUtilization", DEVICE_1) not in samples:
            time.sleep(1)
            samples = scrape(server)
        log = (server.workdir / "logs" / "ts_log.log").read_text()
    assert samples[("GPUUtilization", frozenset({("Level", "Host"), ("DeviceId", "0")}))] == 37
    assert samples[("GPUUtilization", DEVICE_1)] == 38
    assert samples[("GPUMemoryUsed", DEVICE_1)] == 2048
    assert samples[("GPUMemoryUtilization", DEVICE_1)] == 25
    assert ("CPUUtilization", frozenset({("Level", "Host")})) in samples
    assert "Traceback" not in log and "nvgpu" not in log


DEVICE_1 = frozenset({("Level", "Host"), ("DeviceId", "1")})
