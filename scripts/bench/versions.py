"""The handlers of two commits side by side: is a change to handlers/ no slower? Each model's
handler of the base commit (a git worktree) and of this checkout, each in a process of its
own as a TorchServe worker runs it (scripts/building/inprocess.py), on the same compiled
file and a batch of 8 real photos, alternating for several rounds so that both meet the
same machine -> images/s per round, medians and their ratio -> the versions section of
docs/benchmarks.md.

    python -m scripts.bench.versions --base 3514ab2
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.bench.doc import DOCUMENT, about_the_run, markdown_table, publish
from scripts.zoo import REPO

# What is measured -> (the model, its compiled file, the request's parameters, for both
# commits: a base older than a parameter answers 400 and the run stops, saying so).
MODELS = {
    "mobilenet_v2": ("mobilenet_v2", "mobilenet_v2.pt", {}),
    "efficientnet_lite0": ("efficientnet_lite0", "efficientnet_lite0.pt", {}),
    "yolov5s": ("yolov5s", "yolov5s.pt2", {}),
    "yolov5s drawn": ("yolov5s", "yolov5s.pt2", {"format": "image"}),  # the boxes drawn on a JPEG answer
    "face_pixelizer": ("face_pixelizer", "face_pixelizer.pt2", {}),  # CenterFace, the default preset
    "face_pixelizer fast": ("face_pixelizer", "face_pixelizer.pt2", {"preset": "fast"}),  # RetinaFace
}
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket") * 2

# Run in each checkout's own directory: its scripts and handlers, the shared compiled file.
MEASURE = """
import json, sys, tempfile, time
from pathlib import Path
from scripts.building.inprocess import load_handler
from scripts.samples.photos import encode, photo
model, artifact, params, seconds = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), float(sys.argv[4])
with tempfile.TemporaryDirectory() as model_dir:
    handler, context = load_handler(model, Path(model_dir), batch_size=8, artifact=artifact)
    fields = {name: value.encode() for name, value in params.items()}
    rows = [{"data": encode(photo(name), "JPEG"), **fields} for name in json.loads(sys.argv[5])]
    for _ in range(3):
        handler.handle(rows, context)
    started, images = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        handler.handle(rows, context)
        images += len(rows)
    assert all(context.status(index) == 200 for index in range(len(rows)))
    print(images / (time.perf_counter() - started))
"""


def measure(checkout: Path, model: str, artifact: Path, params: dict, seconds: float) -> float:
    command = [
        sys.executable,
        "-c",
        MEASURE,
        model,
        str(artifact),
        json.dumps(params),
        str(seconds),
        json.dumps(PHOTOS),
    ]
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: {model} failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def run(base: str, models: list[str], rounds: int, seconds: float) -> dict:
    results = {**about_the_run(), "base": base, "rounds": rounds, "seconds": seconds, "models": {}}
    with tempfile.TemporaryDirectory() as folder:
        worktree = Path(folder) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), base], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        try:
            for measured in models:
                model, file, params = MODELS[measured]
                points = {"base": [], "head": []}
                for round_ in range(rounds):  # the order alternates: neither always goes first
                    for version in ("base", "head") if round_ % 2 == 0 else ("head", "base"):
                        checkout = worktree if version == "base" else REPO
                        points[version].append(measure(checkout, model, REPO / "build" / file, params, seconds))
                results["models"][measured] = points
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=False)
    return results


def render_section(results: dict) -> str:
    rows = []
    for measured, points in results["models"].items():
        _model, _file, params = MODELS[measured]
        named = measured + "".join(f" ({key}={value})" for key, value in params.items()) if params else measured
        base, head = statistics.median(points["base"]), statistics.median(points["head"])
        ratios = [h / b for h, b in zip(points["head"], points["base"], strict=True)]
        rows.append([named, f"{base:.1f}", f"{head:.1f}", f"{head / base:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"])
    lines = [
        f"`python -m scripts.bench.versions --base {results['base']}` ({results['date']}, {results['machine']}): "
        f"each model's handler of `{results['base']}` and of this commit in-process (a process each, as a "
        f"TorchServe worker runs it), the same compiled file, batches of 8 real JPEGs, {results['seconds']:.0f} s "
        f"each, {results['rounds']} rounds alternating which goes first. Images/s, medians; the ratio's range over "
        "the rounds in brackets. Each model at its defaults, but for the parameters named.",
        "",
        *markdown_table(["model", f"{results['base']} img/s", "this commit img/s", "ratio"], rows),
    ]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--json", type=Path, help="write the raw results here too")
    return parser


def main(args: argparse.Namespace) -> None:
    results = run(args.base, args.models, args.rounds, args.seconds)
    publish("versions", render_section(results), results, DOCUMENT, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
