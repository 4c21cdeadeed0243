"""Video anonymisation through the served face pixelizer.

    python -m scripts.client anonymise clip.mp4 -o clip.anonymised.mp4 --faces-json faces.jsonl
    python -m scripts.client anonymise videos/ -o anonymised/

Decodes the video with PyAV, sends every frame (as a JPEG) to `face_pixelizer` with at
most --concurrency frames in flight, and encodes the pixelated frames in their order
with their own timestamps: the same frame count, frame rate, size and duration. Audio
streams are copied packet for packet, never re-encoded. A video recorded turned (a phone's
display matrix) is sent upright, so that faces are found as they are seen, and written
back as it was stored, with its display matrix. An odd width or height is padded to even
by repeating the last column or row (H.264's yuv420p takes even sizes only), and said so.
--faces-json writes one line per frame with the face regions that were pixelated, in
the frame as displayed (and, as "remembered", those hidden besides: frame memory).

Frame memory (scripts/client/frame_memory.py): a face the detector misses for some frames
(motion blur, a turned head, a small face, a face entering) must not show in them. A face
found in two frames at most --track-frames N apart (30) is hidden in the frames between, on
the path joining its two boxes, and as many frames past either end of its track along the
way it moved (a clip's first and last frames included); and the regions of the
--frame-memory N frames (5) before and after each frame are hidden in it too (a mosaic with
the answer's own cell count). Frames are written twice --track-frames frames (60) after
their answers come: what waits is each answer's JPEG and its timestamp, not decoded pixels.
"""

import argparse
import io
import json
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from scripts.client.frame_memory import hidden_regions, inside
from scripts.client.options import PARAMETERS, UsageError, add_connection_options, make_client, request_parameters
from scripts.client.rest import Answer

MODEL = "face_pixelizer"
FRAME_MEMORY = 5  # frames before and after a frame whose face regions it hides too (--frame-memory)
TRACK_FRAMES = 30  # a face found twice at most this many frames apart is hidden between (--track-frames)
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
FRAME_JPEG_QUALITY = 95  # frames travel as JPEGs: near-lossless, a fraction of the raw size
# Decoded frames waiting for their answers, at most (besides the --concurrency limit): a
# clip of huge frames is held a few frames at a time, not 2 x concurrency of them.
IN_FLIGHT_BYTES = 256 << 20


@dataclass(frozen=True)
class Stamp:
    """What a frame's output keeps of its source frame while it waits for the frames after it."""

    pts: int | None
    time_base: Fraction | None
    time: float | None


class FrameRefused(Exception):
    """The server refused a frame: the video cannot be completed."""


@dataclass(frozen=True)
class VideoReport:
    frames: int
    seconds: float  # wall-clock time of the whole run

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Orientation:
    """How a video's frames are displayed: its display matrix (FFmpeg's 9 int32, None for
    none) and the rotation in it, in quarter turns counter-clockwise."""

    matrix: tuple[int, ...] | None = None
    quarter_turns: int = 0


def orientation_of(source: Path) -> Orientation:
    """The display matrix the video's frames carry (read off its first frame)."""
    import av
    from av.sidedata.sidedata import Type

    with av.open(str(source)) as container:
        for frame in container.decode(video=0):
            matrices = [bytes(data) for data in frame.side_data.keys() if data.type == Type.DISPLAYMATRIX]
            if not matrices:
                return Orientation()
            return Orientation(struct.unpack("=9i", matrices[0]), round((frame.rotation or 0) / 90) % 4)
    return Orientation()


def upright(pixels: np.ndarray, quarter_turns: int) -> np.ndarray:
    """A stored frame (H, W, 3) as displayed: turned `quarter_turns` x 90 degrees counter-clockwise."""
    return np.ascontiguousarray(np.rot90(pixels, quarter_turns))


def as_stored(pixels: np.ndarray, quarter_turns: int) -> np.ndarray:
    """`upright`'s inverse."""
    return np.ascontiguousarray(np.rot90(pixels, -quarter_turns))


def even_size(width: int, height: int) -> tuple[int, int]:
    """The size H.264's yuv420p can encode: each side rounded up to even."""
    return width + width % 2, height + height % 2


