"""scripts/serve/launch.py: token authorization is off only by the explicit gateway mode,
and only with every API on loopback (docs/security.md, "Replicas")."""

import pytest

from scripts.serve.launch import (
    GUARDED,
    REPO,
    UnsafeDeployment,
    archives_of,
    deployment_properties,
    host_of,
    is_loopback,
)
from scripts.ts_api import read_properties

PROPERTIES = read_properties(REPO / "config.properties")


def test_token_mode_keeps_token_authorization_on():
    served = deployment_properties(PROPERTIES, "token", {"inference_address": "http://0.0.0.0:8080"})
    assert served["disable_token_authorization"] == "false"
    assert served["inference_address"] == "http://0.0.0.0:8080"  # a container's port, with keys


def test_a_config_file_cannot_turn_token_authorization_off_by_itself():
    unsafe = {**PROPERTIES, "disable_token_authorization": "TRUE"}
    with pytest.raises(UnsafeDeployment, match="only by the explicit --auth gateway"):
        deployment_properties(unsafe, "token", {})


def test_gateway_mode_turns_token_authorization_off_with_every_api_on_loopback():
    served = deployment_properties(PROPERTIES, "gateway", {})
    assert served["disable_token_authorization"] == "true"
    assert all(is_loopback(host_of(served[key])) for key in GUARDED)


@pytest.mark.parametrize(
    "override",
    [
        {"inference_address": "http://0.0.0.0:8080"},
        {"management_address": "http://10.1.2.3:8081"},
        {"inference_address": "http://my-host:8080"},  # a name: not provably loopback
        {"grpc_inference_address": "0.0.0.0"},
        {"grpc_management_address": "::"},
        {"metrics_address": "http://0.0.0.0:8082"},  # keyless anyway, but the frontend's Netty is unpatched
    ],
)
def test_gateway_mode_is_refused_when_an_api_leaves_loopback(override):
    with pytest.raises(UnsafeDeployment, match=next(iter(override))):
        deployment_properties(PROPERTIES, "gateway", override)


def test_gateway_mode_is_refused_when_grpc_would_bind_every_interface():
    """TorchServe binds gRPC to 0.0.0.0 when no address is configured."""
    without = {k: v for k, v in PROPERTIES.items() if k != "grpc_inference_address"}
    with pytest.raises(UnsafeDeployment, match="grpc_inference_address=0.0.0.0"):
        deployment_properties(without, "gateway", {})


def test_loopback_names_and_ipv6_count_as_loopback():
    loopback = {"inference_address": "http://localhost:8080", "management_address": "http://[::1]:8081"}
    assert deployment_properties(PROPERTIES, "gateway", loopback)["disable_token_authorization"] == "true"


def test_an_unknown_mode_is_refused():
    with pytest.raises(UnsafeDeployment, match="unknown auth mode"):
        deployment_properties(PROPERTIES, "none", {})


def test_models_are_named_as_torchserve_finds_them_in_the_store():
    assert archives_of("all") == ["all"]
    assert archives_of("mobilenet_v2, yolov5s.mar") == ["mobilenet_v2.mar", "yolov5s.mar"]
    assert archives_of("faces=face_pixelizer.mar") == ["faces=face_pixelizer.mar"]
