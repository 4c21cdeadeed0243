"""HAProxy for `make replicas` and its test: the gateway in front of TorchServe replicas
(deploy/haproxy/gateway.cfg). An `haproxy` 2.2+ on PATH is used as it is; otherwise
Debian's package and the libraries it needs are downloaded with `apt-get download` and
unpacked into the venv (nothing installed system-wide, no root needed where apt's
package lists exist). Elsewhere (no apt), install HAProxy 2.2+ and put it on PATH.

    python -m scripts.setup.haproxy --venv .venv     # part of `make setup`
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from scripts.setup.debian import found_or_unpacked, library_path

REPO = Path(__file__).resolve().parents[2]
# Debian 12's haproxy and the libraries of its build that a slim system lacks.
PACKAGES = ("haproxy", "liblua5.3-0", "libopentracing-c-wrapper0", "libopentracing1")
MIN_VERSION = (2, 2)  # `http-request return`, `retry-on`


def prefix_of(venv: Path) -> Path:
    return venv.resolve() / "opt" / "haproxy"


def command_of(prefix: Path) -> tuple[str, dict[str, str]] | None:
    """(the haproxy binary, the environment it needs), unpacked under `prefix` or on PATH;
    None when neither runs."""
    unpacked = prefix / "usr" / "sbin" / "haproxy"
    if unpacked.exists():
        env = {**os.environ, "LD_LIBRARY_PATH": library_path(prefix)}
        if version_of(str(unpacked), env):
            return str(unpacked), env
    on_path = shutil.which("haproxy")
    if on_path and version_of(on_path, dict(os.environ)):
        return on_path, dict(os.environ)
    return None


def version_of(binary: str, env: dict[str, str]) -> tuple[int, int] | None:
    """HAProxy's (major, minor) when it runs and is new enough, else None."""
    try:
        result = subprocess.run([binary, "-v"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version (\d+)\.(\d+)", result.stdout)
    version = (int(match.group(1)), int(match.group(2))) if match and result.returncode == 0 else None
    return version if version and version >= MIN_VERSION else None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=REPO / ".venv")
    return parser


def main(args: argparse.Namespace) -> int:
    prefix = prefix_of(args.venv)
    found = found_or_unpacked(lambda: command_of(prefix), lambda: list(PACKAGES), prefix, "HAProxy")
    if found is None:
        print(f"warning: no HAProxy {'.'.join(map(str, MIN_VERSION))}+ (needed by `make replicas` only): "
              "install it and put it on PATH", file=sys.stderr)  # fmt: skip
        return 0
    print(f"HAProxy: {found[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
