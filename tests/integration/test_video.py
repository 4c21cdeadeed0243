"""Video anonymisation through a real TorchServe: a clip built from a real photo (a
window panning across the astronaut, with a generated tone as its audio) comes back
with the same frames, rate, size, duration and audio, every face pixelated and the rest
of each frame unchanged up to re-encoding."""

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from scripts.client.video import orientation_of, upright
from scripts.samples.clips import panning_clip
from scripts.zoo import REPO

pytestmark = pytest.mark.integration

FRAMES, FPS, WIDTH, HEIGHT = 24, 12, 320, 240


def read_clip(path: Path) -> dict:
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        summary = {
            "rate": video.average_rate,
            "size": (video.codec_context.width, video.codec_context.height),
            "duration": float(container.duration / av.time_base),
        }
        frames, packets = [], []
        for packet in container.demux(video, audio):
            if packet.stream.type == "audio" and packet.size:
                packets.append(bytes(packet))
            elif packet.stream.type == "video":
                frames += [frame.to_ndarray(format="rgb24").astype(np.int16) for frame in packet.decode()]
        return {**summary, "frames": frames, "audio": packets}


def test_a_clip_comes_back_with_its_faces_pixelated_and_nothing_else_changed(torchserve, tmp_path):
    clip, anonymised, faces_file = tmp_path / "clip.mp4", tmp_path / "anonymised.mp4", tmp_path / "faces.jsonl"
    panning_clip(clip, WIDTH, HEIGHT, FRAMES, FPS)
    connection = ["--config", str(torchserve.workdir / "config.properties"),
                  "--key-file", str(torchserve.workdir / "key_file.json")]  # fmt: skip
    command = [sys.executable, "-m", "scripts.client", "anonymise", str(clip), "-o", str(anonymised),
               "--faces-json", str(faces_file), "--blocks", "6", *connection]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{FRAMES} frames" in result.stderr

    source, output = read_clip(clip), read_clip(anonymised)
    assert len(output["frames"]) == len(source["frames"]) == FRAMES
    assert output["rate"] == source["rate"] == Fraction(FPS) and output["size"] == source["size"]
    assert output["duration"] == pytest.approx(source["duration"], abs=1 / FPS)
    assert output["audio"] == source["audio"]  # copied packet for packet

    faces = [json.loads(line) for line in faces_file.read_text().splitlines()]
    assert [entry["frame"] for entry in faces] == list(range(FRAMES))
    for before, after, entry in zip(source["frames"], output["frames"], faces, strict=True):
        assert entry["faces"], f"frame {entry['frame']}: no face found"
        inside = np.zeros(before.shape[:2], dtype=bool)
        near = np.zeros(before.shape[:2], dtype=bool)
        for x1, y1, x2, y2 in entry["faces"]:
            inside[y1:y2, x1:x2] = True
        for x1, y1, x2, y2 in entry["faces"] + entry.get("remembered", []):  # frame memory hides these too
            near[max(0, y1 - 16) : y2 + 16, max(0, x1 - 16) : x2 + 16] = True  # codec blocks bleed over the edge
        difference = np.abs(after - before).mean(axis=2)
        assert difference[inside].mean() > 8, f"frame {entry['frame']}: the face is not pixelated"
        assert difference[~near].mean() < 3, f"frame {entry['frame']}: the rest changed"


def test_a_turned_clip_of_odd_size_keeps_its_turn_and_is_padded_to_even(torchserve, tmp_path):
    """A phone's clip stored sideways with a display matrix, 321x241 as displayed: faces are
    found upright, the output is stored as the input was, with the same display matrix,
    padded to even (the last row and column repeated), and the client says so."""
    clip, anonymised, faces_file = tmp_path / "turned.mp4", tmp_path / "anonymised.mp4", tmp_path / "faces.jsonl"
    panning_clip(clip, 321, 241, 6, FPS, audio=False, quarter_turns=1)
    connection = ["--config", str(torchserve.workdir / "config.properties"),
                  "--key-file", str(torchserve.workdir / "key_file.json")]  # fmt: skip
    command = [sys.executable, "-m", "scripts.client", "anonymise", str(clip), "-o", str(anonymised),
               "--faces-json", str(faces_file), *connection]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "241x321 padded to 242x322" in result.stderr  # stored sideways: 241 wide, 321 high
    assert orientation_of(anonymised) == orientation_of(clip) and orientation_of(clip).quarter_turns == 1

    with av.open(str(clip)) as source, av.open(str(anonymised)) as output:
        before = [f.to_ndarray(format="rgb24").astype(np.int16) for f in source.decode(video=0)]
        after = [f.to_ndarray(format="rgb24").astype(np.int16) for f in output.decode(video=0)]
    assert len(after) == len(before) == 6 and after[0].shape == (322, 242, 3)
    faces = [json.loads(line) for line in faces_file.read_text().splitlines()]
    for stored_before, stored_after, entry in zip(before, after, faces, strict=True):
        assert len(entry["faces"]) == 1, entry  # the astronaut, found upright
        shown_before, shown_after = upright(stored_before, 1), upright(stored_after[:321, :241], 1)
        x1, y1, x2, y2 = entry["faces"][0]
        difference = np.abs(shown_after - shown_before).mean(axis=2)
        assert difference[y1:y2, x1:x2].mean() > 8  # her face, where the answer said, as displayed
        assert np.abs(stored_after[321] - stored_after[320]).max() <= 12  # the padding repeats the last row
