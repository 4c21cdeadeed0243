"""A short soak through a real TorchServe: a mix of models and of good and bad inputs
from concurrent clients, with zero answers other than the expected ones."""

import pytest

from scripts.bench.soak import DEFAULT_MODELS, render_markdown, soak

pytestmark = pytest.mark.integration


def test_short_soak_has_no_unexpected_answers(torchserve):
    report = soak(
        torchserve.workdir / "config.properties",
        torchserve.workdir / "key_file.json",
        list(DEFAULT_MODELS),
        concurrency=6,
        duration=45,
        bad_every=3,
        interval=5,
    )
    assert report["overall"]["unexpected"] == 0, report["unexpected_examples"]
    assert set(report["models"]) == set(DEFAULT_MODELS)
    for stats in report["models"].values():
        assert stats["requests"] > 0 and 200 in stats["statuses"] and set(stats["statuses"]) <= {200, 400, 415}
    assert set(report["memory"]) == set(DEFAULT_MODELS)  # RSS was sampled for every model's workers
    assert "| mobilenet_v2 |" in render_markdown(report)
