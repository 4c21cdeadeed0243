"""YOLOv5 output decoding: thresholds, class-aware NMS against a slow reference,
class filters, settings."""

import dataclasses

import pytest
import torch

from handlers.tasks.detector import (
    DetectionRequest,
    DetectorSettings,
    class_colour,
    class_filter,
    detect_objects,
    detect_objects_batch,
    draw_detections,
)

NAMES = ["person", "bicycle", "car"]


def prediction(cx, cy, w, h, objectness, probabilities) -> list[float]:
    return [cx, cy, w, h, objectness, *probabilities]


def iou(a, b) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def reference_detections(predictions, score_threshold, iou_threshold, max_detections):
    """The obvious, slow version: score every row, sort, greedy per-class suppression."""
    candidates = []
    for row in predictions.tolist():
        cx, cy, w, h, objectness, *probabilities = row
        scores = [p * objectness for p in probabilities]
        score = max(scores)
        if objectness > score_threshold and score > score_threshold:
            candidates.append(([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], score, scores.index(score)))
    candidates.sort(key=lambda c: -c[1])
    kept = []
    for box, score, label in candidates:
        if all(label != other[2] or iou(box, other[0]) <= iou_threshold for other in kept):
            kept.append((box, score, label))
    return kept[:max_detections]


@pytest.mark.parametrize("seed", range(8))
def test_matches_the_slow_reference(seed):
    generator = torch.Generator().manual_seed(seed)
    n, classes = 300, 3
    centres = torch.rand(n, 2, generator=generator) * 100
    sizes = torch.rand(n, 2, generator=generator) * 30 + 5
    scores = torch.rand(n, 1 + classes, generator=generator)
    predictions = torch.cat([centres, sizes, scores], dim=1)
    boxes, got_scores, labels = detect_objects(predictions, 0.25, 0.45, 50)
    expected = reference_detections(predictions, 0.25, 0.45, 50)
    assert len(expected) == len(boxes) > 0
    assert labels.tolist() == [label for _, _, label in expected]
    assert torch.allclose(got_scores, torch.tensor([score for _, score, _ in expected]), atol=1e-6)
    assert torch.allclose(boxes, torch.tensor([box for box, _, _ in expected]), atol=1e-4)


def test_boxes_at_exactly_the_iou_threshold_are_kept():
    # [0, 0, 3, 1] and [1, 0, 4, 1]: intersection 2, union 4 -> IoU exactly 0.5.
    predictions = torch.tensor([prediction(1.5, 0.5, 3, 1, 0.9, [1, 0, 0]), prediction(2.5, 0.5, 3, 1, 0.8, [1, 0, 0])])
    assert len(detect_objects(predictions, 0.25, 0.5, 10)[0]) == 2
    assert len(detect_objects(predictions, 0.25, 0.49, 10)[0]) == 1


def test_nms_is_class_aware():
    same_box = [prediction(50, 50, 20, 20, 0.9, [1, 0, 0]), prediction(50, 50, 20, 20, 0.8, [0, 0, 1])]
    boxes, scores, labels = detect_objects(torch.tensor(same_box), 0.25, 0.45, 10)
    assert labels.tolist() == [0, 2]


def test_duplicates_of_one_class_are_suppressed_and_best_kept():
    rows = [prediction(50, 50, 20, 20, 0.7, [0, 1, 0]), prediction(51, 50, 20, 20, 0.9, [0, 1, 0])]
    boxes, scores, labels = detect_objects(torch.tensor(rows), 0.25, 0.45, 10)
    assert scores.tolist() == pytest.approx([0.9]) and boxes.tolist() == [[41.0, 40.0, 61.0, 60.0]]


