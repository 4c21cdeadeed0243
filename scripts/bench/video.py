"""Video anonymisation speed: frames/s of `python -m scripts.client anonymise` for a
640x360 and a 1280x720 clip through a TorchServe serving face_pixelizer as archived, and
what limits it -> the video section of docs/benchmarks.md.

Beside the whole pipeline, the same run measures its two halves alone: the server (the
clip's frames, already JPEG-encoded, sent with the same concurrency) and the client
(decode, JPEG-encode each frame, decode the answer, encode the video, with each frame's
own JPEG standing in for the server's answer). Client and server share the machine's
cores, so the whole is slower than the slower half.

    python -m scripts.bench.video          # make bench-video
"""

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av

from scripts.bench.doc import DOCUMENT, about_the_run, publish
from scripts.client.auth import Tokens
from scripts.client.rest import Answer, ZooClient
from scripts.client.video import MODEL, anonymise_video, frame_jpeg
from scripts.samples.clips import panning_clip
from scripts.serve.server import local_torchserve
from scripts.zoo import REPO

SIZES = ((640, 360), (1280, 720))
FPS = 30


class Echo:
    """A stand-in for the server: answers every frame with its own JPEG."""

    def predict(self, model, data, params=None, filename="image") -> Answer:
        return Answer(200, data, "image/jpeg", {"X-Face-Boxes": "[]"})


def frame_jpegs(clip: Path) -> list[bytes]:
    with av.open(str(clip)) as container:
        return [frame_jpeg(frame) for frame in container.decode(video=0)]


def server_only(client: ZooClient, jpegs: list[bytes], concurrency: int) -> float:
    """frames/s of the server alone: the frames' JPEGs, `concurrency` in flight."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda data: client.predict(MODEL, data, {"format": "image"}), jpegs))
    if not all(answer.ok for answer in answers):
        raise RuntimeError("the server refused frames")
    return len(jpegs) / (time.perf_counter() - started)


def measure(server, workdir: Path, frames: int, concurrency: int) -> list[dict]:
    tokens = Tokens(server.workdir / "key_file.json")
    client = ZooClient(server.inference, server.management, tokens)
    rows = []
    for width, height in SIZES:
        clip = panning_clip(workdir / f"clip_{height}p.mp4", width, height, frames, FPS)
        params = {"format": "image"}
        whole = anonymise_video(client, clip, workdir / "out.mp4", params, concurrency, progress=False)
        alone = anonymise_video(Echo(), clip, workdir / "echo.mp4", params, concurrency, progress=False)
        served = server_only(client, frame_jpegs(clip), concurrency)
        rows.append({"size": f"{width}x{height}", "frames": frames, "pipeline_fps": whole.frames_per_second,
                     "client_alone_fps": alone.frames_per_second, "server_alone_fps": served})  # fmt: skip
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def render_section(results: dict) -> str:
    lines = [
        f"| {row['size']} | {row['pipeline_fps']:.1f} | {row['server_alone_fps']:.1f} | {row['client_alone_fps']:.1f} |"
        for row in results["rows"]
    ]
    return "\n".join([
        "## Video anonymisation",
        "",
        f"`make bench-video` (`scripts/bench/video.py`, {results['date']}, {results['machine']}): "
        f"`python -m scripts.client anonymise` on a {results['rows'][0]['frames']}-frame, {FPS} frames/s H.264 clip "
        "with AAC audio (a window panning across the astronaut photo, a face in every frame), face_pixelizer "
        f"served as archived, {results['concurrency']} frames in flight. *Server alone*: the same frames, as "
        "JPEGs, sent with the same concurrency (no video decoding or encoding). *Client alone*: the whole "
        "client with each frame's own JPEG standing in for the answer (decode, JPEG-encode, JPEG-decode, "
        "H.264 encode).",
        "",
        "| clip | whole pipeline frames/s | server alone frames/s | client alone frames/s |",
        "| --- | --- | --- | --- |",
        *lines,
        "",
        "What limits it: " + "; ".join(f"{r['size']}: {limit(r)}" for r in results["rows"]) + ". Client and server "
        "share the machine's cores, so the whole pipeline is slower than either half alone ("
        + " and ".join(f"{r['pipeline_fps'] / r['server_alone_fps']:.0%} of the server's rate at {r['size']}"
                       for r in results["rows"]) + ").",
    ])  # fmt: skip


def limit(row: dict) -> str:
    """Which half is slower alone (within 20 %: both)."""
    server, client = row["server_alone_fps"], row["client_alone_fps"]
    if server < 0.8 * client:
        return f"the server's face detection and pixelation ({server:.0f} frames/s alone vs the client's {client:.0f})"
    if client < 0.8 * server:
        return f"the client's decoding and H.264 encoding ({client:.0f} frames/s alone vs the server's {server:.0f})"
    return f"both halves alike (server {server:.0f}, client {client:.0f} frames/s alone)"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150, help="frames per clip (30 frames/s)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output", type=Path, default=DOCUMENT)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    return parser


def main(args: argparse.Namespace) -> None:
    store = REPO / "model_store"
    if not (store / f"{MODEL}.mar").is_file():
        sys.exit(f"error: {store / MODEL}.mar is missing: run `make archive`")
    with tempfile.TemporaryDirectory(prefix="bench-video-") as workdir, local_torchserve(store, [MODEL]) as server:
        rows = measure(server, Path(workdir), args.frames, args.concurrency)
    results = {**about_the_run(), "concurrency": args.concurrency, "rows": rows}
    publish("video", render_section(results), results, args.output, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
