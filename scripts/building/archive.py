"""Pack one compiled model into a TorchServe archive: the one recipe for every model.

    python -m scripts.building.archive mobilenet_v2 --serialized-file build/mobilenet_v2.pt --export-path model_store

The archive holds the TorchScript file, the family's handler module, the shared
handler modules (TorchServe copies extra files flat into the model directory, which
is on the worker's PYTHONPATH), the family's data files and the model's YAML config
(with --profile gpu, its GPU settings: scripts/building/profiles.py); with --drift-reference
DIR also the drift test's reference sample, embedded from DIR (scripts/building/drift_reference.py).
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.building.drift_reference import write_reference
from scripts.building.profiles import PROFILES, profile_file
from scripts.families import families, family
from scripts.zoo import HANDLERS_DIR, REPO, ModelSpec, get_model, handler_module

ARCHIVE_VERSION = "1.0"


def archiver_command(
    spec: ModelSpec,
    serialized_file: Path,
    export_path: Path,
    name: str,
    config: Path,
    extra: tuple[Path, ...] = (),
) -> list[str]:
    task = family(spec.family)
    extra_files = [*shared_handler_modules(), *(REPO / data_file for data_file in task.data_files), *extra]
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    return [
        str(archiver if archiver.exists() else "torch-model-archiver"),
        "--model-name", name,
        "--version", ARCHIVE_VERSION,
        "--serialized-file", str(serialized_file),
        "--handler", str(HANDLERS_DIR / task.handler),
        "--extra-files", ",".join(str(path) for path in extra_files),
        "--config-file", str(config),
        "--export-path", str(export_path),
        "--force",
    ]  # fmt: skip


def shared_handler_modules() -> list[Path]:
    """Handler-side library modules: everything in handlers/ but the families' entry points."""
    entry_points = {task.handler for task in families().values()}
    return sorted(path for path in HANDLERS_DIR.glob("*.py") if path.name not in entry_points)


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
        extra = ()
        if drift_reference is not None:
            extra = (Path(staging) / handler_module("drift_monitor").REFERENCE_FILE,)
            write_reference(spec.name, drift_reference, extra[0], serialized_file)
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
