"""Two TorchServe replicas behind the HAProxy gateway, real processes (scripts/serve/
replicas.py): one key for both, health-checked, and one replica SIGKILLed under load and
restarted while the clients go on, with no failed request (the gateway retries requests
a replica never answered) and the balancer's view following the kill."""

import json
import os

import psutil
import pytest
import requests

from scripts.bench.harness import images
from scripts.bench.replicas import kill_and_restart
from scripts.serve.replicas import descendants, running_replicas
from scripts.setup.haproxy import command_of, prefix_of
from scripts.ts_api import is_loopback

MODEL = "mobilenet_v2"


@pytest.fixture(scope="module")
def cluster(archives, tmp_path_factory):
    import sys
    from pathlib import Path

    if command_of(prefix_of(Path(sys.executable).parents[1])) is None:
        if os.environ.get("CI"):
            pytest.fail("no HAProxy: `make setup` (scripts/setup/haproxy.py) provides it")
        pytest.skip("no HAProxy here (make setup provides it where apt-get works)")
    store, _ = archives
    with running_replicas(store, MODEL, 2, tmp_path_factory.mktemp("replicas")) as running:
        yield running


def test_one_key_for_every_replica_and_nothing_without_it(cluster):
    gateway = cluster.gateway
    body = images()["small"]
    refused = requests.put(f"{gateway.url}/predictions/{MODEL}", data=body, timeout=30)
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized" and refused.json()["status"] == 401
    wrong = requests.put(f"{gateway.url}/predictions/{MODEL}", data=body, timeout=30,
                         headers={"Authorization": "Bearer not-the-key"})  # fmt: skip
    assert wrong.status_code == 401
    assert requests.get(f"{gateway.url}/ping", timeout=30).status_code == 200  # probes need no key
    served = {}
    for _ in range(8):  # least connections spreads sequential requests over both replicas
        answer = requests.put(f"{gateway.url}/predictions/{MODEL}", data=body, headers=gateway.header(), timeout=60)
        assert answer.status_code == 200 and answer.json()["model"] == MODEL
    served = {name: int(row["stot"]) for name, row in gateway.servers().items()}
    assert set(served) == {"ts1", "ts2"} and all(count > 0 for count in served.values()), served


def test_the_replicas_take_no_key_and_listen_on_loopback_only(cluster):
    """Every socket a replica's processes listen on (the frontend's five APIs: its bundled
    Netty and gRPC will never be patched) is on loopback: only the gateway reaches them."""
    for replica in cluster.replicas:
        host, _ = replica.address.split(":")
        assert host == "127.0.0.1"
        config = (replica.workdir / "config.properties").read_text()
        assert "disable_token_authorization=true" in config
        assert not (replica.workdir / "key_file.json").exists()
        listening = [address for pid in [replica.process.pid, *descendants(replica.process.pid)]
                     for address in listening_on(pid)]  # fmt: skip
        assert len(listening) >= 5 and all(is_loopback(address.ip) for address in listening), listening


