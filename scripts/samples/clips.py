"""Test and benchmark videos made from real photos: a window panning across the
astronaut (her face in every frame), H.264, with a generated 440 Hz tone as AAC audio;
and a crowd of LFW's real faces walking (scripts/samples/faces.py), with each frame's
face boxes."""

from pathlib import Path

import av
import numpy as np
from PIL import Image

from scripts.samples.faces import Box, walking_crowd
from scripts.samples.photos import photo

AUDIO_RATE = 16000


def panning_clip(path: Path, width: int, height: int, frames: int, fps: int, audio: bool = True,
                 quarter_turns: int = 0) -> Path:  # fmt: skip
    """Write the clip: frame i shows the photo, scaled so that the window is 1.6x narrower
    than it, from a left edge moving right; the face (the middle third of the photo's
    width) stays inside the window. `quarter_turns`: the frames are stored turned that many
    quarter turns clockwise, with the display matrix that turns them back (as a phone held
    sideways records). An odd size is encoded as yuv444p (yuv420p takes even sizes only)."""
    scale = 1.6 * width / 512
    scaled = np.asarray(photo("astronaut").resize((round(512 * scale), round(512 * scale)), Image.LANCZOS))
    travel = min(scaled.shape[1] // 3, scaled.shape[1] - width)  # the face spans 1/3 .. 0.6 of the photo
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        stored_width, stored_height = (height, width) if quarter_turns % 2 else (width, height)
        odd = width % 2 or height % 2
        video.width, video.height, video.pix_fmt = stored_width, stored_height, "yuv444p" if odd else "yuv420p"
        if quarter_turns:
            video.set_display_rotation(90 * quarter_turns)  # counter-clockwise, undoing the turn below
        sound = container.add_stream("aac", rate=AUDIO_RATE) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for index in range(frames):
            x = travel * index // max(1, frames - 1)
            window = np.ascontiguousarray(np.rot90(scaled[:height, x : x + width], -quarter_turns))
            frame = av.VideoFrame.from_ndarray(window, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            write_tone(container, sound, frames / fps)
    return path


def crowd_clip(path: Path, width: int, height: int, frames: int, fps: int, seed: int = 0) -> list[tuple[Box, ...]]:
    """Write a clip of a walking crowd (faces.walking_crowd; H.264 at CRF 18, no audio)
    and return each frame's face boxes."""
    boxes = []
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "18"}
        for index, (pixels, faces) in enumerate(walking_crowd(width, height, frames, seed=seed)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
            boxes.append(faces)
        container.mux(video.encode(None))
    return boxes


def write_tone(container, stream, seconds: float) -> None:
    samples = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(AUDIO_RATE * seconds)) / AUDIO_RATE)
    samples = samples.astype(np.float32)
    for start in range(0, len(samples), 1024):
        chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
        chunk.sample_rate, chunk.pts = AUDIO_RATE, start
        container.mux(stream.encode(chunk))
    container.mux(stream.encode(None))
