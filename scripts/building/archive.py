"""Pack one compiled model into a TorchServe archive: the one recipe for every model.

    python -m scripts.building.archive mobilenet_v2 --serialized-file build/mobilenet_v2.pt --export-path model_store

The archive holds the compiled model, the family's entry module (TorchServe's --handler),
its companions' compiled files (other networks its task may run, beside the compiled model),
the handlers package with the modules that entry module imports and no others (TorchServe
copies an extra directory's contents into the model directory, which is on the worker's
PYTHONPATH: `handlers/` lands there whole), the family's data files and the model's YAML config
(with --profile gpu, its GPU settings: scripts/building/profiles.py); with --drift-reference
DIR also the drift test's reference sample, embedded from DIR (scripts/building/drift_reference.py).
"""

import argparse
import ast
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from handlers.drift import REFERENCE_FILE
from scripts.building.drift_reference import write_reference
from scripts.building.profiles import PROFILES, profile_file
from scripts.child_process import console_script
from scripts.families import family
from scripts.zoo import HANDLERS_DIR, REPO, ModelSpec, get_model

ARCHIVE_VERSION = "1.0"


def archiver_command(
    spec: ModelSpec,
    serialized_file: Path,
    export_path: Path,
    name: str,
    config: Path,
    extra: tuple[Path, ...] = (),
) -> list[str]:
    """torch-model-archiver's command line; `extra` holds the staged handlers package's parent."""
    task = family(spec.family)
    extra_files = [*(REPO / data_file for data_file in task.data_files), *extra]
    return [
        console_script("torch-model-archiver"),
        "--model-name", name,
        "--version", ARCHIVE_VERSION,
        "--serialized-file", str(serialized_file),
        "--handler", inspect.getfile(task.handler),
        "--extra-files", ",".join(str(path) for path in extra_files),
        "--config-file", str(config),
        "--export-path", str(export_path),
        "--force",
    ]  # fmt: skip


def handler_modules(entry: Path) -> list[Path]:
    """The files of the handlers package that the entry module `entry` imports, directly
    or through each other (absolute `handlers.` and relative imports), with each
    package's __init__.py: what its archive must carry."""
    needed: set[Path] = set()
    pending = [entry]
    while pending:
        path = pending.pop()
        package = path.parent.relative_to(HANDLERS_DIR.parent).parts
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = package[: len(package) - node.level + 1] if node.level else ()
            parts = (*base, *(node.module.split(".") if node.module else ()))
            if not parts or parts[0] != HANDLERS_DIR.name:
                continue
            candidates = [parts, *((*parts, alias.name) for alias in node.names)]
            for dotted in candidates:
                found = HANDLERS_DIR.parent.joinpath(*dotted).with_suffix(".py")
                if found.is_file() and found not in needed:
                    needed.add(found)
                    pending.append(found)
    packages = {folder / "__init__.py" for path in needed for folder in path.relative_to(HANDLERS_DIR).parents}
    return sorted(needed | {HANDLERS_DIR / init for init in packages})


def stage_handlers(entry: Path, staging: Path) -> Path:
    """A directory holding handlers/ with the modules `entry` needs, for --extra-files."""
    root = staging / "package"
    for path in handler_modules(entry):
        target = root / path.relative_to(HANDLERS_DIR.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return root


def build_archive(
    spec: ModelSpec,
    serialized_file: Path,
    export_path: Path,
    name: str | None = None,
    config: Path | None = None,
    drift_reference: Path | None = None,
    profile: str = "cpu",
) -> Path:
    """Write <export_path>/<name>.mar atomically and return its path. `name` and
    `config` default to the model's own (with `profile`'s settings); tests archive
    variants with other settings. `drift_reference`: a directory of images to embed as
    the drift test's reference."""
    name = name or spec.name
    for required in (serialized_file, config or spec.config_file):
        if not required.is_file():
            raise FileNotFoundError(f"{required} is missing (run `make archive`)")
    export_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=export_path, prefix=".partial-") as staging:
        config = config or profile_file(spec, profile, Path(staging))
        companions = tuple(spec.companion_files(serialized_file).values())
        missing = [path for path in companions if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]} is missing: {spec.name} carries it (run `make archive`)")
        extra = (stage_handlers(Path(inspect.getfile(family(spec.family).handler)), Path(staging)), *companions)
        if drift_reference is not None:
            extra = (*extra, Path(staging) / REFERENCE_FILE)
            write_reference(spec.name, drift_reference, extra[-1], serialized_file)
        command = archiver_command(spec, serialized_file, Path(staging), name, config, extra)
        subprocess.run(command, check=True)
        target = export_path / f"{name}.mar"
        os.replace(Path(staging) / target.name, target)
    return target


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Archive one compiled zoo model as a .mar file.")
    parser.add_argument("model", help="a model name from scripts/zoo.py")
    parser.add_argument("--serialized-file", type=Path, required=True, help="the compiled TorchScript file")
    parser.add_argument("--export-path", type=Path, default=REPO / "model_store")
    parser.add_argument(
        "--drift-reference", type=Path, help="directory of reference images for the drift test (or of <model>/ ones)"
    )
    parser.add_argument("--profile", choices=PROFILES, default="cpu", help="the settings for the hardware it serves on")
    return parser


def main(args: argparse.Namespace) -> None:
    try:
        spec = get_model(args.model)
        target = build_archive(
            spec, args.serialized_file, args.export_path, drift_reference=args.drift_reference, profile=args.profile
        )
    except (KeyError, ValueError, OSError, subprocess.CalledProcessError) as err:
        sys.exit(f"error: {err}")
    print(f"{target}: {target.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
