"""Top-k decoding and label files."""

import json

import pytest
import torch

from handlers.tasks.classifier import load_labels, top_k_predictions

LABELS = ["cat", "dog", "fish", "bird"]


def test_top_k_is_sorted_softmax():
    logits = torch.tensor([1.0, 3.0, 0.0, 2.0])
    predictions = top_k_predictions(logits, 3, LABELS)
    expected = torch.softmax(logits, 0)
    assert [p["label"] for p in predictions] == ["dog", "bird", "cat"]
    assert [p["index"] for p in predictions] == [1, 3, 0]
    assert predictions[0]["score"] == pytest.approx(expected[1].item(), abs=1e-6)


def test_top_k_larger_than_classes_returns_all():
    assert len(top_k_predictions(torch.zeros(4), 10, LABELS)) == 4


def test_load_labels_accepts_both_torchserve_formats(tmp_path):
    plain, pairs = tmp_path / "plain.json", tmp_path / "pairs.json"
    plain.write_text(json.dumps({str(i): label for i, label in enumerate(LABELS)}))
    pairs.write_text(json.dumps({str(i): [f"n{i:08d}", label] for i, label in enumerate(LABELS)}))
    assert load_labels(plain, 4) == load_labels(pairs, 4) == LABELS


def test_load_labels_refuses_a_mismatched_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"0": "cat", "1": "dog"}))
    with pytest.raises(ValueError, match="exactly the indices 0..3"):
        load_labels(path, 4)
