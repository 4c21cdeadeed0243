"""Frame memory, pure: which regions a video frame hides besides the faces found in it --
faces' tracks between and past their detections, and the regions of the frames around it."""

import numpy as np
import pytest

from scripts.client.frame_memory import MATCH_IOU, FaceTracks, between, hidden_regions, inside, link, lookahead
from scripts.samples.faces import covered


def walking(number: int, x0: float = 100.0, speed: float = 3.0, size: int = 24, y: int = 50) -> tuple:
    """A face's box in frame `number`, walking right at `speed` pixels a frame."""
    x = x0 + speed * number
    return (round(x), y, round(x) + size, y + size)


def test_link_pairs_the_best_overlaps_first_each_face_and_box_once():
    expected = np.array([[0, 0, 20, 20], [100, 0, 120, 20]], dtype=float)
    boxes = np.array([[100, 0, 120, 20], [2, 0, 22, 20], [1, 0, 21, 20]], dtype=float)
    assert link(expected, boxes) == [(1, 0), (0, 2)]  # box 1 overlaps face 0 too, less well: left alone


def test_link_refuses_boxes_that_overlap_little_or_differ_in_size():
    expected = np.array([[0, 0, 20, 20]], dtype=float)
    assert link(expected, np.array([[14, 0, 34, 20]], dtype=float)) == []  # IoU 6/34 < MATCH_IOU
    assert MATCH_IOU > 6 / 34
    assert link(expected, np.array([[0, 0, 40, 40]], dtype=float)) == []  # IoU 0.25, twice the size
    assert link(expected, np.array([[-5, -5, 25, 25]], dtype=float)) == [(0, 0)]  # 1.5x: the same face
    assert link(np.zeros((0, 4)), np.array([[0, 0, 1, 1]], dtype=float)) == []


def test_between_lies_on_the_straight_path_rounded_outwards():
    start, end = np.array([0.0, 0.0, 10.0, 10.0]), np.array([9.0, 3.0, 19.0, 13.0])
    assert between(4, start, 7, end) == [(5, (3, 1, 13, 11)), (6, (6, 2, 16, 12))]
    assert between(4, start, 5, end) == []


def test_a_face_missed_between_two_detections_is_filled_in_on_its_path():
    tracks = FaceTracks(track_frames=30)
    for number in (0, 1):
        assert tracks.add(number, [walking(number)]) == []
    for number in range(2, 12):
        assert tracks.add(number, []) == []
    filled = tracks.add(12, [walking(12)])
    assert [number for number, _ in filled] == list(range(2, 12))
    for number, box in filled:
        assert all(abs(a - b) <= 1 for a, b in zip(box, walking(number), strict=True)), number


def test_a_gap_longer_than_track_frames_is_left_to_frame_memory():
    tracks = FaceTracks(track_frames=5)
    tracks.add(0, [walking(0)])
    assert tracks.add(7, [walking(7)]) == []  # 7 frames apart: another face, as far as tracks know


def test_a_face_is_expected_where_it_walks_so_a_long_gap_still_links():
    """Moving 3 px a frame, a 24 px face is 60 px away after 20 frames: linked by where its
    velocity puts it, not by where it was."""
    tracks = FaceTracks(track_frames=30)
    for number in range(5):
        tracks.add(number, [walking(number)])
    assert len(tracks.add(25, [walking(25)])) == 20


def test_two_faces_walking_side_by_side_keep_their_own_tracks():
    tracks = FaceTracks(track_frames=30)
    left, right = (lambda n: walking(n, x0=100)), (lambda n: walking(n, x0=140))
    for number in range(4):
        tracks.add(number, [left(number), right(number)])
    filled = tracks.add(15, [right(15), left(15)])  # both missed for 11 frames; listed the other way round
    assert len(filled) == 22
    for number, box in filled:
        near = min(abs(box[0] - left(number)[0]), abs(box[0] - right(number)[0]))
        assert near <= 1, (number, box)


def test_a_face_found_lately_is_hidden_where_it_would_be_for_reach_frames():
    tracks = FaceTracks(track_frames=30, reach=3)
    tracks.add(0, [walking(0)])
    tracks.add(1, [walking(1)])
    ahead = [tracks.add(number, []) for number in range(2, 7)]
    assert [len(filled) for filled in ahead] == [1, 1, 1, 0, 0]
    assert ahead[2] == [(4, walking(4))]


