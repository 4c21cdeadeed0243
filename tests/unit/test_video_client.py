"""The video client's frame geometry, pure: turning a stored frame upright and back,
padding an odd size to even, and what --faces-json writes per frame."""

import io
import json
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
from PIL import Image

from scripts.client.cli import get_args_parser, main
from scripts.client.options import PARAMETERS, request_parameters
from scripts.client.rest import Answer
from scripts.client.video import (
    FRAME_MEMORY,
    TRACK_FRAMES,
    FrameRefused,
    Orientation,
    anonymise_video,
    as_stored,
    even_size,
    faces_record,
    in_order,
    mosaic,
    orientation_of,
    padded_to_even,
    upright,
)
from scripts.samples.clips import panning_clip
from scripts.samples.photos import photo


@pytest.mark.parametrize("turns", range(4))
def test_a_frame_turned_upright_and_back_is_unchanged(turns):
    stored = np.random.default_rng(turns).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    shown = upright(stored, turns)
    assert shown.shape == ((7, 5, 3) if turns % 2 else (5, 7, 3))
    assert np.array_equal(as_stored(shown, turns), stored)


@pytest.mark.parametrize("size", [(6, 4), (7, 4), (6, 5), (7, 5), (1, 1)])
def test_odd_sides_are_padded_with_their_last_row_or_column(size):
    width, height = size
    pixels = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
    padded = padded_to_even(pixels)
    assert padded.shape[1::-1] == even_size(width, height) and padded.shape[0] % 2 == padded.shape[1] % 2 == 0
    assert np.array_equal(padded[:height, :width], pixels)
    assert np.array_equal(padded[-1, :width], pixels[-1]) and np.array_equal(padded[:height, -1], pixels[:, -1])


def test_the_display_matrix_is_read_off_the_clip(tmp_path):
    turned = panning_clip(tmp_path / "turned.mp4", 65, 49, frames=2, fps=5, audio=False, quarter_turns=1)
    plain = panning_clip(tmp_path / "plain.mp4", 64, 48, frames=2, fps=5, audio=False)
    orientation = orientation_of(turned)
    assert orientation.quarter_turns == 1 and len(orientation.matrix) == 9
    assert orientation_of(plain) == Orientation()
    with av.open(str(turned)) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (49, 65)  # stored turned: displayed 65x49


def test_faces_json_says_how_many_regions_the_header_left_out():
    headers = {"X-Face-Boxes": "[[1,2,3,4]]", "X-Face-Boxes-Omitted": "4509"}
    assert faces_record(Answer(200, b"", "image/jpeg", headers), 3, 0.25) == {
        "frame": 3, "time": 0.25, "faces": [[1, 2, 3, 4]], "omitted": 4509
    }  # fmt: skip
    assert "omitted" not in faces_record(Answer(200, b"", "image/jpeg", {"X-Face-Boxes": "[]"}), 0, 0.0)


FACE = (100, 40, 200, 160)  # where the stand-in detector finds "the face" in every frame it does


class MissingDetector:
    """A stand-in face pixelizer that finds the face in one frame out of `every` (a detector
    missing the frames between), or only in the frames `only` lists: there it greys the
    region out and lists it in X-Face-Boxes, as the server does; the other frames come back
    as they were sent."""

    def __init__(self, every: int = 1, only: frozenset[int] | None = None):
        self.every, self.only, self.frames = every, only, 0

    def predict(self, model, jpeg, params, filename):
        number, self.frames = self.frames, self.frames + 1  # one frame in flight: in order
        pixels = np.array(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        headers = {"X-Parameters": json.dumps({"blocks": 8, "block_size": 0}), "X-Face-Boxes": "[]"}
        if number in self.only if self.only is not None else number % self.every == 0:
            x1, y1, x2, y2 = FACE
            pixels[y1:y2, x1:x2] = 128
            headers["X-Face-Boxes"] = json.dumps([list(FACE)])
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=95)
        return Answer(200, out.getvalue(), "image/jpeg", headers)


def still_clip(path, frames: int = 30):
    """The astronaut's face, still, `frames` frames of 320x240."""
    window = np.asarray(photo("astronaut").resize((320, 320)))[40:280]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(window), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path, window.astype(np.int16)


