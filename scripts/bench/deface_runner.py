"""deface's own detection and anonymisation, run by the Python of deface's venv
(scripts/bench/faces.py makes it; this file imports nothing of the zoo). Prints one JSON
document.

Pictures: CenterFace as deface's CLI runs it on a photo -- the picture at its own
resolution, threshold 0.2 -- then its anonymisation (ellipses grown by 1.3, blurred); per
picture its boxes and the seconds its decoding, detection and anonymisation took (with
--rounds=N, done N times: the median).

Video (--video CLIP OUTPUT): deface's own video loop (deface.deface.video_detect, with
its CLI's defaults: imageio-ffmpeg reading and writing, libx264), each frame's boxes
recorded on the way; the frames' boxes and the whole loop's seconds.

    build/deface-venv/bin/python scripts/bench/deface_runner.py [--rounds=N] PICTURE...
    build/deface-venv/bin/python scripts/bench/deface_runner.py --video CLIP OUTPUT
"""

import json
import statistics
import sys
import time

import deface.deface
import imageio.v2 as imageio
from deface.centerface import CenterFace
from deface.deface import anonymize_frame

THRESHOLD, MASK_SCALE = 0.2, 1.3  # deface's defaults (its --thresh, --mask-scale)


def pictures(paths: list[str], rounds: int = 1) -> list[dict]:
    centerface = CenterFace(in_shape=None, backend="auto")
    results = []
    for path in paths:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            frame = imageio.imread(path)
            if frame.ndim == 2 or frame.shape[2] != 3:
                frame = imageio.imread(path, pilmode="RGB")
            detections, _ = centerface(frame, threshold=THRESHOLD)
            anonymize_frame(detections, frame, mask_scale=MASK_SCALE, replacewith="blur", ellipse=True,
                            draw_scores=False, replaceimg=None, mosaicsize=20)  # fmt: skip
            times.append(time.perf_counter() - started)
        boxes = [[float(v) for v in row[:4]] for row in detections]
        results.append({"boxes": boxes, "seconds": statistics.median(times)})
    return results


def video(clip: str, output: str) -> dict:
    frames = []

    def recorded(dets, frame, **options):  # deface's anonymize_frame, each frame's boxes kept
        frames.append([[float(v) for v in row[:4]] for row in dets])
        return anonymize_frame(dets, frame, **options)

    deface.deface.anonymize_frame = recorded
    centerface = CenterFace(in_shape=None, backend="auto")
    started = time.perf_counter()
    deface.deface.video_detect(clip, output, centerface, threshold=THRESHOLD, enable_preview=False, cam=False,
                               nested=False, replacewith="blur", mask_scale=MASK_SCALE, ellipse=True,
                               draw_scores=False, ffmpeg_config={"codec": "libx264"})  # fmt: skip
    return {"frames": frames, "seconds": time.perf_counter() - started}


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[:1] == ["--video"]:
        json.dump(video(*arguments[1:3]), sys.stdout)
    else:
        rounds = int(arguments.pop(0).split("=", 1)[1]) if arguments[0].startswith("--rounds=") else 1
        json.dump(pictures(arguments, rounds), sys.stdout)
