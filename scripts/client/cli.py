"""The command-line client of the served models.

    python -m scripts.client predict mobilenet_v2 photos/ --top-k 3 > answers.jsonl
    python -m scripts.client predict face_pixelizer photos/ --output pixelated/
    python -m scripts.client predict yolov5s street.jpg --protocol grpc --confidence 0.4
    python -m scripts.client anonymise clip.mp4 -o clip.anonymised.mp4

`predict` sends every image (directories: their images) with at most --concurrency in
flight and writes one JSON line per file, in the order given (image answers go to
--output DIR, the line names the file written). Exit status: 0 when every image got an
answer, 1 when some were refused (their lines say why), 2 when the server cannot be
reached or refuses the key (nothing more is sent).
"""

import argparse
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from scripts.client.auth import AuthError
from scripts.client.options import (
    IMAGE_SUFFIXES,
    PARAMETERS,
    UsageError,
    add_connection_options,
    make_client,
    request_parameters,
)
from scripts.client.rest import Answer, ConnectionFailed
from scripts.client.video import add_anonymise_parser


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given; directories as their image files, in name order."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or directory")
    if not files:
        raise UsageError(f"no images in {', '.join(map(str, paths))}")
    return files


def answer_line(path: Path, answer: Answer, output: Path | None) -> dict:
    """What one file's JSON line says; an image answer is written into `output`."""
    line = {"file": str(path), "status": answer.status}
    if answer.attempts > 1:
        line["attempts"] = answer.attempts
    if not answer.ok:
        return {**line, "error": answer.error()}
    if answer.is_image:
        target = output / f"{path.stem}.jpg"
        target.write_bytes(answer.body)
        return {**line, "output": str(target), "parameters": json.loads(answer.headers.get("X-Parameters", "{}"))}
    return {**line, **answer.json()}


def predict_all(client, model: str, files: list[Path], params: dict, concurrency: int) -> Iterator[Answer]:
    """Answers in the order of `files`, with at most `concurrency` requests in flight."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            yield from pool.map(lambda path: client.predict(model, path.read_bytes(), params, path.name), files)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def predict(args: argparse.Namespace) -> int:
    files = image_files(args.paths)
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
    client, params = make_client(args), request_parameters(args)
    out = args.jsonl.open("w") if args.jsonl else sys.stdout
    failed = 0
    with tqdm(total=len(files), unit="img", file=sys.stderr, disable=None) as progress:
        for path, answer in zip(files, predict_all(client, args.model, files, params, args.concurrency), strict=True):
            if answer.ok and answer.is_image and args.output is None:
                raise UsageError(f"{args.model} answers images: pass --output DIR (or --format json)")
            failed += not answer.ok
            print(json.dumps(answer_line(path, answer, args.output)), file=out, flush=True)
            progress.update()
    if failed:
        print(f"{failed} of {len(files)} images were refused; their lines say why", file=sys.stderr)
    return 1 if failed else 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.client", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    predict_parser = commands.add_parser("predict", help="send images to a model")
    predict_parser.add_argument("model")
    predict_parser.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_DIR")
    predict_parser.add_argument("--output", type=Path, help="directory for image answers")
    predict_parser.add_argument("--jsonl", type=Path, help="write the JSON lines here instead of stdout")
    predict_parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    for option, (param, text) in PARAMETERS.items():
        predict_parser.add_argument(option, dest=param, help=text)
    add_connection_options(predict_parser)
    add_anonymise_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return args.run(args) if hasattr(args, "run") else predict(args)
    except (UsageError, ConnectionFailed, AuthError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
