"""A Chromium and its driver for the browser tests (tests/browser/): Debian's `chromium` and
`chromium-driver` of the same version, with the libraries this system lacks, unpacked into
the venv (scripts/setup/debian.py: nothing installed system-wide). Selenium drives it through
that chromedriver, so nothing is downloaded at test time (Playwright's and Selenium
Manager's browser downloads cannot be reached here). A `chromium` and `chromedriver` on
PATH that run are used as they are.

    python -m scripts.setup.browser --venv .venv     # part of `make test`
"""

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts.setup.debian import found_or_unpacked, library_path, missing_closure

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("chromium", "chromium-driver")


@dataclass(frozen=True)
class Browser:
    chromium: str
    chromedriver: str
    env: dict[str, str]  # what both need (the unpacked libraries)


def prefix_of(venv: Path) -> Path:
    return venv.resolve() / "opt" / "chromium"


def runs(binary: str, env: dict[str, str]) -> bool:
    try:
        done = subprocess.run([binary, "--version"], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def browser_of(venv: Path) -> Browser | None:
    """The Chromium unpacked into `venv`, else one on PATH; None when neither runs."""
    prefix = prefix_of(venv)
    unpacked = prefix / "usr" / "lib" / "chromium"
    env = {**os.environ, "LD_LIBRARY_PATH": library_path(prefix)}
    candidates = [(str(unpacked / "chromium"), str(prefix / "usr" / "bin" / "chromedriver"), env)]
    if shutil.which("chromium") and shutil.which("chromedriver"):
        candidates.append((shutil.which("chromium"), shutil.which("chromedriver"), dict(os.environ)))
    for chromium, driver, environment in candidates:
        if runs(chromium, environment) and runs(driver, environment):
            return Browser(chromium, driver, environment)
    return None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=REPO / ".venv")
    return parser


def main(args: argparse.Namespace) -> int:
    packages = lambda: missing_closure(PACKAGES) or list(PACKAGES)  # noqa: E731
    found = found_or_unpacked(lambda: browser_of(args.venv), packages, prefix_of(args.venv), "Chromium")
    if found is None:
        sys.exit("error: no Chromium for the browser tests: install Debian's chromium and chromium-driver "
                 "(or any Chromium with its chromedriver) and put them on PATH")  # fmt: skip
    print(f"Chromium: {found.chromium}, driver {found.chromedriver}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
