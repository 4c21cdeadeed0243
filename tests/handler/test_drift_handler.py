"""Live drift in the handler: features from the compiled model, reference from the
archive or the first images served, tests off the request path, metrics and a warning."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.drift import REFERENCE_FILE
from scripts.samples.photos import encode
from tests.handler.conftest import DEFAULT_YAML, AlwaysFails

DRIFT_YAML = {
    **DEFAULT_YAML,
    "handler": {"top_k": 1, "drift_reference_size": 12, "drift_window": 12, "drift_every": 12,
                "drift_permutations": 200, "drift_threshold": 0.05},
}  # fmt: skip


def colours(base: tuple[int, int, int], count: int, seed: int) -> list[dict]:
    """Requests of solid images whose colours scatter around `base` (features that vary)."""
    generator = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        colour = np.clip(np.array(base) + generator.normal(0, 12, 3), 0, 255).astype(np.uint8)
        requests.append({"body": encode(Image.new("RGB", (40, 30), tuple(int(c) for c in colour)), "PNG")})
    return requests


def serve(handler, context, requests: list[dict], batch: int = 4) -> list[dict]:
    answers = []
    for start in range(0, len(requests), batch):
        answers += [json.loads(body) for body in handler.handle(requests[start : start + batch], context)]
        handler.drift.wait(30)  # only so that the test can read the result
    return answers


def drift_values(context) -> tuple[list[float], list[float]]:
    return context.metrics.of("zoo_drift_p_value"), context.metrics.of("zoo_drift_score")


def test_drift_flips_when_the_inputs_change_and_answers_stay_the_same(make_handler, caplog):
    handler, context = make_handler(yaml=DRIFT_YAML)
    serve(handler, context, colours((240, 40, 40), 12, seed=0))  # the reference: reddish images
    assert handler.drift.reference.shape == (12, 3)
    assert drift_values(context) == ([], [])  # no test before a full window
    same = serve(handler, context, colours((240, 40, 40), 12, seed=1))
    with caplog.at_level(logging.WARNING):
        shifted = serve(handler, context, colours((40, 40, 240), 12, seed=2))  # bluish: drift
    (p_same, p_shifted), (score_same, score_shifted) = drift_values(context)
    assert p_same > 0.05 and p_shifted < 0.05 and score_shifted > score_same
    assert context.metrics.of("zoo_drift_tests_total", outcome="no_drift") == [1]
    assert context.metrics.of("zoo_drift_tests_total", outcome="drift") == [1]
    assert "INPUT DRIFT" in caplog.text and "p-value" in caplog.text
    assert {a["predictions"][0]["label"] for a in same} == {"red"}  # the answers are the model's as ever
    assert {a["predictions"][0]["label"] for a in shifted} == {"blue"}


def test_the_archive_reference_is_used_from_the_first_image(make_handler, tmp_path):
    reference = torch.tensor([[2.0, -1.5, -1.5], [1.8, -1.4, -1.6], [2.1, -1.6, -1.3], [1.9, -1.5, -1.4]])
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.save({"features": reference, "weights_sha256": None}, model_dir / REFERENCE_FILE)
    handler, context = make_handler(yaml=DRIFT_YAML)  # writes the model into the same directory
    torch.testing.assert_close(handler.drift.reference, reference)
    serve(handler, context, colours((40, 40, 240), 12, seed=3))
    (p_value,), _ = drift_values(context)
    assert p_value < 0.05  # bluish images against a red reference


def test_a_reference_of_other_weights_fails_the_load(make_handler, tmp_path):
    (tmp_path / "model").mkdir()
    torch.save({"features": torch.zeros(4, 3), "weights_sha256": "0" * 64}, tmp_path / "model" / REFERENCE_FILE)
    with pytest.raises(ValueError, match="other weights"):
        make_handler(yaml=DRIFT_YAML)


def test_drift_off_costs_nothing_and_publishes_nothing(make_handler):
    handler, context = make_handler(yaml={**DEFAULT_YAML, "handler": {"drift": False}})
    assert handler.drift is None
    handler.handle(colours((240, 40, 40), 4, seed=0), context)
    assert drift_values(context) == ([], [])


def test_failed_inference_adds_nothing_to_the_window(make_handler):
    yaml = {**DRIFT_YAML, "handler": {**DRIFT_YAML["handler"], "warmup": False}}
    handler, context = make_handler(module=AlwaysFails(), yaml=yaml)
    handler.handle(colours((240, 40, 40), 4, seed=0), context)
    assert handler.drift.reference is None and not handler.drift._collected