def test_empty_input_and_nothing_above_threshold_give_empty_tensors():
    for predictions in (torch.zeros(0, 8), torch.tensor([prediction(5, 5, 2, 2, 0.2, [1, 0, 0])])):
        boxes, scores, labels = detect_objects(predictions, 0.25, 0.45, 10)
        assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def test_score_is_objectness_times_class_probability():
    rows = [prediction(50, 50, 20, 20, 0.9, [0.2, 0.0, 0.0]), prediction(10, 10, 4, 4, 0.5, [0.0, 0.6, 0.0])]
    boxes, scores, labels = detect_objects(torch.tensor(rows), 0.25, 0.45, 10)
    assert labels.tolist() == [1] and scores.tolist() == pytest.approx([0.3])


def test_max_detections_keeps_the_best():
    rows = [prediction(10 + 30 * i, 10, 10, 10, 0.3 + 0.05 * i, [1, 0, 0]) for i in range(10)]
    boxes, scores, labels = detect_objects(torch.tensor(rows), 0.25, 0.45, 3)
    assert scores.tolist() == pytest.approx([0.75, 0.7, 0.65])


def test_class_filter_by_name_or_index():
    rows = [prediction(10, 10, 5, 5, 0.9, [1, 0, 0]), prediction(40, 40, 5, 5, 0.9, [0, 0, 1])]
    wanted = class_filter(("car",), NAMES)
    assert detect_objects(torch.tensor(rows), 0.25, 0.45, 10, wanted)[2].tolist() == [2]
    assert class_filter(("0", " car"), NAMES).tolist() == [0, 2]
    assert class_filter((), NAMES) is None
    with pytest.raises(ValueError, match="unknown class 'dragon'"):
        class_filter(("dragon",), NAMES)
    with pytest.raises(ValueError, match="unknown class '3'"):
        class_filter(("3",), NAMES)


@pytest.mark.parametrize(
    "values", [{"score_threshold": 1.5}, {"iou_threshold": -0.1}, {"max_detections": 0}, {"format": "xml"}]
)
def test_settings_reject_out_of_range_values(values):
    with pytest.raises(ValueError):
        DetectorSettings(**values)


def test_draw_detections_outlines_boxes_on_a_copy():
    image = torch.full((3, 100, 200), 128, dtype=torch.uint8)
    drawn = draw_detections(image, torch.tensor([[20.0, 30.0, 80.0, 90.0]]), [2], ["car 0.90"])
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8
    assert (image == 128).all()  # the input is untouched
    assert tuple(drawn[:, 60, 20].tolist()) == class_colour(2)  # on the left edge
    assert (drawn[:, 60, 150] == 128).all() and (drawn[:, 60, 50] == 128).all()  # outside and inside


def test_class_colours_are_distinct():
    assert len({class_colour(label) for label in range(80)}) == 80


@pytest.mark.parametrize("seed", range(6))
def test_a_batch_detects_what_each_image_detects_alone(seed):
    """detect_objects_batch against detect_objects on each image alone (checked against
    the slow reference above), each image asking for its own thresholds, limit and classes."""
    generator = torch.Generator().manual_seed(seed)
    batch, rows, classes = 5, 400, 7
    centres = torch.rand(batch, rows, 2, generator=generator) * 200
    sizes = torch.rand(batch, rows, 2, generator=generator) * 60 + 4
    scores = torch.rand(batch, rows, 1 + classes, generator=generator)
    predictions = torch.cat([centres, sizes, scores], dim=-1)
    requests = [
        DetectionRequest(0.25, 0.45, 300),
        DetectionRequest(0.5, 0.45, 5),
        DetectionRequest(0.1, 0.3, 50, torch.tensor([1, 4])),
        DetectionRequest(1.0, 0.45, 300),  # nothing passes
        DetectionRequest(0.25, 0.7, 1000, torch.tensor([0])),
    ]
    together = detect_objects_batch(predictions, requests)
    for image, request in enumerate(requests):
        alone = detect_objects(predictions[image], *dataclasses.astuple(request))
        for got, expected in zip(together[image], alone, strict=True):
            assert torch.equal(got, expected)
    assert len(together[3][0]) == 0 and len(together[1][0]) == 5
