"""A real TorchServe, started once per test session on free loopback ports with the
archives `make archive` built, and stopped at the end."""

import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scripts.building.archive import build_archive
from scripts.samples.photos import photo_crops, write_images
from scripts.serve.server import Server, local_torchserve
from scripts.zoo import MODELS, REPO, get_model

STORE = REPO / "model_store"
STARTUP_TIMEOUT = 300  # s: every model's worker loads torch and warms up on 2 cores


# Test-only variants of the models, archived by the same recipe with other settings:
# name -> (model, YAML settings, whether the archive holds a drift reference).
PROBES = {
    # A long batch delay, so that concurrent clients surely share a batch, and the header that shows it.
    "batching_probe": ("mobilenet_v2", {"batchSize": 8, "maxBatchDelay": 500, "handler": {"batch_size_header": True}}),
    # A model whose worker the fault test may kill without disturbing the other tests.
    "fault_probe": ("mobilenet_v2", {"batchSize": 4, "maxBatchDelay": 20}),
}
# Drift tests on small samples (tests/integration/test_live_drift.py): a test every DRIFT_WINDOW images.
DRIFT_WINDOW, DRIFT_REFERENCE_SIZE = 24, 36
DRIFT_SETTINGS = {
    "drift_window": DRIFT_WINDOW, "drift_every": DRIFT_WINDOW, "drift_permutations": 500, "drift_threshold": 0.01,
    "drift_reference_size": DRIFT_REFERENCE_SIZE,
}  # fmt: skip
# The classifier and the face detector with a reference in the archive; the detector takes
# the first DRIFT_REFERENCE_SIZE images it serves.
DRIFT_PROBES = {"drift_classifier": ("mobilenet_v2", True), "drift_faces": ("face_pixelizer", True)}
DRIFT_PROBES["drift_detector"] = ("yolov5s", False)


def reference_photos(directory: Path) -> Path:
    """The drift probes' reference: crops of real photos (other crops of the same photos
    are the undistorted sample the tests send)."""
    return write_images(directory, photo_crops(DRIFT_REFERENCE_SIZE, seed=0))


@pytest.fixture(scope="session")
def archives(tmp_path_factory) -> tuple[Path, list[str]]:
    """A model store with every model's archive, built (or found up to date) by the
    project's own recipe, and the probe variants: (store, model names)."""
    subprocess.run(["make", "--no-print-directory", "archive"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    store = tmp_path_factory.mktemp("model_store")
    for spec in MODELS:
        (store / f"{spec.name}.mar").symlink_to(STORE / f"{spec.name}.mar")
    variants = {name: (model, settings, None) for name, (model, settings) in PROBES.items()}
    reference = reference_photos(tmp_path_factory.mktemp("drift_reference"))
    for name, (model, archived) in DRIFT_PROBES.items():
        settings = {"batchSize": 4, "maxBatchDelay": 5, "handler": DRIFT_SETTINGS}
        variants[name] = (model, settings, reference if archived else None)
    for name, (model, settings, drift_reference) in variants.items():
        config = store / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"minWorkers": 1, "maxWorkers": 1, "responseTimeout": 60, **settings}))
        spec = get_model(model)
        build_archive(spec, REPO / "build" / spec.artifact, store, name, config, drift_reference)
    return store, [spec.name for spec in MODELS] + list(variants)


@pytest.fixture(scope="session")
def torchserve(archives) -> Server:
    store, names = archives
    with local_torchserve(store, names, timeout=STARTUP_TIMEOUT) as server:
        yield server


def scrape(server: Server) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels without Hostname): value} from the metrics API, parsed by
    prometheus_client."""
    text = requests.get(f"{server.metrics}/metrics", timeout=30).text
    return {
        (sample.name, frozenset((k, v) for k, v in sample.labels.items() if k != "Hostname")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On an integration failure, show the end of TorchServe's logs."""
    outcome = yield
    report = outcome.get_result()
    server = item.funcargs.get("torchserve") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(server, Server):
        for log in ("logs/model_log.log", "logs/ts_log.log"):
            path = server.workdir / log
            if path.is_file():
                report.sections.append((log, "\n".join(path.read_text(errors="replace").splitlines()[-40:])))
