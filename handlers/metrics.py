"""The handlers' metrics, as declared in scripts/configs/metrics.yaml, sent through
TorchServe's metrics API (`context.metrics`). With metrics_mode=prometheus its frontend
exports them at the metrics address; labels are bounded (model, stage, status class,
error kind), never one per request."""

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

REQUESTS = "zoo_requests_total"  # counter: status_class, error
STAGE_SECONDS = "zoo_stage_seconds"  # histogram: stage
# The stages a batch passes, in order: STAGE_SECONDS' "stage" label.
STAGES = DECODE, PREPROCESS, FORWARD, POSTPROCESS = ("decode", "preprocess", "forward", "postprocess")
BATCH_IMAGES = "zoo_forward_batch_images"  # histogram: images per forward pass
TOP1_PROBABILITY = "zoo_top1_probability"  # histogram, classifiers
DETECTIONS_PER_IMAGE = "zoo_detections_per_image"  # histogram, detectors
DETECTION_CONFIDENCE = "zoo_detection_confidence"  # histogram, detectors
FACES_PER_IMAGE = "zoo_faces_per_image"  # histogram, face pixelizer
DRIFT_SCORE = "zoo_drift_score"  # gauge: the latest drift test's MMD^2 (drift_monitor.py)
DRIFT_P_VALUE = "zoo_drift_p_value"  # gauge: its permutation p-value
DRIFT_TESTS = "zoo_drift_tests_total"  # counter: outcome ("drift", "no_drift")
# At most this many detections per image add their confidence (one metric line each).
MAX_CONFIDENCES_PER_IMAGE = 20

UNITS = {REQUESTS: "Count", STAGE_SECONDS: "Seconds", BATCH_IMAGES: "Count", TOP1_PROBABILITY: "Ratio"}
UNITS |= {DETECTIONS_PER_IMAGE: "Count", DETECTION_CONFIDENCE: "Ratio", FACES_PER_IMAGE: "Count"}
UNITS |= {DRIFT_SCORE: "unit", DRIFT_P_VALUE: "Ratio", DRIFT_TESTS: "Count"}
KINDS = {REQUESTS: MetricTypes.COUNTER, DRIFT_TESTS: MetricTypes.COUNTER}
KINDS |= {DRIFT_SCORE: MetricTypes.GAUGE, DRIFT_P_VALUE: MetricTypes.GAUGE}  # the rest: histograms


def status_class(status: int) -> str:
    """200 -> "2xx", 415 -> "4xx"."""
    return f"{status // 100}xx"


def error_kind(error: str) -> str:
    """An answer's error ("corrupt image") as a label value ("corrupt_image"); "none" for none.
    The handlers' error strings are a fixed vocabulary, so the label set stays bounded."""
    return error.replace(" ", "_") if error else "none"


def emit(context, model_name: str, name: str, value: float, **labels: str) -> None:
    """One observation of metric `name` (its kind from KINDS, else a histogram) for this
    model, with `labels` in the order the metrics config declares them."""
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    kind = KINDS.get(name, MetricTypes.HISTOGRAM)
    dimensions = [Dimension("ModelName", model_name), Dimension("Level", "Model")]
    dimensions += [Dimension(key, value) for key, value in labels.items()]
    metrics.add_metric(name, value, UNITS[name], None, dimensions, kind)
