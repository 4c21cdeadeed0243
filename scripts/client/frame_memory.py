"""What a video frame hides besides the faces found in it: a face the detector misses for
some frames must not show in them.

- **Tracks**: a face found in two frames at most `track_frames` apart, and in none between,
  is hidden in the frames between along the straight path joining its two boxes, and for
  `track_frames` frames past either end of its track where its velocity puts it: a face may
  go unfound that long anywhere on its path -- before its first detection (a clip's first
  frames included) and after its last as between two. Each frame's
  regions are linked to the faces seen before (`FaceTracks`): a face is expected where its
  last box, moved at its recent velocity, would be now, and a region is the same face when
  it overlaps that expected box (IoU >= MATCH_IOU) and is about its size, best overlap
  first, each region and face once.
- **Memory**: the regions of the `memory` frames before and after each frame are hidden in it
  too, whatever the tracks say (a face found once, a face turning, a wrong link).

Both look ahead: a frame comes out once the frames after it that can add to what it hides
are in (`lookahead`: twice `track_frames`, or `memory` where that is more).
Pure: regions in, regions out (x1, y1, x2, y2 in whole pixels).
"""

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

Region = tuple[int, int, int, int]
MATCH_IOU = 0.3  # a region and a face's expected box overlapping this much are the same face
SIZE_RATIO = 1.5  # ...when neither's width or height is more than this times the other's
VELOCITY_FRAMES = 30  # a face's velocity: from its boxes of the last this many frames


@dataclass
class Track:
    """A face followed from frame to frame: its boxes (frame number, box as floats), the
    last VELOCITY_FRAMES frames' worth."""

    seen: deque
    moving: bool = False  # whether it has been found twice (and so has a velocity)

    @property
    def last(self) -> tuple[int, np.ndarray]:
        return self.seen[-1]

    def expected(self, number: int) -> np.ndarray:
        """Where its box would be in frame `number`, moving as it has lately."""
        (first, start), (last, box) = self.seen[0], self.seen[-1]
        velocity = (box - start) / (last - first) if last > first else np.zeros(4)
        return box + velocity * (number - last)

    def add(self, number: int, box: np.ndarray) -> None:
        self.seen.append((number, box))
        while number - self.seen[0][0] > VELOCITY_FRAMES and len(self.seen) > 2:
            self.seen.popleft()


class FaceTracks:
    """Each frame's regions linked to the faces of the frames before (see the module's
    docstring); `add` answers where a face is to be hidden in frames it was not found in."""

    def __init__(self, track_frames: int, reach: int = 0):
        self.track_frames, self.reach = track_frames, reach
        self.tracks: list[Track] = []

    def add(self, number: int, regions: list[Region]) -> list[tuple[int, Region]]:
        """Frame `number`'s regions -> (frame, box) for each frame in which a face is hidden
        along its track: the frames it was missed in between two detections (at most
        track_frames - 1); this one, where it was found `reach` frames ago or less and not
        now; the `reach` frames before its first detection, once its second gives it a
        velocity."""
        self.tracks = [t for t in self.tracks if number - t.last[0] <= self.track_frames]
        boxes = np.array(regions, dtype=np.float64).reshape(-1, 4)
        pairs = link(np.stack([t.expected(number) for t in self.tracks]) if self.tracks else np.zeros((0, 4)), boxes)
        filled: list[tuple[int, Region]] = []
        for t, r in pairs:
            track = self.tracks[t]
            filled += between(*track.last, number, boxes[r])
            track.add(number, boxes[r])
            if not track.moving:  # its first velocity: where it was before it was found
                born, track.moving = track.seen[0][0], True
                filled += [(f, whole(track.expected(f))) for f in range(max(0, born - self.reach), born)]
        linked = dict(pairs)
        for t, track in enumerate(self.tracks):
            if t not in linked and track.moving and number - track.last[0] <= self.reach:
                filled.append((number, whole(track.expected(number))))  # found lately, missed now
        found = set(linked.values())
        self.tracks += [Track(deque([(number, box)])) for r, box in enumerate(boxes) if r not in found]
        return filled


