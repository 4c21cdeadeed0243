"""A real TorchServe, started once per test session on free loopback ports with the
archives `make archive` built, and stopped at the end."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from scripts.archive import build_archive
from scripts.server import Keys, read_keys, read_properties, wait_until_ready
from scripts.zoo import MODELS, REPO, get_model

STORE = REPO / "model_store"
STARTUP_TIMEOUT = 300  # s: every model's worker loads torch and warms up on 2 cores


@dataclass
class Server:
    inference: str
    management: str
    keys: Keys
    workdir: Path
    process: subprocess.Popen | None = None  # the launcher; TorchServe's Java frontend is its child

    def inference_api(self, method: str, path: str, authorized: bool = True, **kwargs) -> requests.Response:
        headers = {**(self.keys.header("inference") if authorized else {}), **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.inference}{path}", headers=headers, timeout=120, **kwargs)

    def predict(self, model: str, method: str = "PUT", **kwargs) -> requests.Response:
        """PUT of the raw file is what `curl -T` does; pass method="POST" for forms and JSON."""
        return self.inference_api(method, f"/predictions/{model}", **kwargs)

    def manage(self, method: str, path: str, authorized: bool = True, **kwargs) -> requests.Response:
        headers = self.keys.header("management") if authorized else {}
        return requests.request(method, f"{self.management}{path}", headers=headers, timeout=120, **kwargs)

    def workers(self, model: str) -> list[dict]:
        (description,) = self.manage("GET", f"/models/{model}").json()
        return description["workers"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def write_config(workdir: Path, store: Path) -> dict[str, str]:
    """The repo's config.properties with this session's ports and model store."""
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    properties = read_properties(REPO / "config.properties")
    properties.update(
        inference_address=f"http://127.0.0.1:{inference}",
        management_address=f"http://127.0.0.1:{management}",
        metrics_address=f"http://127.0.0.1:{metrics}",
        grpc_inference_port=str(grpc_inference),
        grpc_management_port=str(grpc_management),
        model_store=str(store),
    )
    (workdir / "config.properties").write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    return properties


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
    # A short private directory: TorchServe puts its pid file, worker sockets (path
    # length limit 108) and unpacked models under TMPDIR/TEMP, so two servers never meet.
    workdir = Path(tempfile.mkdtemp(prefix="ts-"))
    properties = write_config(workdir, store)
    env = {
        **os.environ,
        "TMPDIR": str(workdir),
        "TEMP": str(workdir),
        "TS_CONFIG_FILE": str(workdir / "config.properties"),  # beats any activated venv's
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "logs"),
    }
    torchserve = str(Path(sys.executable).with_name("torchserve"))
    command = [torchserve, "--start", "--foreground", "--ncs", "--models", *(f"{name}.mar" for name in names)]
    with open(workdir / "console.log", "wb") as console:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(properties["inference_address"], properties["management_address"], None, workdir, process)
    try:
        wait_until_ready(
            server.inference,
            server.management,
            workdir / "key_file.json",
            STARTUP_TIMEOUT,
            expected=len(names),
            alive=lambda: process.poll() is None,
        )
        server.keys = read_keys(workdir / "key_file.json")
        yield server
    finally:
        subprocess.run([torchserve, "--stop"], env=env, cwd=workdir, capture_output=True, timeout=120)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


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
