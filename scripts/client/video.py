"""Video anonymisation through the served face pixelizer.

    python -m scripts.client anonymise clip.mp4 -o clip.anonymised.mp4 --faces-json faces.jsonl
    python -m scripts.client anonymise videos/ -o anonymised/

Decodes the video with PyAV, sends every frame (as a JPEG) to `face_pixelizer` with at
most --concurrency frames in flight, and encodes the pixelated frames in their order
with their own timestamps: the same frame count, frame rate, size and duration. Audio
streams are copied packet for packet, never re-encoded. --faces-json writes one line
per frame with the face regions that were pixelated.
"""

import argparse
import io
import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from scripts.client.options import UsageError, add_connection_options, make_client, request_parameters
from scripts.client.rest import Answer

MODEL = "face_pixelizer"
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
FRAME_JPEG_QUALITY = 95  # frames travel as JPEGs: near-lossless, a fraction of the raw size


class FrameRefused(Exception):
    """The server refused a frame: the video cannot be completed."""


@dataclass(frozen=True)
class VideoReport:
    frames: int
    seconds: float  # wall-clock time of the whole run

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def frame_jpeg(frame) -> bytes:
    """A decoded PyAV frame -> JPEG bytes (RGB)."""
    buffer = io.BytesIO()
    frame.to_image().save(buffer, "JPEG", quality=FRAME_JPEG_QUALITY)
    return buffer.getvalue()


def answer_frame(answer: Answer, source, number: int):
    """The pixelizer's JPEG answer -> a video frame with the source frame's timestamp."""
    import av

    if not (answer.ok and answer.is_image):
        raise FrameRefused(
            f"frame {number}: HTTP {answer.status}: {answer.error() if not answer.ok else 'not an image'}"
        )
    pixels = np.asarray(Image.open(io.BytesIO(answer.body)).convert("RGB"))
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
    frame.pts, frame.time_base = source.pts, source.time_base
    return frame


def in_order(pool: ThreadPoolExecutor, client, frames: Iterator, params: dict, window: int) -> Iterator:
    """(source frame, its answer) in decoding order, with at most `window` frames in flight."""
    pending: deque[tuple[object, Future]] = deque()
    for frame in frames:
        pending.append((frame, pool.submit(client.predict, MODEL, frame_jpeg(frame), params, "frame.jpg")))
        if len(pending) >= window:
            source, future = pending.popleft()
            yield source, future.result()
    while pending:
        source, future = pending.popleft()
        yield source, future.result()


def open_output(target: Path, source_stream, codec: str, crf: int):
    import av

    output = av.open(str(target), "w")
    stream = output.add_stream(codec, rate=source_stream.average_rate or source_stream.guessed_rate)
    stream.width, stream.height = source_stream.codec_context.width, source_stream.codec_context.height
    stream.pix_fmt = "yuv420p"
    stream.time_base = source_stream.time_base
    stream.options = {"crf": str(crf)} if codec in ("libx264", "libx265") else {}
    return output, stream


def anonymise_video(client, source: Path, target: Path, params: dict, concurrency: int = 8, codec: str = "libx264",
                    crf: int = 18, faces_json: Path | None = None, progress: bool = True) -> VideoReport:  # fmt: skip
    """One video -> its anonymised copy (see the module's docstring)."""
    import av

    started = time.perf_counter()
    with av.open(str(source)) as container:
        video = container.streams.video[0]
        audio_streams = list(container.streams.audio)
        output, encoder = open_output(target, video, codec, crf)
        copies = {stream.index: output.add_stream_from_template(stream) for stream in audio_streams}
        faces = faces_json.open("w") if faces_json else None
        frames, bar = (
            0,
            tqdm(total=video.frames or None, unit="frame", file=sys.stderr, disable=None if progress else True),
        )
        try:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                for source_frame, answer in in_order(pool, client, demux(container, video, copies, output), params,
                                                     2 * concurrency):  # fmt: skip
                    output.mux(encoder.encode(answer_frame(answer, source_frame, frames)))
                    if faces:
                        boxes = json.loads(answer.headers.get("X-Face-Boxes", "[]"))
                        print(json.dumps({"frame": frames, "time": float(source_frame.time or 0), "faces": boxes}),
                              file=faces)  # fmt: skip
                    frames += 1
                    bar.update()
            output.mux(encoder.encode(None))  # flush the encoder
        finally:
            bar.close()
            output.close()
            if faces:
                faces.close()
    return VideoReport(frames, time.perf_counter() - started)


def demux(container, video, copies: dict, output) -> Iterator:
    """The video stream's decoded frames; audio packets are copied to `output` on the way."""
    for packet in container.demux(video, *(s for s in container.streams.audio)):
        if packet.stream.index in copies:
            if packet.dts is not None:  # the demuxer's final empty packet carries none
                packet.stream = copies[packet.stream.index]
                output.mux(packet)
            continue
        yield from packet.decode()


def video_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    return [path]


def anonymise(args: argparse.Namespace) -> int:
    sources = video_files(args.video)
    if not sources:
        raise UsageError(f"no videos in {args.video}")
    if args.video.is_dir():
        args.output.mkdir(parents=True, exist_ok=True)
    client, params = make_client(args), {**request_parameters(args), "format": "image"}
    for source in sources:
        target = args.output / source.name if args.video.is_dir() else args.output
        faces = args.faces_json if not args.video.is_dir() or args.faces_json is None else (
            args.faces_json.parent / f"{source.stem}.faces.jsonl")  # fmt: skip
        try:
            report = anonymise_video(client, source, target, params, args.concurrency, args.codec, args.crf, faces)
        except FrameRefused as err:
            print(f"error: {source}: {err}", file=sys.stderr)
            return 1
        print(f"{target}: {report.frames} frames in {report.seconds:.1f} s ({report.frames_per_second:.1f} frames/s)",
              file=sys.stderr)  # fmt: skip
    return 0


def add_anonymise_parser(commands) -> None:
    parser = commands.add_parser("anonymise", help="pixelate every face of a video (or a directory of videos)")
    parser.add_argument("video", type=Path, help="a video file, or a directory of them")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the output file (a directory for one)")
    parser.add_argument("--faces-json", type=Path, help="write each frame's pixelated regions here (JSON lines)")
    parser.add_argument("--codec", default="libx264", help="video encoder (PyAV/FFmpeg name)")
    parser.add_argument(
        "--crf", type=int, default=18, help="x264/x265 quality: lower is better (18: visually lossless)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="frames in flight")
    for option, param in (("--mode", "mode"), ("--blocks", "blocks"), ("--margin", "margin"),
                          ("--confidence", "confidence")):  # fmt: skip
        parser.add_argument(option, dest=param)
    for param in ("top_k", "iou", "max_detections", "classes", "input_size", "max_faces", "block_size", "format"):
        parser.set_defaults(**{param: None})
    add_connection_options(parser)
    parser.set_defaults(run=anonymise)
