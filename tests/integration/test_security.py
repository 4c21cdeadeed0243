"""TorchServe's secure defaults as this repo configures them (docs/security.md),
checked on a running server."""

import psutil
import pytest

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def frontend(torchserve) -> psutil.Process:
    """The Java frontend: the only java child of the launcher the fixture started."""
    children = psutil.Process(torchserve.process.pid).children(recursive=True)
    (java,) = [child for child in children if "java" in child.name()]
    return java


def test_every_api_listens_on_loopback_only(torchserve):
    listening = [c for c in frontend(torchserve).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert len(listening) == 5  # inference, management, metrics, gRPC inference, gRPC management
    assert {c.laddr.ip for c in listening} <= LOOPBACK, listening


def test_inference_needs_the_inference_token(torchserve):
    assert torchserve.predict("mobilenet_v2", data=b"x", authorized=False).status_code in (400, 401)
    wrong = {"Authorization": "Bearer not-the-key"}
    assert torchserve.predict("mobilenet_v2", data=b"x", headers=wrong).status_code in (400, 401)
    management_key = torchserve.keys.header("management")  # a management key is no inference key
    response = torchserve.inference_api("PUT", "/predictions/mobilenet_v2", authorized=False, headers=management_key)
    assert response.status_code in (400, 401)


def test_management_needs_the_management_token(torchserve):
    assert torchserve.manage("GET", "/models", authorized=False).status_code in (400, 401)
    workers = len(torchserve.workers("mobilenet_v2"))
    scale = f"/models/mobilenet_v2?min_worker={workers + 1}&synchronous=true"
    assert torchserve.manage("PUT", scale, authorized=False).status_code in (400, 401)
    assert len(torchserve.workers("mobilenet_v2")) == workers  # nothing happened
    assert torchserve.manage("GET", "/models").status_code == 200


@pytest.mark.parametrize("url", ["https://example.com/evil.mar", "file:///etc/passwd", "resnet18.mar"])
def test_model_registration_is_refused(torchserve, url):
    before = torchserve.manage("GET", "/models?limit=100").json()
    response = torchserve.manage("POST", f"/models?url={url}")
    assert 400 <= response.status_code < 500, response.text
    assert torchserve.manage("GET", "/models?limit=100").json() == before
