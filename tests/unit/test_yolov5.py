"""YOLOv5 architecture (ultralytics-compatible names and sizes) and the safe import
of ultralytics/yolov5 checkpoints."""

import copy
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from scripts.families.yolov5_checkpoint import CheckpointError, load_yolov5_checkpoint
from scripts.nets.yolov5 import SIZES, YOLOv5

# Parameter counts of ultralytics' v7.0 model summaries (README: 7.2M, 21.2M, 46.5M).
PUBLISHED_PARAMETERS = {"yolov5s": 7_235_389, "yolov5m": 21_190_557, "yolov5l": 46_563_709}


@pytest.fixture(scope="module")
def yolov5s() -> YOLOv5:
    torch.manual_seed(0)
    model = YOLOv5(SIZES["yolov5s"]).eval()
    model.model[24].initialize_biases()
    return model


@pytest.mark.parametrize("name", sorted(SIZES))
def test_sizes_match_ultralytics(name):
    model = YOLOv5(SIZES[name])
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[name]


def test_state_dict_names_are_ultralytics(yolov5s):
    keys = list(yolov5s.state_dict())
    assert keys[0] == "model.0.conv.weight" and keys[-1] == "model.24.m.2.bias"
    assert {"model.24.anchors", "model.2.m.0.cv1.conv.weight", "model.9.cv2.bn.running_var"} <= set(keys)
    assert "model.24.stride" not in keys  # a plain attribute in ultralytics, so not in its checkpoints
    p3_anchors = torch.tensor([[10, 13], [16, 30], [33, 23]]) / 8  # in grid units, as ultralytics stores them
    assert torch.allclose(yolov5s.state_dict()["model.24.anchors"][0], p3_anchors)


@pytest.mark.parametrize("batch, height, width", [(1, 640, 640), (3, 320, 480), (2, 64, 96)])
def test_decoded_output_for_any_batch_and_size(yolov5s, batch, height, width):
    with torch.inference_mode():
        out = yolov5s(torch.rand(batch, 3, height, width))
    cells = sum((height // s) * (width // s) for s in (8, 16, 32))
    assert out.shape == (batch, 3 * cells, 85)
    assert ((out[..., 4:] >= 0) & (out[..., 4:] <= 1)).all()  # probabilities
    assert (out[..., 2:4] > 0).all()  # widths and heights


def test_untrained_model_predicts_little(yolov5s):
    """ultralytics' bias priors: an untrained model's objectness stays near 8/6400."""
    with torch.inference_mode():
        out = yolov5s(torch.rand(1, 3, 320, 320))
    assert (out[..., 4] > 0.25).sum() == 0


# --- checkpoint import -------------------------------------------------------------

ULTRALYTICS_CLASSES = {
    "models.common": ["Conv", "C3", "SPPF", "Bottleneck", "Concat"],
    "models.yolo": ["Detect", "DetectionModel"],
}


def write_ultralytics_checkpoint(model: YOLOv5, path: Path, names: dict[int, str], slot: str = "model") -> None:
    """Pickle `model` exactly as ultralytics' train.py + strip_optimizer do: a
    models.yolo.DetectionModel in fp16 inside a dict, built from models.common.* and
    torch.nn modules -- with ultralytics' class names registered only while writing."""
    fake = {name: types.ModuleType(name) for name in ("models", *ULTRALYTICS_CLASSES)}
    for module, class_names in ULTRALYTICS_CLASSES.items():
        for name in class_names:
            setattr(fake[module], name, type(name, (nn.Module,), {"__module__": module, "__qualname__": name}))
    sys.modules.update(fake)
    try:
        detection_model = copy.deepcopy(model).half()
        for index, layer in enumerate(detection_model.model):
            kind = type(layer).__name__
            module = "models.yolo" if kind == "Detect" else "models.common"
            if kind in ULTRALYTICS_CLASSES[module]:
                layer.__class__ = getattr(fake[module], kind)
            layer.f, layer.i, layer.type, layer.np = -1, index, f"{module}.{kind}", 0  # parse_model's bookkeeping
        for submodule in detection_model.modules():
            kind = type(submodule).__name__
            if kind in ULTRALYTICS_CLASSES["models.common"]:
                submodule.__class__ = getattr(fake["models.common"], kind)
        detect = detection_model.model[24]
        del detect._buffers["stride"]
        detect._non_persistent_buffers_set.discard("stride")
        detect.stride, detect.grid, detect.anchor_grid, detect.inplace = torch.tensor([8.0, 16.0, 32.0]), [], [], True
        detection_model.__class__ = fake["models.yolo"].DetectionModel
        detection_model.names, detection_model.nc, detection_model.save = names, len(names), [4, 6, 10, 14, 17, 20, 23]
        detection_model.yaml = {"nc": 80, "depth_multiple": 0.33, "backbone": [[-1, 1, "Conv", [64, 6, 2, 2]]]}
        detection_model.hyp = {"lr0": 0.01, "anchor_t": 4.0}
        detection_model.stride = torch.tensor([8.0, 16.0, 32.0])
        checkpoint = {
            "epoch": -1,
            "best_fitness": None,
            "model": None,
            "ema": None,
            "updates": None,
            "optimizer": None,
            "opt": {"weights": "yolov5s.pt", "imgsz": 640, "hyp": {"lr0": 0.01}},
            "git": {"url": None},
            "date": "2022-11-22T00:00:00",
        }
        checkpoint[slot] = detection_model
        torch.save(checkpoint, path)
    finally:
        for name in fake:
            del sys.modules[name]


def test_release_checkpoint_layout_loads_without_yolov5_code(yolov5s, tmp_path):
    path = tmp_path / "yolov5s.pt"
    names = {i: f"class{i}" for i in range(80)}
    write_ultralytics_checkpoint(yolov5s, path, names)
    assert "models" not in sys.modules
    state_dict, loaded_names = load_yolov5_checkpoint(path)
    assert loaded_names == [f"class{i}" for i in range(80)]
    assert all(tensor.dtype == torch.float32 for tensor in state_dict.values())
    rebuilt = YOLOv5(SIZES["yolov5s"]).eval()
    rebuilt.load_state_dict(state_dict, strict=True)
    x = torch.rand(2, 3, 320, 320)
    with torch.inference_mode():
        expected = copy.deepcopy(yolov5s).half().float()(x)  # what fp16 storage leaves of the weights
        assert torch.allclose(rebuilt(x), expected, atol=1e-4)


def test_ema_entry_is_preferred(yolov5s, tmp_path):
    write_ultralytics_checkpoint(yolov5s, tmp_path / "ema.pt", {0: "only"}, slot="ema")
    state_dict, names = load_yolov5_checkpoint(tmp_path / "ema.pt")
    assert names == ["only"] and "model.24.anchors" in state_dict


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"model": sd}])
def test_plain_state_dicts_load(yolov5s, tmp_path, wrap):
    torch.save(wrap(yolov5s.state_dict()), tmp_path / "plain.pt")
    state_dict, names = load_yolov5_checkpoint(tmp_path / "plain.pt")
    assert names is None and state_dict.keys() == yolov5s.state_dict().keys()


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("slot", ["model", "ema", "opt"])
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, slot):
    marker = tmp_path / "pwned"
    torch.save({"epoch": -1, slot: Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused.*allow-list"):
        load_yolov5_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save({"epoch": 3, "model": None}, tmp_path / "empty.pt")
    for name in ("text.pt", "empty.pt"):
        with pytest.raises(CheckpointError):
            load_yolov5_checkpoint(tmp_path / name)
