"""The wheels a lent GPU machine lacks (requirements-gpu-device.txt), downloaded here for
its Python (3.12, manylinux x86_64) into .whl/, in parts that each fit one call's 64 MiB
(.whl/1, .whl/2, ...): carry one part per call; scripts/bench/gpu_device.sh installs
whatever parts it finds and says what is still missing.

    python -m scripts.bench.gpu_wheels         # make gpu-wheels
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from scripts.zoo import REPO

REQUIREMENTS = REPO / "requirements-gpu-device.txt"
FOLDER = REPO / ".whl"
PART_BYTES = 60 << 20  # of the 64 MiB a call carries, the rest for the checkout itself
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
          "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64"]  # fmt: skip


def requirements(path: Path = REQUIREMENTS) -> list[str]:
    """The pinned requirements, comments and blank lines left out."""
    lines = (re.sub(r"\s*#.*", "", line).strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def parts(sizes: dict[str, int], limit: int = PART_BYTES) -> list[list[str]]:
    """Wheels (name -> bytes) in as few parts of at most `limit` bytes as first-fit by
    decreasing size finds; a wheel over the limit alone is an error."""
    too_large = [name for name, size in sizes.items() if size > limit]
    if too_large:
        raise ValueError(f"{', '.join(too_large)} over {limit} bytes: no call can carry it")
    packed: list[list[str]] = []
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        part = next((p for p in packed if sum(sizes[n] for n in p) + sizes[name] <= limit), None)
        if part is None:
            packed.append(part := [])
        part.append(name)
    return packed


def download(folder: Path = FOLDER) -> list[list[str]]:
    """Every wheel into folder/all (afresh: a wheel no longer required must not travel), then
    hard-linked into folder/1, folder/2, ... -> the parts."""
    every = folder / "all"
    shutil.rmtree(every, ignore_errors=True)
    every.mkdir(parents=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", *TARGET,
               "--dest", str(every), *requirements()]  # fmt: skip
    subprocess.run(command, check=True)
    packed = parts({wheel.name: wheel.stat().st_size for wheel in every.glob("*.whl")})
    for part in folder.glob("[0-9]*"):  # the last run's parts, however many there were
        shutil.rmtree(part)
    for index, names in enumerate(packed, start=1):
        part = folder / str(index)
        part.mkdir()
        for name in names:
            (part / name).hardlink_to(every / name)
    return packed


def main(args: argparse.Namespace) -> None:
    for index, names in enumerate(download(args.folder), start=1):
        size = sum((args.folder / str(index) / name).stat().st_size for name in names)
        print(f"{args.folder / str(index)}: {len(names)} wheels, {size / 2**20:.1f} MiB")
    print("carry one part per call: bash scripts/bench/gpu_device.sh MODEL installs what it finds under .whl/")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=FOLDER)
    main(parser.parse_args())
