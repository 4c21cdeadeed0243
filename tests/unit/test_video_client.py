"""The video client's frame geometry, pure: turning a stored frame upright and back,
padding an odd size to even, and what --faces-json writes per frame."""

import av
import numpy as np
import pytest

from scripts.client.rest import Answer
from scripts.client.video import (
    Orientation,
    as_stored,
    even_size,
    faces_record,
    orientation_of,
    padded_to_even,
    upright,
)
from scripts.samples.clips import panning_clip


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
