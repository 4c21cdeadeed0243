"""Does the anonymiser let a face through? Recall on real faces (scripts/samples/faces.py:
LFW's crops in grids at 12-160 px, under dark, low-contrast, bright and tinted light,
turned, blurred, as JPEG at quality 25, and in crowds of mixed sizes at two resolutions),
false detections on LFW's non-face crops, and pictures per second one at a time -- for
the face pixelizer's presets (its handler in this process, as a TorchServe worker runs
it) and for deface 1.5.0 itself (its own venv, build/deface-venv, made here from PyPI;
scripts/bench/deface_runner.py) on the same files -> the faces section of
docs/benchmarks.md.

    python -m scripts.bench.faces            # make bench-faces
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.bench.doc import DOCUMENT, about_the_run, markdown_table, publish
from scripts.building.inprocess import load_handler
from scripts.samples.faces import crowd, found, grid
from scripts.zoo import REPO

DEFACE_VENV = REPO / "build" / "deface-venv"
DEFACE = ("deface==1.5.0", "onnxruntime==1.31.1")  # the onnxruntime of requirements-dev.txt
SIZES = (12, 16, 25, 40, 64, 100, 160)
CONDITIONS = ("dark", "low contrast", "bright", "tinted", "turned", "blurred", "jpeg")
CONDITION_SIZE = 40
# The zoo's presets: the per-request parameters each is asked with.
PRESETS = {"thorough": {}, "fast": {"preset": "fast"}}


def face_sets(quick: bool) -> list:
    sizes = (16, 40) if quick else SIZES
    sets = [grid(size) for size in sizes]
    sets += [grid(CONDITION_SIZE, condition) for condition in (CONDITIONS[:2] if quick else CONDITIONS)]
    sets += [crowd(1600, 1000, 14, 120)] + ([] if quick else [crowd(3200, 2000, 28, 240)])
    sets += [grid(size, faces=False) for size in ((40,) if quick else (16, 25, 40, 64, 100))]
    return sets


def zoo_answers(sets: list, parameters: dict) -> list[dict]:
    """Each picture through the face pixelizer's handler, one request at a time, as JSON."""
    with tempfile.TemporaryDirectory() as model_dir:
        handler, context = load_handler("face_pixelizer", Path(model_dir), batch_size=1)
        fields = {name: str(value).encode() for name, value in {"format": "json", **parameters}.items()}
        answers = []
        for face_set in sets:
            started = time.perf_counter()
            (body,) = handler.handle([{"data": face_set.data, **fields}], context)
            seconds = time.perf_counter() - started
            boxes = [[f["left"], f["top"], f["right"], f["bottom"]] for f in json.loads(body)["faces"]]
            answers.append({"boxes": boxes, "seconds": seconds})
    return answers


def deface_answers(sets: list) -> list[dict]:
    """deface on the same files, in its own venv (made on first use)."""
    python = DEFACE_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DEFACE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *DEFACE], check=True)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index, face_set in enumerate(sets):
            suffix = ".jpg" if face_set.data[:3] == b"\xff\xd8\xff" else ".png"
            paths.append(Path(folder) / f"{index}{suffix}")
            paths[-1].write_bytes(face_set.data)
        runner = REPO / "scripts" / "bench" / "deface_runner.py"
        done = subprocess.run([str(python), str(runner), *map(str, paths)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def scored(sets: list, answers: list[dict]) -> list[dict]:
    return [
        {"set": s.name, "faces": s.faces, "count": len(s.boxes), "detections": len(a["boxes"]),
         "found": found(s.boxes, [tuple(b) for b in a["boxes"]]) if s.faces else 0, "seconds": a["seconds"]}
        for s, a in zip(sets, answers, strict=True)
    ]  # fmt: skip


def run(quick: bool) -> dict:
    sets = face_sets(quick)
    results = {**about_the_run(), "quick": quick, "presets": PRESETS, "rows": {}}
    for preset, parameters in PRESETS.items():
        zoo_answers(sets[:1], parameters)  # warm: the first request pays for lazy initialisation
        results["rows"][f"zoo {preset}"] = scored(sets, zoo_answers(sets, parameters))
    results["rows"]["deface"] = scored(sets, deface_answers(sets))
    return results


def render_section(results: dict) -> str:
    variants = list(results["rows"])
    header = ["set", *variants]
    first = results["rows"][variants[0]]
    rows = []
    for index, row in enumerate(first):
        cells = []
        for variant in variants:
            point = results["rows"][variant][index]
            cells.append(f"{point['found']} / {point['count']}" if point["faces"] else f"{point['detections']} false")
        rows.append([row["set"], *cells])
    speed = [f"{len(points) / sum(p['seconds'] for p in points):.2f}" for points in results["rows"].values()]
    rows.append(["pictures/s, one at a time", *speed])
    presets = "; ".join(f"*{name}*: {json.dumps(params) if params else 'the defaults'}"
                        for name, params in results["presets"].items())  # fmt: skip
    lines = [
        f"`make bench-faces` (`scripts/bench/faces.py`, {results['date']}, {results['machine']}): faces found "
        "(a detection over a face's crop box with IoU >= 0.3, one face each) of LFW's 100 real face crops laid out "
        "as each row says (scripts/samples/faces.py), and detections on its 100 non-face crops, which are all "
        f"false; the face pixelizer's handler in-process with format=json ({presets}), deface 1.5.0 in its own "
        "venv (CenterFace at the picture's own size, threshold 0.2, then its blurred ellipses). Pictures/s: "
        "the same pictures one at a time, decoding included.",
        "",
        *markdown_table(header, rows),
    ]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few sets, and leave the document alone")
    parser.add_argument("--json", type=Path, help="write the raw results here too")
    return parser


def main(args: argparse.Namespace) -> None:
    results = run(args.quick)
    publish("faces", render_section(results), results, None if args.quick else DOCUMENT, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
