"""The monitoring files use exactly the metrics TorchServe exports here: every metric a
dashboard query names is declared in scripts/configs/metrics.yaml (or is one of the
histogram/counter series Prometheus derives from one), and Prometheus scrapes the
metrics address of config.properties."""

import json
import re

import yaml

from scripts.ts_api import read_properties
from scripts.zoo import REPO

DECLARED = yaml.safe_load((REPO / "scripts" / "configs" / "metrics.yaml").read_text())
# A histogram is exported as name_bucket, name_sum and name_count.
SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "le", "without", "avg", "max", "min"}


def declared_metrics() -> set[str]:
    return {spec["name"] for section in ("ts_metrics", "model_metrics") for kind in DECLARED[section].values()
            for spec in kind}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL query that stand for series: not functions, labels or keywords."""
    without_labels = re.sub(r"\{[^}]*\}|by \([^)]*\)|\[[^\]]*\]", " ", expr)
    words = re.findall(r"(?<![\w.])[A-Za-z_][A-Za-z0-9_]*", without_labels)  # not the e6 of 1e6
    return {word for word in words if word not in PROMQL_WORDS}


def series_of(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in declared_metrics():
            return name.removesuffix(suffix)
    return name


def test_every_dashboard_query_names_an_exported_metric():
    dashboard = json.loads((REPO / "monitoring" / "grafana-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) >= 10
    named = {series_of(name) for query in queries for name in metric_names(query)}
    assert named and named <= declared_metrics(), named - declared_metrics()
    model_metrics = {spec["name"] for kind in DECLARED["model_metrics"].values() for spec in kind}
    assert {name for name in model_metrics if name.startswith("zoo_")} <= named  # every handler metric is shown


def test_prometheus_scrapes_the_metrics_address():
    config = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    address = read_properties(REPO / "config.properties")["metrics_address"]
    assert address == f"http://{target}" and job["metrics_path"] == "/metrics"
