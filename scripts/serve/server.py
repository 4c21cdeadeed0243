"""Talk to a running TorchServe: read its access keys, wait until every model has a
ready worker, and print the commands to use it.

    python -m scripts.serve.server wait     # used by `make serve`
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import requests

from scripts.child_process import console_script, spawn, stop
from scripts.ts_api import key_refused as refuses_key
from scripts.ts_api import read_properties

REPO = Path(__file__).resolve().parents[2]
# This repo's logging configuration: nothing written per request.
LOG_CONFIG = REPO / "scripts" / "configs" / "log4j2.xml"


@dataclass(frozen=True)
class Keys:
    """TorchServe's token-authorization keys (written to key_file.json at start)."""

    inference: str
    management: str
    api: str

    def header(self, api: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, api)}"}


def read_keys(path: Path) -> Keys:
    keys = json.loads(Path(path).read_text())
    return Keys(keys["inference"]["key"], keys["management"]["key"], keys["API"]["key"])


def key_refused(response: requests.Response) -> bool:
    """TorchServe's answer to a missing, wrong or expired key."""
    return refuses_key(response.status_code, response.text)


def renew_keys(management_url: str, key_file: Path) -> None:
    """New inference and management keys through TorchServe's token API (with the API key,
    which never expires); TorchServe writes them to `key_file`."""
    api = read_keys(key_file).header("api")
    for kind in ("inference", "management"):
        requests.post(f"{management_url}/token", params={"type": kind}, headers=api, timeout=30).raise_for_status()


def frontend_alive(pid_file: Path) -> bool:
    """Whether the TorchServe frontend recorded in `pid_file` still runs."""
    try:
        os.kill(int(Path(pid_file).read_text().split()[0]), 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def wait_until_ready(
    inference_url: str,
    management_url: str,
    key_file: Path,
    timeout: float,
    expected: int | None = None,
    alive: Callable[[], bool] | None = None,
) -> dict[str, int]:
    """Wait until TorchServe answers /ping and every registered model (at least
    `expected` of them) has a READY worker; return {model: ready workers}.
    Give up as soon as `alive()` says the frontend process is gone."""
    deadline = time.monotonic() + timeout
    last_problem = "nothing tried yet"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the TorchServe frontend is not running (last check: {last_problem})")
        try:
            keys = read_keys(key_file)
            ping = requests.get(f"{inference_url}/ping", headers=keys.header("inference"), timeout=5)
            if key_refused(ping):  # expired while the models loaded (a short token_expiration_min)
                renew_keys(management_url, key_file)
                continue
            ready = _ready_workers(management_url, keys)
            if ping.ok and ready and all(ready.values()) and len(ready) >= (expected or 1):
                return ready
            last_problem = f"ping {ping.status_code}, ready workers {ready}"
        except (OSError, KeyError, ValueError, requests.RequestException) as err:
            last_problem = repr(err)
        time.sleep(1)
    raise TimeoutError(f"TorchServe not ready after {timeout:.0f}s: {last_problem}")


def _ready_workers(management_url: str, keys: Keys) -> dict[str, int]:
    header = keys.header("management")
    listing = requests.get(f"{management_url}/models", headers=header, timeout=5)
    listing.raise_for_status()
    ready = {}
    for model in listing.json()["models"]:
        described = requests.get(f"{management_url}/models/{model['modelName']}", headers=header, timeout=5)
        described.raise_for_status()
        workers = described.json()[0]["workers"]
        ready[model["modelName"]] = sum(worker["status"] == "READY" for worker in workers)
    return ready


@dataclass
class Server:
    """A running TorchServe and the calls tests and benchmarks make to it."""

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

    @property
    def metrics(self) -> str | None:
        """The address of TorchServe's Prometheus metrics (metrics_mode=prometheus), else None."""
        properties = read_properties(self.workdir / "config.properties")
        return properties["metrics_address"] if properties.get("metrics_mode") == "prometheus" else None


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def write_config(workdir: Path, store: Path, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The repo's config.properties with free ports, this model store and `overrides`."""
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
    if "metrics_config" in properties:  # relative to the repo root, where `make serve` starts TorchServe
        properties["metrics_config"] = str(REPO / properties["metrics_config"])
    properties.update(overrides or {})
    (workdir / "config.properties").write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    return properties


@contextmanager
def local_torchserve(
    store: Path,
    models: list[str],
    overrides: dict[str, str] | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    log_config: Path | None = LOG_CONFIG,
) -> Iterator[Server]:
    """Start a private TorchServe serving `models` from `store`, wait until every model
    has a ready worker, and stop it afterwards. Nothing is shared with another server:
    TorchServe puts its pid file, worker sockets (path length limit 108, hence a short
    directory) and unpacked models under TMPDIR/TEMP, and its logs under the workdir.
    `log_config=None` keeps TorchServe's own logging configuration."""
    workdir = Path(tempfile.mkdtemp(prefix="ts-"))
    properties = write_config(workdir, store, overrides)
    env = {
        **os.environ,
        "TMPDIR": str(workdir),
        "TEMP": str(workdir),
        "TS_CONFIG_FILE": str(workdir / "config.properties"),  # beats any activated venv's
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "logs"),
        **(env or {}),
    }
    launcher = console_script("torchserve")
    command = [launcher, "--start", "--foreground", "--ncs", "--models", *(f"{name}.mar" for name in models)]
    command += ["--log-config", str(log_config)] if log_config else []
    process = spawn(command, workdir, env, log=workdir / "console.log")
    server = Server(properties["inference_address"], properties["management_address"], None, workdir, process)
    try:
        wait_until_ready(
            server.inference,
            server.management,
            workdir / "key_file.json",
            timeout,
            expected=len(models),
            alive=lambda: process.poll() is None,
        )
        server.keys = read_keys(workdir / "key_file.json")
        yield server
    finally:
        subprocess.run([launcher, "--stop"], env=env, cwd=workdir, capture_output=True, timeout=120)
        stop(process, grace=60)
        shutil.rmtree(workdir, ignore_errors=True)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["wait"])
    parser.add_argument("--config", type=Path, default=REPO / "config.properties")
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"))
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument(
        "--pid-file",
        type=Path,
        default=Path(tempfile.gettempdir()) / ".model_server.pid",  # where `torchserve --start` writes it
    )
    return parser


def main(args: argparse.Namespace) -> None:
    properties = read_properties(args.config)
    inference, management = properties["inference_address"], properties["management_address"]
    try:
        alive = partial(frontend_alive, args.pid_file)
        ready = wait_until_ready(inference, management, args.key_file, args.timeout, alive=alive)
    except (TimeoutError, RuntimeError) as err:
        sys.exit(f"error: {err}; see logs/console.log, logs/ts_log.log and logs/model_log.log")
    print(f"TorchServe is serving {', '.join(sorted(ready))} on {inference}")
    print("Try (the inference key is in key_file.json):")
    print(f"  TOKEN=$(python3 -c \"import json; print(json.load(open('{args.key_file}'))['inference']['key'])\")")
    print(f'  curl -H "Authorization: Bearer $TOKEN" -T photo.jpg {inference}/predictions/{sorted(ready)[0]}')


if __name__ == "__main__":
    main(get_args_parser().parse_args())
