"""The one document writer: each benchmark's section of docs/benchmarks.md, between
markers that name the script writing it, so that every benchmark rewrites its own
section and leaves the others; its raw results beside it as JSON."""

import datetime
import json
import os
import platform
from pathlib import Path

import torch

from scripts.zoo import REPO

DOCUMENT = REPO / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: written by scripts/bench/{name}.py -->", f"<!-- /{name} -->"


def with_section(document: str, name: str, body: str) -> str:
    """`document` with section `name` holding `body` (replaced, or appended if absent)."""
    begin, end = markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    if begin in document and end in document:
        before, rest = document.split(begin, 1)
        return before + section + rest.split(end, 1)[1]
    return document.rstrip("\n") + "\n\n" + section + "\n"


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + [
        "| " + " | ".join(str(cell) for cell in row) + " |" for row in rows
    ]


def about_the_run() -> dict:
    """What every section says of the run: when, and on what."""
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }


def publish(
    name: str, markdown: str, results: dict | list, output: Path | None = DOCUMENT, json_path: Path | None = None
) -> None:
    """Print a benchmark's section, write its raw results to `json_path` and the section into
    the document `output` (None: leave the document alone)."""
    print(markdown)
    if json_path:
        json_path.write_text(json.dumps(results, indent=1))
    if output is not None:
        document = output.read_text() if output.exists() else ""
        output.write_text(with_section(document, name, markdown))
        print(f"wrote the {name} section of {output}")
