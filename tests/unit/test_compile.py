"""Compilation: metadata, parity checks, atomic output, strict failures."""

import pytest
import torch

from runtime import load_compiled_model
from scripts import compile as compile_script
from scripts.classifiers import check_classifier_parity, parity_batch
from scripts.models import read_metadata
from scripts.weights import IMAGENET_PRESET, random_weights
from scripts.zoo import get_model


@pytest.fixture(scope="module")
def compiled_resnet18(tmp_path_factory):
    output = tmp_path_factory.mktemp("build") / "resnet18.pt"
    weights = random_weights(get_model("resnet18"), strict=False)  # whatever the local cache holds
    metadata = compile_script.compile_model(get_model("resnet18"), weights, output)
    return output, metadata


def test_metadata_is_embedded_and_complete(compiled_resnet18):
    output, metadata = compiled_resnet18
    assert read_metadata(output) == metadata
    assert metadata["task"] == "classification" and metadata["architecture"] == "resnet18"
    assert metadata["input_size"] == [224, 224] and metadata["resize_size"] == 256
    assert metadata["mean"] == IMAGENET_PRESET["mean"] and metadata["num_classes"] == 1000
    assert metadata["weights"] == {"name": "random", "origin": "torch.manual_seed(0)", "sha256": None}
    assert metadata["torch_version"] == torch.__version__
    assert 0 <= metadata["parity_max_abs_diff"] < 1e-4
    assert not list(output.parent.glob("*.partial"))


def test_served_file_matches_eager_on_real_photos_with_dynamic_batch(compiled_resnet18):
    output, _ = compiled_resnet18
    model, metadata = load_compiled_model(output, torch.device("cpu"))
    spec = get_model("resnet18")
    eager = compile_script.RECIPES["classifier"].build(spec, random_weights(spec, strict=False))
    photos = parity_batch(IMAGENET_PRESET)
    with torch.inference_mode():
        for batch in (photos[:1], photos, torch.cat([photos, photos])):
            check_classifier_parity(eager(batch), model(batch))


def test_parity_check_catches_a_different_model():
    logits = torch.randn(2, 1000)
    with pytest.raises(ValueError, match="top-5 classes differ"):
        check_classifier_parity(logits, -logits)
    nudged = logits.clone()
    nudged[:, logits[0].argmin()] += 1e-3  # top-5 intact, one logit off
    with pytest.raises(ValueError, match="logits differ"):
        check_classifier_parity(logits, nudged)


def test_strict_build_without_weights_exits_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    args = compile_script.get_args_parser().parse_args(
        ["resnet18", "--output", str(tmp_path / "r.pt"), "--strict", "--no-download"]
    )
    with pytest.raises(SystemExit, match="strict mode refuses random ones.*WEIGHTS_DIR"):
        compile_script.main(args)
    assert not (tmp_path / "r.pt").exists()


def test_metadata_round_trips_through_save(tmp_path):
    module = torch.jit.script(torch.nn.Identity())
    compile_script.save_compiled(module, {"task": "x", "n": [1, 2]}, tmp_path / "m.pt")
    assert read_metadata(tmp_path / "m.pt") == {"task": "x", "n": [1, 2]}