def frames_with_the_face_visible(path, original) -> tuple[int, int]:
    x1, y1, x2, y2 = FACE
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24").astype(np.int16) for frame in container.decode(video=0)]
    visible = [np.abs(f[y1:y2, x1:x2] - original[y1:y2, x1:x2]).mean() < 12 for f in frames]
    return sum(visible), len(frames)


@pytest.mark.parametrize("memory, visible", [(0, 20), (2, 0), (FRAME_MEMORY, 0)])
def test_frame_memory_hides_a_face_the_detector_misses_between_detections(tmp_path, memory, visible):
    """The detector finds the face in 1 frame of 3: without memory 20 of the 30 frames
    show it; remembering 2 (or the default 5) frames' regions, none does (tracks off, to
    see the memory alone)."""
    clip, original = still_clip(tmp_path / "still.mp4")
    target = tmp_path / "out.mp4"
    detector = MissingDetector(every=3)
    anonymise_video(detector, clip, target, {}, concurrency=1, progress=False, frame_memory=memory, track_frames=0)
    assert frames_with_the_face_visible(target, original) == (visible, 30)


@pytest.mark.parametrize("memory, visible", [(0, 29), (3, 23), (FRAME_MEMORY, 19)])
def test_frame_memory_hides_a_face_in_the_frames_before_its_detection_too(tmp_path, memory, visible):
    """The detector finds the face in frame 15 of 30 only (a face turning to the camera and
    away): frame memory hides it in the N frames before that one as well as the N after."""
    clip, original = still_clip(tmp_path / "still.mp4")
    target = tmp_path / "out.mp4"
    detector = MissingDetector(only=frozenset({15}))
    anonymise_video(detector, clip, target, {}, concurrency=2, progress=False, frame_memory=memory)
    assert frames_with_the_face_visible(target, original) == (visible, 30)


@pytest.mark.parametrize("tracks, visible", [(0, 26), (TRACK_FRAMES, 0)])
def test_a_face_found_at_both_ends_of_a_gap_is_hidden_along_it(tmp_path, tracks, visible):
    """The detector finds the face in frames 0, 1, 28 and 29 only: its track hides it in the
    26 frames between (frame memory off, to see the tracks alone)."""
    clip, original = still_clip(tmp_path / "still.mp4")
    target = tmp_path / "out.mp4"
    detector = MissingDetector(only=frozenset({0, 1, 28, 29}))
    anonymise_video(detector, clip, target, {}, concurrency=2, progress=False, frame_memory=0, track_frames=tracks)
    assert frames_with_the_face_visible(target, original) == (visible, 30)


class RefusingFrom(MissingDetector):
    """The stand-in pixelizer, refusing every frame from `first` on (a 400, as for a frame
    over its limits)."""

    def __init__(self, first: int):
        super().__init__(every=1)
        self.first = first

    def predict(self, model, jpeg, params, filename):
        if self.frames >= self.first:
            self.frames += 1
            return Answer(400, b'{"error": "image too large"}', "application/json")
        return super().predict(model, jpeg, params, filename)


def test_a_refused_frame_stops_the_clip_as_it_comes_not_frame_memory_later(tmp_path):
    clip, _ = still_clip(tmp_path / "still.mp4")
    detector = RefusingFrom(3)
    with pytest.raises(FrameRefused, match="frame 3: HTTP 400"):
        anonymise_video(detector, clip, tmp_path / "out.mp4", {}, concurrency=1, progress=False, frame_memory=20)
    assert detector.frames <= 3 + 2  # the refused frame and the window in flight behind it (2 x concurrency)


def test_mosaic_makes_flat_cells_of_each_region_s_mean_and_leaves_the_rest():
    pixels = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3).copy()
    before = pixels.copy()
    mosaic(pixels, [(0, 0, 8, 8)], blocks=2)
    cell = before[:4, :4].reshape(-1, 3).mean(axis=0).round()
    assert (
        (pixels[:4, :4] == cell).all() and (pixels[8:] == before[8:]).all() and (pixels[:, 8:] == before[:, 8:]).all()
    )


