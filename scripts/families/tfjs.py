"""A TensorFlow.js graph model read with NumPy alone: its graph (model.json's
`modelTopology`) and its weights (the manifest's shards, concatenated and cut by each
weight's shape and dtype). No TensorFlow needed.
https://www.tensorflow.org/js/guide/save_load#format_of_saved_files"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


@dataclass(frozen=True)
class GraphModel:
    nodes: list[dict]  # the graph's nodes in order: {"name", "op", "input", "attr"}
    weights: dict[str, np.ndarray]  # every constant, by node name
    signature: dict


def read_graph_model(model_json: Path) -> GraphModel:
    """model.json and the weight shards beside it -> GraphModel. Quantised weights are refused."""
    model = json.loads(Path(model_json).read_text())
    if model.get("format") != "graph-model":
        raise ValueError(f"{model_json} is not a TF.js graph model (format {model.get('format')!r})")
    weights = {}
    for group in model["weightsManifest"]:
        data = b"".join((Path(model_json).parent / path).read_bytes() for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            if "quantization" in spec:
                raise ValueError(f"{spec['name']} is quantised: not supported")
            dtype = np.dtype(DTYPES[spec["dtype"]])
            count = int(np.prod(spec["shape"], dtype=np.int64))
            values = np.frombuffer(data, dtype.newbyteorder("<"), count, offset).reshape(spec["shape"])
            weights[spec["name"]] = values.astype(dtype)  # a copy, in native byte order
            offset += count * dtype.itemsize
        if offset != len(data):
            raise ValueError(f"{model_json}: the shards hold {len(data)} bytes, the manifest {offset}")
    return GraphModel(model["modelTopology"]["node"], weights, model.get("signature", {}))
