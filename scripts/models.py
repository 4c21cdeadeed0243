"""Show what each compiled model is: task, input size and where its weights came from.

    python -m scripts.models build/*.pt [--strict]

With --strict it fails if any model was built with random weights.
"""

import argparse
import json
import sys
import zipfile
from pathlib import Path

# The JSON document scripts/compile.py embeds in every TorchScript file
# (handlers/runtime.py reads it back at load time).
METADATA_FILE = "metadata.json"
RANDOM = "random"  # the weights name of a randomly initialised model


def read_metadata(path: Path) -> dict:
    """The embedded metadata, read straight from the zip without loading the model."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}"))
        return json.loads(archive.read(name))


def describe(path: Path) -> dict:
    metadata = read_metadata(path)
    weights = metadata["weights"]
    return {
        "model": metadata["model"],
        "task": metadata["task"],
        "input": "x".join(map(str, metadata["input_size"])),
        "weights": weights["name"],
        "sha256": (weights["sha256"] or "-")[:12],
    }


def format_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    widths = {column: max(len(column), *(len(str(row[column])) for row in rows)) for column in columns}
    lines = ["  ".join(column.ljust(widths[column]) for column in columns)]
    lines += ["  ".join(str(row[column]).ljust(widths[column]) for column in columns) for row in rows]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+", help="compiled TorchScript files")
    parser.add_argument("--strict", action="store_true", help="fail if any model has random weights")
    return parser


def main(args: argparse.Namespace) -> None:
    rows = [describe(path) for path in args.files]
    print(format_table(rows))
    random = [row["model"] for row in rows if row["weights"] == RANDOM]
    if args.strict and random:
        sys.exit(f"error: STRICT=1 and {', '.join(random)} have random weights; see README 'Bring your own weights'")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