def padded_to_even(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) with an odd side padded by repeating its last row or column."""
    height, width = pixels.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return pixels
    return np.pad(pixels, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def frame_jpeg(frame, orientation: Orientation = Orientation()) -> bytes:
    """A decoded PyAV frame -> JPEG bytes (RGB), as displayed."""
    buffer = io.BytesIO()
    pixels = upright(frame.to_ndarray(format="rgb24"), orientation.quarter_turns)
    Image.fromarray(pixels).save(buffer, "JPEG", quality=FRAME_JPEG_QUALITY)
    return buffer.getvalue()


def regions_of(answer: Answer) -> list[tuple[int, int, int, int]]:
    """The regions the pixelizer hid in a frame (X-Face-Boxes: x1, y1, x2, y2 as displayed)."""
    return [tuple(region) for region in json.loads(answer.headers.get("X-Face-Boxes", "[]"))]


def mosaic(pixels: np.ndarray, regions, blocks: int = 8, block_size: int = 0) -> np.ndarray:
    """RGB pixels [H, W, 3] with each region (x1, y1, x2, y2) replaced by flat cells, each
    the mean colour under it: `blocks` cells across a region's longer side, or cells of
    `block_size` pixels (the pixelizer's mosaic settings). Modifies and returns `pixels`.
    A few whole-array operations per region (a crowd's remembered regions are hundreds)."""
    height, width = pixels.shape[:2]
    for x1, y1, x2, y2 in regions:
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
        if x2 <= x1 or y2 <= y1:
            continue
        cell = block_size or max(1, -(-max(x2 - x1, y2 - y1) // blocks))  # ceil
        block = pixels[y1:y2, x1:x2]
        rows, cols = np.arange(0, y2 - y1, cell), np.arange(0, x2 - x1, cell)
        sums = np.add.reduceat(np.add.reduceat(block, rows, axis=0, dtype=np.int64), cols, axis=1)
        heights, widths = np.diff([*rows, y2 - y1]), np.diff([*cols, x2 - x1])
        means = (sums / (heights[:, None] * widths[None, :])[..., None]).round().astype(pixels.dtype)
        block[...] = means.repeat(heights, axis=0).repeat(widths, axis=1)
    return pixels


def stamped(answers: Iterator) -> Iterator[tuple[tuple[Stamp, Answer], list]]:
    """(source frame, its answer) in order -> ((its Stamp, the answer), the regions it hid),
    dropping the decoded frame; a refused frame raises FrameRefused as soon as it comes."""
    for number, (frame, answer) in enumerate(answers):
        if not (answer.ok and answer.is_image):
            raise FrameRefused(
                f"frame {number}: HTTP {answer.status}: {answer.error() if not answer.ok else 'not an image'}"
            )
        yield (Stamp(frame.pts, frame.time_base, frame.time), answer), regions_of(answer)


def answer_frame(answer: Answer, source, orientation: Orientation = Orientation(), remembered=()):
    """The pixelizer's JPEG answer -> a video frame as stored (even-sized), with the source
    frame's timestamp (`source`: its pts and time_base); the `remembered` regions
    (neighbouring frames') pixelated too."""
    import av

    pixels = np.array(Image.open(io.BytesIO(answer.body)).convert("RGB"))
    if remembered:
        applied = json.loads(answer.headers.get("X-Parameters", "{}"))
        mosaic(pixels, remembered, applied.get("blocks", 8), applied.get("block_size", 0))
    pixels = as_stored(pixels, orientation.quarter_turns)
    frame = av.VideoFrame.from_ndarray(padded_to_even(pixels), format="rgb24")
    frame.pts, frame.time_base = source.pts, source.time_base
    return frame


def in_order(pool: ThreadPoolExecutor, client, frames: Iterator, params: dict, window: int,
             orientation: Orientation = Orientation(), max_pixels: int | None = None) -> Iterator:  # fmt: skip
    """(source frame, its answer) in decoding order, with at most `window` frames and
    IN_FLIGHT_BYTES of decoded pixels in flight; a frame over `max_pixels` is refused."""
    pending: deque[tuple[object, Future, int]] = deque()
    held = 0
    for number, frame in enumerate(frames):
        check_frame_size(frame.width, frame.height, max_pixels, f"frame {number}")
        jpeg = frame_jpeg(frame, orientation)
        size = frame.width * frame.height * 3 + len(jpeg)
        pending.append((frame, pool.submit(client.predict, MODEL, jpeg, params, "frame.jpg"), size))
        held += size
        while len(pending) >= window or (held > IN_FLIGHT_BYTES and len(pending) > 1):
            source, future, size = pending.popleft()
            held -= size
            yield source, future.result()
    while pending:
        source, future, _ = pending.popleft()
        yield source, future.result()


def check_frame_size(width: int, height: int, max_pixels: int | None, what: str) -> None:
    """FrameRefused for frames over the model's pixel limit, before they are decoded or sent."""
    if max_pixels and width * height > max_pixels:
        raise FrameRefused(
            f"{what} is {width}x{height} = {width * height} pixels, over {MODEL}'s limit of {max_pixels} pixels"
        )


def open_output(target: Path, source_stream, codec: str, crf: int, orientation: Orientation = Orientation()):
    import av

    output = av.open(str(target), "w")
    stream = output.add_stream(codec, rate=source_stream.average_rate or source_stream.guessed_rate)
    stream.width, stream.height = even_size(source_stream.codec_context.width, source_stream.codec_context.height)
    stream.pix_fmt = "yuv420p"
    stream.time_base = source_stream.time_base
    stream.options = {"crf": str(crf)} if codec in ("libx264", "libx265") else {}
    if orientation.matrix is not None:
        stream.set_display_matrix(orientation.matrix)
    return output, stream


def anonymise_video(client, source: Path, target: Path, params: dict, concurrency: int = 8, codec: str = "libx264",
                    crf: int = 18, faces_json: Path | None = None, progress: bool | Callable[[int, int], None] = True,
                    frame_memory: int = FRAME_MEMORY, max_pixels: int | None = None,
                    track_frames: int = TRACK_FRAMES) -> VideoReport:  # fmt: skip
    """One video -> its anonymised copy (see the module's docstring). `progress`: a bar on
    stderr, or a function called with (frames done, frames in the clip or 0) after each.
    `max_pixels`: the model's pixel limit, checked from the stream's header before any
    frame is decoded, and on each frame (a frame may be larger than its header says)."""
    import av

    started = time.perf_counter()
    with av.open(str(source)) as container:
        if not container.streams.video:
            raise FrameRefused("the file holds no video stream")
        header = container.streams.video[0].codec_context
        check_frame_size(header.width, header.height, max_pixels, "the clip's frame size")
    orientation = orientation_of(source)
    with av.open(str(source)) as container:
        video = container.streams.video[0]
        audio_streams = list(container.streams.audio)
        output, encoder = open_output(target, video, codec, crf, orientation)
        width, height = video.codec_context.width, video.codec_context.height
        if even_size(width, height) != (width, height):
            print(f"{source}: {width}x{height} padded to {'x'.join(map(str, even_size(width, height)))} (the last "
                  "column or row repeated): yuv420p takes even sizes only", file=sys.stderr)  # fmt: skip
        copies = {stream.index: output.add_stream_from_template(stream) for stream in audio_streams}
        faces = faces_json.open("w") if faces_json else None
        quiet = None if progress is True else True  # tqdm: None shows the bar on a terminal only
        bar = tqdm(total=video.frames or None, unit="frame", file=sys.stderr, disable=quiet)
        frames = 0
        try:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                frames_in = demux(container, video, copies, output)
                answers = in_order(pool, client, frames_in, params, 2 * concurrency, orientation, max_pixels)
                shown = (height, width) if orientation.quarter_turns % 2 else (width, height)
                for (stamp, answer), hidden in hidden_regions(stamped(answers), frame_memory, track_frames):
                    hidden = inside(hidden, *shown)
                    output.mux(encoder.encode(answer_frame(answer, stamp, orientation, hidden)))
                    if faces:
                        print(json.dumps(faces_record(answer, frames, float(stamp.time or 0), hidden)), file=faces)
                    frames += 1
                    bar.update()
                    if callable(progress):
                        progress(frames, video.frames or 0)
            output.mux(encoder.encode(None))  # flush the encoder
        finally:
            bar.close()
            output.close()
            if faces:
                faces.close()
    return VideoReport(frames, time.perf_counter() - started)


def faces_record(answer: Answer, number: int, seconds: float, remembered=()) -> dict:
    """A frame's line of --faces-json: the regions pixelated (the server lists the first 200;
    "omitted" counts the others, which were pixelated all the same), and "remembered": the
    regions pixelated in this one besides (frame memory: faces' tracks, neighbouring
    frames' regions), each once."""
    record = {"frame": number, "time": seconds, "faces": json.loads(answer.headers.get("X-Face-Boxes", "[]"))}
    omitted = int(answer.headers.get("X-Face-Boxes-Omitted", 0))
    record = {**record, "omitted": omitted} if omitted else record
    return {**record, "remembered": [list(r) for r in dict.fromkeys(remembered)]} if remembered else record


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
    for option, frames in (("--frame-memory", args.frame_memory), ("--track-frames", args.track_frames)):
        if frames < 0:
            raise UsageError(f"{option} is a number of frames (0: off), got {frames}")
    if args.video.is_dir():
        args.output.mkdir(parents=True, exist_ok=True)
    client, params = make_client(args), {**request_parameters(args), "format": "image"}
    for source in sources:
        target = args.output / source.name if args.video.is_dir() else args.output
        faces = args.faces_json if not args.video.is_dir() or args.faces_json is None else (
            args.faces_json.parent / f"{source.stem}.faces.jsonl")  # fmt: skip
        try:
            report = anonymise_video(client, source, target, params, args.concurrency, args.codec, args.crf, faces,
                                     frame_memory=args.frame_memory, max_pixels=args.max_pixels,
                                     track_frames=args.track_frames)  # fmt: skip
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
    parser.add_argument("--frame-memory", type=int, default=FRAME_MEMORY, metavar="N",
                        help="also pixelate the faces of the N frames before and after each (0: off)")  # fmt: skip
    parser.add_argument("--track-frames", type=int, default=TRACK_FRAMES, metavar="N",
                        help="hide a face found twice at most N frames apart in the frames between, "
                             "and N frames past either end of its track")  # fmt: skip
    parser.add_argument("--max-pixels", type=int, metavar="N",
                        help="refuse frames over N pixels before decoding them (the model's limit)")  # fmt: skip
    offered = ("--preset", "--mode", "--shape", "--blocks", "--margin", "--confidence", "--upscale-to",
               "--enlarged-view", "--reduced-view")  # fmt: skip
    for option in offered:
        parser.add_argument(option, dest=PARAMETERS[option][0], help=PARAMETERS[option][1])
    # The model's other parameters are not the clip's to choose (format: every frame is an image).
    parser.set_defaults(**{param: None for option, (param, _) in PARAMETERS.items() if option not in offered})
    add_connection_options(parser)
    parser.set_defaults(run=anonymise)