def link(expected: np.ndarray, boxes: np.ndarray) -> list[tuple[int, int]]:
    """Faces' expected boxes [N, 4] and a frame's boxes [M, 4] -> (face, box) pairs of the
    same face: overlapping by MATCH_IOU or more, of a similar size (SIZE_RATIO), the best
    overlaps first, each face and box once."""
    if not len(expected) or not len(boxes):
        return []
    overlap = iou(expected, boxes) * similar_size(expected, boxes)
    faces_at, boxes_at = np.nonzero(overlap >= MATCH_IOU)  # the candidates only: a crowd's matrix is mostly 0
    order = np.argsort(-overlap[faces_at, boxes_at], kind="stable")
    pairs, faces, found = [], set(), set()
    for t, r in zip(faces_at[order].tolist(), boxes_at[order].tolist(), strict=True):
        if t not in faces and r not in found:
            pairs.append((t, r))
            faces.add(t)
            found.add(r)
    return pairs


def between(first: int, start: np.ndarray, last: int, end: np.ndarray) -> list[tuple[int, Region]]:
    """A face's boxes in the frames strictly between `first` and `last`, on the straight
    path from `start` to `end`, rounded outwards to whole pixels."""
    return [(number, whole(start + (end - start) * (number - first) / (last - first)))
            for number in range(first + 1, last)]  # fmt: skip


def whole(box: np.ndarray) -> Region:
    """A box in fractional pixels -> the whole pixels it touches."""
    x1, y1, x2, y2 = box.tolist()
    return math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] and [M, 4] -> their intersection over union [N, M]."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    areas_a, areas_b = (a[:, 2:] - a[:, :2]).prod(axis=1), (b[:, 2:] - b[:, :2]).prod(axis=1)
    return inter / np.maximum(areas_a[:, None] + areas_b[None, :] - inter, 1e-9)


def similar_size(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] and [M, 4] -> [N, M]: 1 where neither's width or height is more than
    SIZE_RATIO times the other's, else 0."""
    sides_a, sides_b = np.maximum(a[:, 2:] - a[:, :2], 1e-9), np.maximum(b[:, 2:] - b[:, :2], 1e-9)
    ratio = sides_a[:, None, :] / sides_b[None, :, :]
    return ((ratio <= SIZE_RATIO) & (ratio >= 1 / SIZE_RATIO)).all(axis=2).astype(np.float64)


def inside(regions: list[Region], width: int, height: int) -> list[Region]:
    """Regions cut to a width x height frame (a face's path can run past its edges), each
    once, in order; those left empty dropped."""
    cut = ((max(0, x1), max(0, y1), min(width, x2), min(height, y2)) for x1, y1, x2, y2 in regions)
    return list(dict.fromkeys((x1, y1, x2, y2) for x1, y1, x2, y2 in cut if x2 > x1 and y2 > y1))


def lookahead(memory: int, track_frames: int) -> int:
    """How many frames after a frame can add to what it hides: a face's frames before its
    first detection, up to `track_frames` back from it, are filled in once its second
    detection (at most `track_frames` later) gives it a velocity; and a frame hides the
    regions of the `memory` frames after it."""
    return max(2 * track_frames, memory)


@dataclass
class Held:
    """A frame waiting to be written: its regions found and those tracks filled in."""

    frame: object
    found: list[Region]
    filled: list[Region] = field(default_factory=list)

    @property
    def regions(self) -> list[Region]:
        return self.found + self.filled


def hidden_regions(
    frames: Iterable[tuple[object, list[Region]]], memory: int, track_frames: int
) -> Iterator[tuple[object, list[Region]]]:
    """(frame, the regions hidden in it), in order -> (frame, the regions to hide in it
    besides): its faces' boxes from tracks, and the regions (found or filled in) of the
    `memory` frames before and after it. A frame comes out once the `lookahead` frames
    after it are in (or the clip ended)."""
    tracks = FaceTracks(track_frames, reach=track_frames)
    held: deque[Held] = deque()
    before: deque[list[Region]] = deque(maxlen=memory)
    first = 0  # the number of held[0]

    def oldest() -> tuple[object, list[Region]]:
        nonlocal first
        entry = held.popleft()
        first += 1
        after = [region for later in list(held)[:memory] for region in later.regions]
        hidden = entry.filled + [region for regions in before for region in regions] + after
        before.append(entry.regions)
        return entry.frame, hidden

    for number, (frame, found) in enumerate(frames):
        held.append(Held(frame, list(found)))
        if track_frames:
            for missed, box in tracks.add(number, found):  # missed >= number - 2 * track_frames
                held[missed - first].filled.append(box)
        if len(held) > lookahead(memory, track_frames):
            yield oldest()
    while held:
        yield oldest()
