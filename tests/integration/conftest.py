"""A real TorchServe, started once per test session on free loopback ports with the
archives `make archive` built, and stopped at the end."""

import subprocess
from pathlib import Path

import pytest
import yaml

from scripts.build.archive import build_archive
from scripts.serve.server import Server, local_torchserve
from scripts.zoo import MODELS, REPO, get_model

STORE = REPO / "model_store"
STARTUP_TIMEOUT = 300  # s: every model's worker loads torch and warms up on 2 cores


# Test-only variants of mobilenet_v2, archived by the same recipe with other settings.
PROBES = {
    # A long batch delay, so that concurrent clients surely share a batch, and the header that shows it.
    "batching_probe": {"batchSize": 8, "maxBatchDelay": 500, "handler": {"batch_size_header": True}},
    # A model whose worker the fault test may kill without disturbing the other tests.
    "fault_probe": {"batchSize": 4, "maxBatchDelay": 20},
}


@pytest.fixture(scope="session")
def archives(tmp_path_factory) -> tuple[Path, list[str]]:
    """A model store with every model's archive, built (or found up to date) by the
    project's own recipe, and the probe variants: (store, model names)."""
    subprocess.run(["make", "--no-print-directory", "archive"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    store = tmp_path_factory.mktemp("model_store")
    for spec in MODELS:
        (store / f"{spec.name}.mar").symlink_to(STORE / f"{spec.name}.mar")
    for name, settings in PROBES.items():
        config = store / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"minWorkers": 1, "maxWorkers": 1, "responseTimeout": 60, **settings}))
        build_archive(get_model("mobilenet_v2"), REPO / "build" / "mobilenet_v2.pt", store, name, config)
    return store, [spec.name for spec in MODELS] + list(PROBES)


@pytest.fixture(scope="session")
def torchserve(archives) -> Server:
    store, names = archives
    with local_torchserve(store, names, timeout=STARTUP_TIMEOUT) as server:
        yield server


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