def test_mosaic_cells_at_a_region_s_edge_take_what_is_left_and_the_frame_clips_the_region():
    """A 10x7 region, 3 blocks: cells of ceil(10 / 3) = 4 px, the last row 3 and the last
    column 2 px wide, each its own mean; a region past the frame is cut at its edge first
    (4x3 px left: cells of 2)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    before = pixels.copy()
    mosaic(pixels, [(2, 5, 12, 12), (8, 0, 30, 3)], blocks=3)
    for top, bottom in ((5, 9), (9, 12)):
        for left, right in ((2, 6), (6, 10), (10, 12)):
            cell = before[top:bottom, left:right].reshape(-1, 3).mean(axis=0).round()
            assert (pixels[top:bottom, left:right] == cell).all(), (top, left)
    assert (pixels[0:2, 10:12] == before[0:2, 10:12].reshape(-1, 3).mean(axis=0).round()).all()
    assert (pixels[2:3, 8:10] == before[2:3, 8:10].reshape(-1, 3).mean(axis=0).round()).all()
    assert (pixels[3:5] == before[3:5]).all() and (pixels[:, :2] == before[:, :2]).all()


def test_faces_json_lists_the_remembered_regions_once():
    answer = Answer(200, b"", "image/jpeg", {"X-Face-Boxes": "[[1,2,3,4]]"})
    record = faces_record(answer, 7, 0.7, [(1, 2, 3, 4), (0, 0, 5, 5), (1, 2, 3, 4)])
    assert record["remembered"] == [[1, 2, 3, 4], [0, 0, 5, 5]] and record["faces"] == [[1, 2, 3, 4]]


def test_frames_over_the_pixel_limit_are_refused_before_any_is_decoded_or_sent(tmp_path):
    """From the stream's header first; a frame larger than its header says (Motion JPEG
    frames carry their own sizes) on its own, before it is encoded and sent."""
    clip, _ = still_clip(tmp_path / "still.mp4", frames=3)
    detector = MissingDetector(every=1)
    with pytest.raises(FrameRefused, match="320x240 = 76800 pixels, over face_pixelizer's limit of 76799"):
        anonymise_video(detector, clip, tmp_path / "out.mp4", {}, progress=False, max_pixels=76_799)
    assert detector.frames == 0
    anonymise_video(detector, clip, tmp_path / "out.mp4", {}, progress=False, max_pixels=76_800)
    assert detector.frames == 3


class Frame:
    """A decoded frame as in_order sees it: a size, and pixels."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height

    def to_ndarray(self, format):
        return np.zeros((self.height, self.width, 3), np.uint8)


class Counting:
    """A stand-in client that counts the frames sent."""

    def __init__(self):
        self.sent = 0

    def predict(self, model, jpeg, params, filename):
        self.sent += 1
        return Answer(200, jpeg, "image/jpeg")


def test_frames_in_flight_are_bounded_by_their_bytes_not_only_their_count(monkeypatch):
    monkeypatch.setattr("scripts.client.video.IN_FLIGHT_BYTES", 3 * 100 * 100 * 3)
    client = Counting()
    with ThreadPoolExecutor(1) as pool:
        frames = iter([Frame(100, 100)] * 20)
        answers = in_order(pool, client, frames, {}, window=16)
        for number, _ in enumerate(answers):
            assert client.sent - number <= 4  # three frames' pixels (and their JPEGs) at most, not 16
        frames = iter([Frame(100, 100), Frame(5000, 5000)])
        with pytest.raises(FrameRefused, match="frame 1 is 5000x5000"):
            list(in_order(pool, client, frames, {}, window=16, max_pixels=1_000_000))


@pytest.mark.parametrize("option", ["--frame-memory", "--track-frames"])
def test_a_negative_number_of_frames_is_a_usage_error_not_a_traceback(tmp_path, capsys, option):
    assert main(["anonymise", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "out.mp4"), option, "-1"]) == 2
    assert f"{option} is a number of frames (0: off), got -1" in capsys.readouterr().err


def test_every_parameter_of_the_model_has_a_value_for_a_clip(tmp_path):
    """anonymise offers the pixelizer's parameters a clip may choose (--reduced-view among
    them) and leaves every other one unset: none is missing when the request is built."""
    args = get_args_parser().parse_args(["anonymise", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "out.mp4"),
                                         "--reduced-view", "false", "--enlarged-view", "false"])  # fmt: skip
    assert request_parameters(args) == {"reduced_view": "false", "enlarged_view": "false"}
    assert {param for param, _ in PARAMETERS.values()} <= set(vars(args))
