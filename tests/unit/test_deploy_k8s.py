"""deploy/k8s: every overlay renders with `kubectl kustomize`, validates against the
Kubernetes schemas (kubernetes-validate), and keeps the invariants the pods rely on:
ports equal to config.properties, probes on the right ports, non-root, resources set,
consistent labels, scrape annotations on the gateway's route to the metrics API, the
gateway's config equal to deploy/haproxy/gateway.cfg and the pod's config.properties equal
to the repo's -- and no port of TorchServe's frontend reachable from outside its pod."""

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from scripts.serve.launch import GUARDED, deployment_properties, host_of, is_loopback
from scripts.serve.replicas import BACKEND, GRPC_BACKEND, METRICS_BACKEND, gateway_config
from scripts.ts_api import read_properties

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["base", "overlays/gpu", "overlays/queue-latency", "overlays/kserve"]
PROPERTIES = read_properties(REPO / "config.properties")
POD_PROPERTIES = read_properties(K8S / "base" / "config.properties")
NAME = {"app.kubernetes.io/name": "torchserve-zoo"}


def port_of(address: str) -> int:
    return urlsplit(address).port


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Each overlay rendered, with a throwaway key where the user's api-key file goes."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl (with its kustomize) is needed to render deploy/k8s")
        pytest.skip("no kubectl here to render deploy/k8s")
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree)
    (tree / "base" / "api-key").write_text("a-key-for-rendering-only")
    documents = {}
    for overlay in OVERLAYS:
        out = subprocess.run([kubectl, "kustomize", str(tree / overlay)], capture_output=True, text=True, check=True)
        documents[overlay] = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    return documents


def by_kind(documents: list[dict], kind: str) -> dict:
    (found,) = [doc for doc in documents if doc["kind"] == kind]
    return found


def test_every_overlay_validates_against_the_kubernetes_schemas(rendered):
    import kubernetes_validate

    for documents in rendered.values():
        for document in documents:
            if document["apiVersion"].startswith("serving.kserve.io/"):
                continue  # a custom resource: its schema is KServe's (checked below)
            kubernetes_validate.validate(document, "1.32", strict=True)


def test_the_pod_config_is_the_repos_with_every_api_on_loopback():
    assert POD_PROPERTIES == PROPERTIES
    assert all(is_loopback(host_of(POD_PROPERTIES[key])) for key in GUARDED)
    # and the pod's launcher accepts it in gateway mode
    assert deployment_properties(POD_PROPERTIES, "gateway", {})["disable_token_authorization"] == "true"


def test_the_pods_gateway_config_is_the_shared_one_with_the_local_torchserve():
    inference, metrics = urlsplit(PROPERTIES["inference_address"]), urlsplit(PROPERTIES["metrics_address"])
    grpc = f"{PROPERTIES['grpc_inference_address']}:{PROPERTIES.get('grpc_inference_port', 7070)}"
    servers = {BACKEND: [("torchserve", f"{inference.hostname}:{inference.port}")],
               GRPC_BACKEND: [("torchserve", grpc)],
               METRICS_BACKEND: [("torchserve", f"{metrics.hostname}:{metrics.port}")]}  # fmt: skip
    expected = gateway_config((REPO / "deploy" / "haproxy" / "gateway.cfg").read_text(), servers)
    assert (K8S / "base" / "gateway.cfg").read_text() == expected


def test_nothing_outside_a_pod_reaches_torchserve_s_frontend(rendered):
    """TorchServe 0.12's frontend bundles Netty 4.1.53 and gRPC 1.50 (docs/security.md): in
    every overlay its container declares no port, its launcher gets no address that is not
    loopback, and every Service leads to the gateway (or, with KServe, to Knative's queue-proxy,
    which reaches the container's loopback)."""
    for overlay, documents in rendered.items():
        for document in documents:
            spec = document.get("spec", {})  # a ConfigMap or a Secret has none
            template = spec.get("template", {}).get("spec") or spec.get("predictor")
            for container in (template or {}).get("containers", []):
                arguments = container.get("args", [])
                addresses = [arguments[i + 1] for i, a in enumerate(arguments) if a.endswith("-address")]
                assert all(is_loopback(host_of(address)) for address in addresses), (overlay, addresses)
                if container["name"] in ("torchserve", "kserve-container"):
                    ports = [p["containerPort"] for p in container.get("ports", [])]
                    assert ports in (
                        [],
                        [port_of(PROPERTIES["inference_address"])] if overlay.endswith("kserve") else [],
                    )
            if document["kind"] == "Service":
                assert {port["targetPort"] for port in document["spec"]["ports"]} <= {"http", "grpc", "gateway-stats"}


