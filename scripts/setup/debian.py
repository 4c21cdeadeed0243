"""Debian packages unpacked into the venv, for the tools the project runs beside Python
(HAProxy, a Chromium for the browser tests): `apt-get download` and `dpkg-deb -x`, so that
nothing is installed system-wide and no root is needed where apt's package lists exist."""

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def found_or_unpacked(
    find: Callable[[], T | None], packages: Callable[[], list[str]], prefix: Path, what: str
) -> T | None:
    """`find()`'s tool; where it finds none and apt exists, after unpacking `packages()`
    into `prefix` (a failure is a warning: the caller says what to do)."""
    found = find()
    if found is None and shutil.which("apt-get") and shutil.which("dpkg-deb"):
        try:
            download_and_unpack(packages(), prefix)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
            print(f"warning: could not unpack Debian's {what}: {err}", file=sys.stderr)
        found = find()
    return found


def missing_closure(packages: tuple[str, ...]) -> list[str]:
    """`packages` and the dependencies (not the recommendations) this system lacks, as apt
    would install them."""
    plan = subprocess.run(
        ["apt-get", "install", "--simulate", "--no-install-recommends", *packages],
        capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"},
    ).stdout  # fmt: skip
    return [line.split()[1] for line in plan.splitlines() if line.startswith("Inst ")]


def download_and_unpack(packages: list[str] | tuple[str, ...], prefix: Path) -> None:
    """The packages' files under `prefix` (emptied first)."""
    with tempfile.TemporaryDirectory() as downloads:
        fetch = subprocess.run(["apt-get", "download", *packages], cwd=downloads, capture_output=True, text=True)
        if fetch.returncode != 0 and os.geteuid() == 0:  # package lists missing: refresh them (root only)
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
            fetch = subprocess.run(["apt-get", "download", *packages], cwd=downloads, capture_output=True, text=True)
        if fetch.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(packages)} failed: {fetch.stderr.strip()}")
        shutil.rmtree(prefix, ignore_errors=True)
        prefix.mkdir(parents=True)
        for package in sorted(Path(downloads).glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(package), str(prefix)], check=True)


def library_path(prefix: Path) -> str:
    """LD_LIBRARY_PATH for binaries unpacked under `prefix`: its library directories and
    their subdirectories holding libraries of their own (pulseaudio/)."""
    roots = [prefix / "usr" / "lib" / "x86_64-linux-gnu", prefix / "lib" / "x86_64-linux-gnu"]
    nested = [path for root in roots if root.is_dir() for path in root.iterdir() if any(path.glob("*.so*"))]
    return ":".join([*map(str, roots + nested), os.environ.get("LD_LIBRARY_PATH", "")])
