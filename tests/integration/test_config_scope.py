"""Activating this repo's venv must not hijack other TorchServes: one started from an
activated shell in another directory, with its own config.properties, uses that config
(its ports, its model store, its security settings), not this repo's."""

import os
import signal
import subprocess
import time

import pytest
import requests

from scripts.serve.server import free_ports
from scripts.zoo import REPO

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["--ts-config config.properties", "--model-store store"])
def test_a_torchserve_started_elsewhere_from_an_activated_shell_keeps_its_own_config(tmp_path, how):
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    (tmp_path / "store").mkdir()
    (tmp_path / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{inference}\n"
        f"management_address=http://127.0.0.1:{management}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\n"
        f"grpc_inference_port={grpc_inference}\ngrpc_management_port={grpc_management}\n"
        "disable_token_authorization=true\nmodel_store=store\n"
    )
    # Started as another project would start it; its pid file goes to its own TEMP.
    script = f'source "{REPO}/.venv/bin/activate" && cd "{tmp_path}" && torchserve --start --ncs --foreground {how}'
    env = {key: value for key, value in os.environ.items() if key != "TS_CONFIG_FILE"}
    env.update(TEMP=str(tmp_path), TMPDIR=str(tmp_path))
    with open(tmp_path / "console.log", "wb") as console:
        process = subprocess.Popen(["bash", "-c", script], env=env, stdout=console, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        deadline, ping = time.monotonic() + 120, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ping = requests.get(f"http://127.0.0.1:{inference}/ping", timeout=5)  # its port, without a token
                break
            except requests.ConnectionError:
                time.sleep(0.5)
        console = (tmp_path / "console.log").read_text(errors="replace")
        assert ping is not None and ping.status_code == 200, console[-3000:]
        assert f"Config file: {tmp_path}/config.properties" in console or "Config file: config.properties" in console
        assert f"Model Store: {tmp_path}/store" in console
        assert str(REPO / "config.properties") not in console
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_the_test_server_logs_with_this_repos_logging_configuration(torchserve):
    console = (torchserve.workdir / "console.log").read_text(errors="replace")
    assert "StatusLogger" not in console, console[:2000]  # log4j found and parsed the file
    assert (torchserve.workdir / "logs" / "model_log.log").is_file()
    access_log = torchserve.workdir / "logs" / "access_log.log"
    assert torchserve.predict("mobilenet_v2", data=b"").status_code == 400
    assert not access_log.exists() or access_log.stat().st_size == 0  # nothing written per request by default