def test_once_a_face_moves_its_frames_before_its_first_detection_are_filled_in():
    tracks = FaceTracks(track_frames=30, reach=3)
    for number in range(5):
        tracks.add(number, [])
    assert tracks.add(5, [walking(5)]) == []  # one detection: no velocity yet
    filled = tracks.add(6, [walking(6)])
    assert filled == [(2, walking(2)), (3, walking(3)), (4, walking(4))]
    tracks.add(40, [walking(40)])  # long after: its frames before are not looked at again
    assert all(number >= 5 for number, _ in tracks.add(41, [walking(41)]))


def frames_of(regions: list[list]) -> list:
    return [(number, found) for number, found in enumerate(regions)]


@pytest.mark.parametrize("memory", [0, 1, 2, 7])
def test_memory_hides_the_regions_of_the_frames_around_each(memory):
    regions = [[(n, 0, n + 1, 1)] * (n % 3) for n in range(6)]  # frame n found n % 3 regions
    out = list(hidden_regions(iter(frames_of(regions)), memory, track_frames=0))
    assert [frame for frame, _ in out] == list(range(6))
    for number, hidden in out:
        around = [n for n in range(max(0, number - memory), min(6, number + memory + 1)) if n != number]
        assert sorted(hidden) == sorted(region for n in around for region in regions[n]), number


def test_a_frame_comes_out_once_the_frames_its_regions_depend_on_are_in():
    seen = []

    def frames():
        for number in range(12):
            seen.append(number)
            yield number, [walking(number)]

    for number, _hidden in hidden_regions(frames(), memory=2, track_frames=3):
        assert seen[-1] == min(11, number + 6)  # a face's frames before its first detection: 3 + 3 back
    assert lookahead(memory=2, track_frames=3) == 6 and lookahead(memory=7, track_frames=3) == 7
    assert lookahead(memory=5, track_frames=0) == 5


def test_a_walking_face_missed_in_most_frames_is_hidden_in_every_one():
    """Found in 6 frames of 55 -- twice at the start, then every 12th, the last 5 frames
    before the clip ends -- walking 3 px a frame: tracks and memory together hide it in all
    55 (memory alone cannot: its boxes stay where the face was)."""
    found = {0, 1, 13, 25, 37, 49}
    regions = [[walking(n)] if n in found else [] for n in range(55)]
    mask_cover = {}
    for tracks in (0, 30):
        visible = 0
        for number, hidden in hidden_regions(iter(frames_of(regions)), memory=5, track_frames=tracks):
            mask = np.zeros((120, 400), dtype=bool)
            for x1, y1, x2, y2 in regions[number] + hidden:
                mask[max(0, y1) : y2, max(0, x1) : x2] = True
            visible += covered(walking(number), mask) < 0.9
        mask_cover[tracks] = visible
    assert mask_cover[30] == 0 and mask_cover[0] > 20


def visible_frames(regions: list[list], memory: int, track_frames: int) -> list[int]:
    """The frames of a face walking as `walking` in which it shows (under 90 % of its box
    hidden), given each frame's regions found."""
    shown = []
    for number, hidden in hidden_regions(iter(frames_of(regions)), memory, track_frames):
        mask = np.zeros((120, 400), dtype=bool)
        for x1, y1, x2, y2 in inside(regions[number] + hidden, 400, 120):
            mask[y1:y2, x1:x2] = True
        if covered(walking(number), mask) < 0.9:
            shown.append(number)
    return shown


def test_a_face_found_late_in_a_clip_is_hidden_from_its_first_frame_and_as_long_past_its_last():
    """Found only in frames 17, 18 and 28 of 60 -- a small face the detector sees now and
    then: hidden from frame 0 (track_frames back from its first detection) to frame 58 (as
    far past its last). With tracks of 10 frames, frames 0-6 and 39-59 show it; with memory
    alone, every frame but those three (its boxes stay where it was, 3 px a frame behind)."""
    regions = [[walking(n)] if n in (17, 18, 28) else [] for n in range(60)]
    assert visible_frames(regions, memory=5, track_frames=30) == [59]
    assert visible_frames(regions, memory=5, track_frames=10) == [*range(7), *range(39, 60)]
    assert visible_frames(regions, memory=5, track_frames=0) == [n for n in range(60) if n not in (17, 18, 28)]


def test_regions_are_cut_to_the_frame_each_once_and_those_outside_it_dropped():
    regions = [(-5, 2, 10, 12), (95, 95, 130, 140), (100, 0, 120, 10), (3, 4, 5, 6), (-1, 2, 10, 12)]
    assert inside(regions, 100, 100) == [(0, 2, 10, 12), (95, 95, 100, 100), (3, 4, 5, 6)]
