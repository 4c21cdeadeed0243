"""The face benchmark's own measuring: the walking crowd's clip and how a frame's face is
judged visible (scripts/samples/faces.py, scripts/bench/faces.py)."""

import numpy as np
import pytest

from scripts.bench.faces import CLIP, grown, region_mask, visible
from scripts.samples.faces import box_iou, covered, walking_crowd


def test_the_walking_crowd_stays_in_frame_never_overlaps_and_moves():
    frames = list(walking_crowd(640, 360, 12, smallest=16, largest=48))
    first, last = frames[0][1], frames[-1][1]
    assert len(first) >= 20 and len({box[2] - box[0] for box in first}) > 1
    for pixels, boxes in frames:
        assert pixels.shape == (360, 640, 3) and pixels.dtype == np.uint8
        assert all(0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360 for x1, y1, x2, y2 in boxes)
        assert all(box_iou(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert all(a[0] != b[0] for a, b in zip(first, last, strict=True))  # every face walked
    again = list(walking_crowd(640, 360, 12, smallest=16, largest=48))
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(frames, again, strict=True))


def test_deface_s_mask_box_grows_each_side_by_the_scale_minus_one():
    assert grown([100, 100, 140, 120], 1.3) == [88, 94, 152, 126]


def test_a_box_mask_covers_its_box_and_an_ellipse_its_inscribed_ellipse():
    box = region_mask([(10, 10, 30, 30)], "box", 50, 40)
    assert box.sum() == 400 and box[10:30, 10:30].all()
    ellipse = region_mask([(10, 10, 30, 30)], "ellipse", 50, 40)
    assert ellipse[20, 20] and not ellipse[10, 10] and ellipse.sum() == pytest.approx(np.pi * 100, rel=0.05)
    assert region_mask([(-5, -5, 3, 3), (60, 60, 90, 90)], "box", 50, 40).sum() == 9  # clipped to the frame


def test_a_face_is_visible_unless_nine_tenths_of_its_box_are_anonymised():
    truth = [((0, 0, 10, 10), (20, 0, 30, 10))] * 2
    answer = {"shape": "box", "seconds": 1.0, "regions": [[(0, 0, 10, 10), (20, 0, 30, 9)], [(0, 0, 10, 10)]]}
    frame = (CLIP["width"], CLIP["height"])
    assert covered((20, 0, 30, 10), region_mask([(20, 0, 30, 9)], "box", *frame)) == 0.9
    assert visible(truth, answer) == {"frames": 2, "frames_with_a_visible_face": 1, "visible_face_frames": 1,
                                      "face_frames": 4, "by_size": {10: [1, 4]}, "fps": 2.0}  # fmt: skip
