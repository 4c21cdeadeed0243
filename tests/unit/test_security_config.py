"""The repo's own security-relevant files and settings (docs/security.md)."""

import subprocess
from xml.etree import ElementTree

import pytest
import torch

from handlers.service import load_compiled_model
from scripts.ts_api import read_properties
from scripts.zoo import REPO

PROPERTIES = read_properties(REPO / "config.properties")


def test_every_address_is_loopback():
    for key in ("inference_address", "management_address", "metrics_address"):
        assert PROPERTIES[key].startswith("http://127.0.0.1:"), key
    assert PROPERTIES["grpc_inference_address"] == PROPERTIES["grpc_management_address"] == "127.0.0.1"


def test_token_authorization_on_registration_off_and_no_dependency_installs():
    assert PROPERTIES["disable_token_authorization"] == "false"
    assert PROPERTIES["enable_model_api"] == "false"
    assert PROPERTIES["install_py_dep_per_model"] == "false"
    assert PROPERTIES["allowed_urls"].startswith("file://") and "http" not in PROPERTIES["allowed_urls"]


def test_handler_limits_sit_below_torchserves():
    from handlers.settings import ImageHandlerSettings

    defaults = ImageHandlerSettings()
    assert defaults.max_image_bytes < int(PROPERTIES["max_request_size"])
    assert defaults.max_response_bytes < int(PROPERTIES["max_response_size"])


@pytest.mark.parametrize(
    "path",
    ["key_file.json", "logs/model_log.log", "model_store/resnet18.mar", "model_store/.partial-x/m.mar", "build/x.pt"],
)
def test_secrets_logs_and_build_outputs_are_git_ignored(path):
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_serving_loads_torchscript_only_never_a_pickle(tmp_path):
    """A pickled module put where the model belongs is refused without running its payload."""
    marker = tmp_path / "pwned"
    torch.save({"model": Exploit(marker)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="not built by scripts/building/compile.py"):
        load_compiled_model(tmp_path / "model.pt", torch.device("cpu"))
    assert not marker.exists()
    (tmp_path / "model.pt").write_bytes(b"\x80\x04 an old-style pickle, not a zip")
    with pytest.raises(ValueError, match="not a compiled model"):
        load_compiled_model(tmp_path / "model.pt", torch.device("cpu"))


def test_config_properties_holds_no_path_relative_to_the_repo_but_the_stores():
    """Started with this file from another directory, TorchServe must not look for
    repo files there (no log4j path in vmargs: it would be read relative to the start
    directory); only model_store (TorchServe's launcher names it when missing) and
    metrics_config (TorchServe logs that it failed to load it) are relative to the repo
    root, and both exist there."""
    assert "log4j" not in PROPERTIES.get("vmargs", "")
    relative = {key for key, value in PROPERTIES.items() if "/" in value and not value.startswith(("http", "file"))}
    assert relative <= {"metrics_config"}
    assert (REPO / PROPERTIES["model_store"]).is_dir() and (REPO / PROPERTIES["metrics_config"]).is_file()


def test_the_logging_configuration_is_well_formed_xml():
    """log4j ignores a malformed file with only a console warning, and TorchServe then logs nothing."""
    root = ElementTree.parse(REPO / "scripts" / "configs" / "log4j2.xml").getroot()
    files = [appender.get("fileName") for appender in root.iter("RollingFile")]
    assert files and all(
        name.startswith(("${env:LOG_LOCATION:-logs}/", "${env:METRICS_LOCATION:-logs}/")) for name in files
    )


def test_the_gateway_refuses_every_parameter_header_given_twice():
    """TorchServe keeps one of a repeated header before any handler runs; the gateway
    refuses each parameter any model takes, in each spelling the handlers read."""
    from scripts.families import families

    config = (REPO / "deploy" / "haproxy" / "gateway.cfg").read_text()
    params = {param for task in families().values() for param in task.task.request_params}
    for param in params:
        rule = next((line for line in config.splitlines() if f'\\"detail\\":\\"{param} is given by' in line), "")
        spellings = {"x-" + param.replace("_", "-"), "x-" + param}
        assert all(f"req.fhdr_cnt({name}) gt 1" in rule for name in spellings), param
