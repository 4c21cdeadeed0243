"""Show what each compiled model is: task, input size and where its weights came from.

    python -m scripts.building.models build/*.pt [--strict]

With --strict it fails if any model was built with random weights.
"""

import argparse
import sys
from pathlib import Path

from handlers.service import read_embedded_metadata
from scripts.families.weights import RANDOM


def read_metadata(path: Path) -> dict:
    """The embedded metadata, read straight from the zip without loading the model: the
    handlers' own reader (handlers/service.py), the one definition of where it lies."""
    return read_embedded_metadata(path)


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
