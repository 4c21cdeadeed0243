"""A TensorFlow.js graph model evaluated op by op, as TensorFlow defines each op (NHWC,
SAME/VALID padding, TF's strided slices): the reference a conversion to PyTorch is
checked against, independent of the converted network's code. It knows the ops a
YOLOv5 export uses, and refuses any other."""

import base64

import numpy as np
import torch
import torch.nn.functional as nnf

from scripts.families.tfjs import GraphModel


def attribute(node: dict, name: str, default=None):
    """A node attribute's value: an int list, an int, a bool, a float or a (base64) string."""
    value = node.get("attr", {}).get(name)
    if value is None:
        return default
    if "list" in value:
        items = value["list"]
        return (
            [base64.b64decode(s).decode() for s in items["s"]] if "s" in items else [int(i) for i in items.get("i", [])]
        )
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    for key, kind in (("i", int), ("b", bool), ("f", float)):
        if key in value:
            return kind(value[key])
    return default


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's SAME padding of one dimension: (before, after)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv(node: dict, x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """_FusedConv2D with BiasAdd: NHWC input, HWIO kernel."""
    if attribute(node, "fused_ops") != ["BiasAdd"] or set(attribute(node, "dilations")) != {1}:
        raise NotImplementedError(f"{node['name']}: fused ops {attribute(node, 'fused_ops')}")
    stride = attribute(node, "strides")[1]
    x = x.permute(0, 3, 1, 2)
    if attribute(node, "padding") == "SAME":
        (top, bottom), (left, right) = (same_padding(x.shape[d], kernel.shape[i], stride) for d, i in ((2, 0), (3, 1)))
        x = nnf.pad(x, (left, right, top, bottom))
    return nnf.conv2d(x, kernel.permute(3, 2, 0, 1), bias, stride).permute(0, 2, 3, 1)


def max_pool(node: dict, x: torch.Tensor) -> torch.Tensor:
    kernel, stride = attribute(node, "ksize")[1], attribute(node, "strides")[1]
    x = x.permute(0, 3, 1, 2)
    if attribute(node, "padding") == "SAME":
        (top, bottom), (left, right) = (same_padding(x.shape[d], kernel, stride) for d in (2, 3))
        x = nnf.pad(x, (left, right, top, bottom), value=float("-inf"))
    return nnf.max_pool2d(x, kernel, stride).permute(0, 2, 3, 1)


def resize_nearest(node: dict, x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    if attribute(node, "align_corners") or not attribute(node, "half_pixel_centers"):
        raise NotImplementedError(f"{node['name']}: only half-pixel centres are implemented")
    height, width = (int(v) for v in size)
    rows = ((torch.arange(height) + 0.5) * x.shape[1] / height).floor().long()
    cols = ((torch.arange(width) + 0.5) * x.shape[2] / width).floor().long()
    return x[:, rows][:, :, cols]


def strided_slice(node: dict, x: torch.Tensor, begin, end, strides) -> torch.Tensor:
    """TF's StridedSlice with an ellipsis first (as YOLOv5's export uses it)."""
    if attribute(node, "ellipsis_mask") != 1 or attribute(node, "new_axis_mask") or attribute(node, "shrink_axis_mask"):
        raise NotImplementedError(f"{node['name']}: only a leading ellipsis is implemented")
    begin_mask, end_mask = attribute(node, "begin_mask"), attribute(node, "end_mask")
    index = [Ellipsis]
    for position in range(1, len(begin)):
        start = None if begin_mask >> position & 1 else int(begin[position])
        stop = None if end_mask >> position & 1 else int(end[position])
        index.append(slice(start, stop, int(strides[position])))
    return x[tuple(index)]


UNARY = {"Sigmoid": torch.sigmoid, "Square": torch.square, "Identity": lambda x: x}
BINARY = {"Mul": torch.mul, "AddV2": torch.add, "Add": torch.add, "Sub": torch.sub, "RealDiv": torch.div}


def evaluate(graph: GraphModel, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Every node's value, for these placeholders' values."""
    values: dict[str, torch.Tensor] = {name: torch.from_numpy(array) for name, array in graph.weights.items()}
    values.update({name: torch.from_numpy(array) for name, array in inputs.items()})
    for node in graph.nodes:
        op, args = node["op"], [values[name.split(":")[0]] for name in node.get("input", [])]
        if op in ("Const", "Placeholder"):
            continue
        if op in UNARY:
            values[node["name"]] = UNARY[op](args[0])
        elif op in BINARY:
            values[node["name"]] = BINARY[op](args[0], args[1])
        elif op == "_FusedConv2D":
            values[node["name"]] = conv(node, *args)
        elif op == "Pad":
            paddings = [int(v) for pair in reversed(args[1].tolist()) for v in pair]
            values[node["name"]] = nnf.pad(args[0], paddings)
        elif op == "MaxPool":
            values[node["name"]] = max_pool(node, args[0])
        elif op == "ResizeNearestNeighbor":
            values[node["name"]] = resize_nearest(node, *args)
        elif op == "ConcatV2":
            values[node["name"]] = torch.cat(args[:-1], dim=int(args[-1]))
        elif op == "Reshape":
            values[node["name"]] = args[0].reshape([int(v) for v in args[1]])
        elif op == "Transpose":
            values[node["name"]] = args[0].permute([int(v) for v in args[1]])
        elif op == "StridedSlice":
            values[node["name"]] = strided_slice(node, *args)
        else:
            raise NotImplementedError(f"op {op} ({node['name']})")
    return values