def listening_on(pid: int) -> list:
    """The addresses process `pid` listens on (none if it has just ended: the metrics collector does)."""
    try:
        return [c.laddr for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    except psutil.NoSuchProcess:
        return []


def test_a_describe_header_never_reaches_torchserve_through_the_gateway(cluster):
    """TorchServe marks its describe call with `describe: True`; a client's copy is
    dropped by the gateway: a request with no input gets the handler's 400, not the
    model's description."""
    gateway = cluster.gateway
    empty_form = {"Content-Type": "multipart/form-data; boundary=x", "describe": "True", **gateway.header()}
    answer = requests.post(f"{gateway.url}/predictions/{MODEL}", data=b"--x--\r\n", headers=empty_form, timeout=60)
    assert answer.status_code == 400 and "task" not in answer.json(), answer.text


def test_torchserve_s_metrics_are_read_through_the_gateway_only_where_it_has_them(cluster):
    """In a pod the gateway serves its TorchServe's metrics API at /torchserve/metrics
    (deploy/k8s); here each replica keeps its own on loopback, and the route says so."""
    stats = cluster.gateway.stats_url
    assert requests.get(f"{stats}/torchserve/metrics", timeout=30).status_code == 503
    assert requests.post(f"{stats}/torchserve/metrics", timeout=30).status_code == 405


def test_grpc_goes_through_the_gateway_with_the_same_key(cluster):
    """TorchServe's gRPC inference API behind HAProxy (HTTP/2 on both sides): the client with
    the gateway's key is answered by a replica; a wrong key never reaches one."""
    import grpc

    from scripts.client.auth import Tokens
    from scripts.client.grpc_client import GrpcClient

    gateway = cluster.gateway
    client = GrpcClient(gateway.grpc_target, "http://unused", Tokens(token=gateway.key), retries=0)
    answer = client.predict(MODEL, images()["small"], {"top_k": "2"})
    assert answer.ok and len(answer.json()["predictions"]) == 2
    stranger = GrpcClient(gateway.grpc_target, "http://unused", Tokens(token="not-the-key"), retries=0)
    with pytest.raises(grpc.RpcError) as refused:
        stranger._call(MODEL, images()["small"], {})
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_what_torchserve_answers_with_500_the_gateway_refuses_with_a_4xx(cluster):
    """Bodies TorchServe's frontend fails on before any handler runs, and a parameter
    header given twice (TorchServe would keep one): a 4xx JSON from the gateway."""
    import http.client

    gateway = cluster.gateway
    url = f"{gateway.url}/predictions/{MODEL}"
    image = images()["small"]
    cases = [
        ("application/x-www-form-urlencoded", image, 415, "unsupported media type"),  # curl --data-binary's default
        ("application/x-www-form-urlencoded; charset=utf-8", b"a=%", 415, "unsupported media type"),
        ("multipart/form-data; boundary=", image, 400, "invalid multipart request"),
        ("multipart/form-data; charset=utf-8; boundary= ", image, 400, "invalid multipart request"),
    ]
    for content_type, body, status, error in cases:
        answer = requests.post(url, data=body, headers={**gateway.header(), "Content-Type": content_type}, timeout=60)
        assert answer.status_code == status and answer.json()["error"] == error, (content_type, answer.text)
    host, port = gateway.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    for first, second in (("X-Top-K", "X-Top-K"), ("X-Top_K", "x-top_k")):
        connection.putrequest("PUT", f"/predictions/{MODEL}")
        for name, value in (*gateway.header().items(), (first, "1"), (second, "3")):
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(image)))
        connection.endheaders(image)
        answer = connection.getresponse()
        document = json.loads(answer.read())
        assert answer.status == 400 and document["detail"].startswith("top_k is given by more than one X- header")
    ok = requests.put(url, data=image, headers={**gateway.header(), "X-Top-K": "2"}, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2


def test_a_killed_replica_costs_no_request_and_comes_back(cluster):
    result = kill_and_restart(cluster, MODEL, images()["small"], clients=4, before=4, after=4)
    failed = {phase: result[phase]["failed"] for phase in ("before", "outage", "after")}
    assert failed == {"before": {}, "outage": {}, "after": {}}, result
    assert result["outage"]["ok"] > 0, result  # the other replica served throughout
    assert result["after"]["ok"] > 0, result
    balancer = result["balancer"]
    assert balancer["ts1"]["checks_down"] >= 1 and balancer["ts1"]["status"].startswith("UP"), balancer
    assert balancer["ts2"]["status"].startswith("UP") and balancer["ts2"]["checks_down"] == 0, balancer
    assert balancer["ts1"]["requests"] > 0 and balancer["ts2"]["requests"] > 0, balancer
    assert result["down_after_s"] < 10, result  # two failed checks a second apart, and some slack