def test_the_deployment_keeps_its_invariants(rendered):
    for overlay in ("base", "overlays/gpu", "overlays/queue-latency"):
        documents = rendered[overlay]
        deployment = by_kind(documents, "Deployment")
        pod = deployment["spec"]["template"]
        spec = pod["spec"]
        containers = {c["name"]: c for c in spec["containers"]}
        server, gateway = containers["torchserve"], containers["gateway"]
        # labels: the selector matches the pod, the Service and the PDB select the same pods
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert NAME.items() <= selector.items() and selector.items() <= pod["metadata"]["labels"].items()
        assert by_kind(documents, "Service")["spec"]["selector"] == selector
        assert by_kind(documents, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
        hpa = by_kind(documents, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        # non-root, no privilege escalation, read-only root filesystems
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["resources"]["requests"] and container["resources"]["limits"]
            assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]
        # TorchServe in gateway mode; its probes reach its own inference port on loopback
        assert server["args"][:2] == ["--auth", "gateway"]
        assert "OMP_NUM_THREADS" not in {e["name"] for e in server.get("env", [])}  # threads follow the limit
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert server[probe]["exec"]["command"][:3] == ["python", "-m", "scripts.serve.probe"]
        assert "--alive" in server["livenessProbe"]["exec"]["command"]
        assert "--alive" not in server["readinessProbe"]["exec"]["command"]
        assert server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] >= 300
        # TorchServe's metrics API, scraped through the gateway (deploy/haproxy/gateway.cfg)
        assert "ports" not in server
        annotations = pod["metadata"]["annotations"]
        stats_port = {p["name"]: p["containerPort"] for p in gateway["ports"]}["gateway-stats"]
        assert annotations["prometheus.io/port"] == str(stats_port) and annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/torchserve/metrics"
        # the gateway: the Service's port, its readiness through to TorchServe's /ping
        gateway_env = {e["name"]: e for e in gateway["env"]}
        gateway_ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
        assert gateway_env["ZOO_GATEWAY_BIND"]["value"] == f":{gateway_ports['http']}"
        assert gateway_env["ZOO_GATEWAY_STATS_BIND"]["value"] == f":{gateway_ports['gateway-stats']}"
        assert gateway_env["ZOO_GATEWAY_GRPC_BIND"]["value"] == f":{gateway_ports['grpc']}"
        key = gateway_env["ZOO_API_KEY"]["valueFrom"]["secretKeyRef"]
        secret = by_kind(documents, "Secret")
        assert key["name"] == secret["metadata"]["name"] and key["key"] in secret["data"]
        assert gateway["readinessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
        assert [p["targetPort"] for p in by_kind(documents, "Service")["spec"]["ports"]] == ["http", "grpc"]
        # both containers read the generated ConfigMap
        volume = {v["name"]: v for v in spec["volumes"]}["config"]
        (config_map,) = [d for d in documents if d["metadata"]["name"] == volume["configMap"]["name"]]
        assert config_map["kind"] == "ConfigMap" and set(config_map["data"]) == {"config.properties", "gateway.cfg"}


def test_the_gpu_overlay_asks_for_a_gpu_and_the_cuda_image(rendered):
    server = by_kind(rendered["overlays/gpu"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["image"].endswith(":cuda")
    base = by_kind(rendered["base"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in base["resources"]["limits"] and base["image"].endswith(":cpu")


def test_the_queue_latency_overlay_scales_on_the_metric_its_adapter_rule_serves(rendered):
    documents = rendered["overlays/queue-latency"]
    metrics = by_kind(documents, "HorizontalPodAutoscaler")["spec"]["metrics"]
    (pods,) = [m["pods"] for m in metrics if m["type"] == "Pods"]
    (adapter,) = [d for d in documents if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})]
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == pods["metric"]["name"]
    exported = (REPO / "scripts" / "configs" / "metrics.yaml").read_text()
    for name in ("ts_queue_latency_microseconds", "ts_inference_requests_total"):
        assert name in rule["metricsQuery"] and f"name: {name}" in exported  # metrics TorchServe exports here


def test_the_kserve_overlay_runs_the_image_as_a_custom_predictor(rendered):
    (service,) = rendered["overlays/kserve"]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    assert NAME.items() <= service["metadata"]["labels"].items()
    (container,) = service["spec"]["predictor"]["containers"]
    assert container["image"].startswith("torchserve-zoo:")
    # the queue-proxy reaches TorchServe on loopback: gateway mode, config.properties' port
    assert container["args"][:2] == ["--auth", "gateway"]
    assert [p["containerPort"] for p in container["ports"]] == [port_of(PROPERTIES["inference_address"])]
    assert container["readinessProbe"]["httpGet"]["port"] == port_of(PROPERTIES["inference_address"])
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
    # the metrics API stays on loopback; the queue-proxy scrapes it there and serves it merged
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(port_of(PROPERTIES["metrics_address"]))
    assert annotations["serving.kserve.io/enable-metric-aggregation"] == "true"
