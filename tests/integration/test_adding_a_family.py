"""The README's "Adding a model" kept true: in a copy of the repo, a toy task family --
the mean colour of a photo -- added in exactly the files that section names, built by
the project's own compile and archive recipes, and served by a real TorchServe."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from scripts.samples.photos import encode
from scripts.serve.server import local_torchserve
from scripts.zoo import REPO

pytestmark = pytest.mark.integration

# The README's template path -> the toy's file and its text.
TOY = {
    "scripts/nets/<net>.py": (
        "scripts/nets/mean_colour.py",
        '''
import torch
from torch import nn


class MeanColour(nn.Module):
    """RGB in [0, 1] -> (each image's mean colour [B, 3], the same as its features [B, 3])."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        means = x.mean(dim=(2, 3))
        return means, means
''',
    ),
    "scripts/families/<family>.py": (
        "scripts/families/colours.py",
        """
import torch

from handlers.colour_handler import ColourHandler
from scripts.families import Family, Recipe
from scripts.families.weights import Weights
from scripts.nets.inputs import UnitScaleInput
from scripts.nets.mean_colour import MeanColour


def resolve_weights(spec, *args, **kwargs) -> Weights:
    return Weights("none: no parameters", "scripts/nets/mean_colour.py", None, state_dict={})


def example(weights: Weights) -> torch.Tensor:
    return torch.stack([torch.full((3, 32, 32), value, dtype=torch.uint8) for value in (0, 128, 255)])


def check(eager: torch.Tensor, compiled: torch.Tensor, precision: str = "fp32") -> float:
    difference = (eager - compiled).abs().max().item()
    if difference > 1e-6:
        raise ValueError(f"means differ by {difference}")
    return difference


FAMILY = Family("colour", handler=ColourHandler, recipe=Recipe(
    resolve_weights, lambda spec, weights: MeanColour(), example,
    lambda spec, weights: {"task": "mean_colour", "architecture": spec.architecture, "input_size": [32, 32]},
    check, lambda weights: UnitScaleInput(), lambda network: network, "the mean colour"))
""",
    ),
    "handlers/tasks/<task>.py": (
        "handlers/tasks/colour.py",
        """
from handlers.engine import Answer, Task
from handlers.imaging import resize_center_crop


class MeanColour(Task):
    name = "mean_colour"

    def prepare(self, item):
        return resize_center_crop(item.image, 32, 32), None

    def postprocess(self, means, item):
        return Answer({"mean_rgb": [round(value * 255) for value in means.tolist()]})
""",
    ),
    "handlers/<task>_handler.py": (
        "handlers/colour_handler.py",
        """
from handlers.service import ZooHandler
from handlers.tasks.colour import MeanColour


class ColourHandler(ZooHandler):
    task_class = MeanColour
""",
    ),
    "scripts/configs/<model>.yaml": (
        "scripts/configs/mean_colour.yaml",
        """
minWorkers: 1
maxWorkers: 1
batchSize: 2
maxBatchDelay: 5
responseTimeout: 60
""",
    ),
}
TABLE_ROW = '    ModelSpec("mean_colour", "colour", "mean_colour"),\n'


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Adding a model", 1)[1].split("\n## ", 1)[0]


def copy_of_the_repo(target: Path) -> Path:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def test_a_new_family_in_the_files_the_readme_names_builds_and_serves(tmp_path):
    section = readme_section()
    assert all(template in section for template in [*TOY, "scripts/zoo.py"]), section
    repo = copy_of_the_repo(tmp_path / "repo")
    for path, text in TOY.values():
        (repo / path).write_text(text.lstrip())
    table = (repo / "scripts" / "zoo.py").read_text()
    (repo / "scripts" / "zoo.py").write_text(table.replace("\nMODELS = (\n", "\nMODELS = (\n" + TABLE_ROW, 1))
    store = tmp_path / "store"
    for command in (["scripts.building.compile", "mean_colour", "--output", "build/mean_colour.pt"],
                    ["scripts.building.archive", "mean_colour", "--serialized-file", "build/mean_colour.pt",
                     "--export-path", str(store)]):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", *command], cwd=repo, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    with local_torchserve(store, ["mean_colour"], timeout=180) as server:
        red = encode(Image.new("RGB", (64, 48), (255, 0, 0)), "PNG")
        answer = server.predict("mean_colour", data=red)
        assert answer.status_code == 200, answer.text
        assert answer.json()["mean_rgb"] == [255, 0, 0] and answer.json()["model"] == "mean_colour"
        assert server.predict("mean_colour", data=b"not an image").status_code == 415  # the shared handler's checks
