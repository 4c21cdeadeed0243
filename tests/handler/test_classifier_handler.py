"""The classifier handler driven exactly as TorchServe drives it, with a fake context."""

import base64
import json
import time

import pytest
import torch
import yaml
from PIL import Image

from handlers.observers import REGISTRY_ENV, WorkerRegistry, usable_cores
from scripts.samples.photos import encode
from scripts.zoo import REPO
from tests.handler.conftest import DEFAULT_YAML, TINY_METADATA, AlwaysFails, FailsOnBatches, OnlyChannelsLast

RED, GREEN, BLUE, GRAY = (250, 10, 10), (10, 250, 10), (10, 10, 250), (128, 128, 128)


def solid(color, size=(64, 48), fmt="JPEG", mode="RGB") -> bytes:
    return encode(Image.new("RGB", size, color).convert(mode), fmt)


def body(data: bytes) -> dict:
    return {"body": bytearray(data)}


def answers(responses: list[bytes]) -> list[dict]:
    return [json.loads(response) for response in responses]


def top1(response: dict) -> str:
    return response["predictions"][0]["label"]


def test_mixed_sizes_and_formats_give_one_response_each_in_order(make_handler):
    handler, context = make_handler()
    batch = [
        body(solid(RED, (640, 480), "JPEG")),
        body(solid(GREEN, (30, 20), "PNG", "P")),
        body(solid(BLUE, (1, 1000), "WEBP")),
        body(solid(GRAY, (300, 451), "GIF", "L")),
        body(solid(RED, (5, 5), "BMP")),
        body(solid(GREEN, (200, 100), "TIFF", "RGBA")),
    ]
    results = answers(handler.handle(batch, context))
    assert [top1(r) for r in results] == ["red", "green", "blue", "gray", "red", "green"]
    assert all(len(r["predictions"]) == 3 for r in results)  # top_k from the YAML
    assert context.statuses == {} and set(context.content_types.values()) == {"application/json"}


def test_response_carries_model_and_weights_provenance(make_handler):
    handler, context = make_handler()
    (result,) = answers(handler.handle([body(solid(RED))], context))
    assert result["model"] == "tiny"
    assert (result["weights"], result["weights_sha256"]) == ("test-fixture", None)
    assert set(result["predictions"][0]) == {"label", "index", "score"}
    scores = [p["score"] for p in result["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_a_corrupt_image_fails_alone(make_handler):
    handler, context = make_handler()
    good = [solid(RED), solid(BLUE, (90, 60), "PNG")]
    alone = handler.handle([body(data) for data in good], context)
    truncated = solid(GREEN, (200, 200))[:300]
    mixed = handler.handle([body(good[0]), body(b"\x00garbage"), body(truncated), body(good[1])], context)
    assert mixed[0] == alone[0] and mixed[3] == alone[1]
    assert context.status(0) == 200 and context.status(3) == 200
    assert (context.status(1), context.status(2)) == (415, 400)
    assert json.loads(mixed[1])["error"] == "unsupported image format"
    assert json.loads(mixed[2]) == {"error": "corrupt image", "detail": json.loads(mixed[2])["detail"], "status": 400}
    assert context.content_types[1] == "application/json"


def test_every_request_encoding_gives_the_same_answer(make_handler):
    handler, context = make_handler()
    image = solid(GREEN, (80, 60), "PNG")
    encoded = base64.b64encode(image)
    rows = [
        {"body": bytearray(image)},  # curl -T / --data-binary
        {"data": bytearray(image)},  # multipart form field
        {"body": {"data": encoded.decode()}},  # JSON
        {"body": bytearray(encoded)},  # plain base64 body
    ]
    results = handler.handle(rows, context)
    assert len(set(results)) == 1 and top1(json.loads(results[0])) == "green"


def test_top_k_overridable_per_request_and_invalid_values_fail_alone(make_handler):
    handler, context = make_handler()
    image = bytearray(solid(RED))
    rows = [
        {"data": image, "top_k": bytearray(b"1")},  # multipart form field
        {"body": {"data": base64.b64encode(image).decode(), "top_k": 4}},  # JSON
        {"data": image, "top_k": b"-1"},
        {"data": image, "top_k": b"abc"},
        {"data": image, "colour": b"x"},
        {"data": image},
    ]
    results = handler.handle(rows, context)
    assert [len(json.loads(r).get("predictions", [])) for r in results] == [1, 4, 0, 0, 0, 3]
    assert [context.status(i) for i in range(6)] == [200, 200, 400, 400, 400, 200]
    assert json.loads(results[4])["error"] == "unknown parameter"


def test_image_limits(make_handler):
    yaml = {**DEFAULT_YAML, "handler": {"max_image_pixels": 10_000, "max_image_bytes": 5_000}}
    handler, context = make_handler(yaml=yaml)
    rows = [body(solid(RED, (100, 100))), body(solid(RED, (101, 100))), body(b"\xff\xd8\xff" + bytes(6_000))]
    handler.handle(rows, context)
    assert [context.status(i) for i in range(3)] == [200, 413, 413]


def test_a_failing_batch_is_retried_image_by_image(make_handler):
    no_warmup = {**DEFAULT_YAML, "handler": {"warmup": False}}  # its warm-up batch would fail
    handler, context = make_handler(module=FailsOnBatches(), yaml=no_warmup)
    results = answers(handler.handle([body(solid(RED)), body(solid(GREEN)), body(solid(BLUE))], context))
    assert [top1(r) for r in results] == ["red", "green", "blue"]


def test_a_failing_batch_wide_post_processing_is_retried_image_by_image(make_handler, monkeypatch):
    """`summarise` works on the whole batch (top-k on the device); if it fails for the batch,
    each image is summarised alone, and only the image it fails on gets a 500."""
    handler, context = make_handler()
    summarise = handler.task.summarise

    def fails_on_batches_and_on_green(logits, items):
        if len(items) > 1 or top1({"predictions": summarise(logits, items)[0]}) == "green":
            raise RuntimeError("post-processing failed")
        return summarise(logits, items)

    monkeypatch.setattr(handler.task, "summarise", fails_on_batches_and_on_green)
    results = answers(handler.handle([body(solid(RED)), body(solid(GREEN)), body(solid(BLUE))], context))
    assert [context.status(i) for i in range(3)] == [200, 500, 200]
    assert [top1(results[0]), results[1]["error"], top1(results[2])] == ["red", "internal error", "blue"]


def test_a_failing_model_answers_500_per_request_and_never_raises(make_handler):
    handler, context = make_handler(module=AlwaysFails(), yaml={**DEFAULT_YAML, "handler": {"warmup": False}})
    results = answers(handler.handle([body(solid(RED)), body(b"junk")], context))
    assert [context.status(i) for i in range(2)] == [500, 415]
    assert results[0]["error"] == "inference failed"


def test_metrics_of_a_batch(make_handler):
    """What scripts/configs/metrics.yaml declares, emitted through context.metrics."""
    handler, context = make_handler()
    handler.handle([body(solid(RED)), body(b"junk"), body(solid(BLUE)), {"data": solid(RED), "top_k": b"0"}], context)
    metrics = context.metrics
    assert metrics.of("zoo_requests_total", status_class="2xx", error="none") == [2]  # one increment per outcome
    assert metrics.of("zoo_requests_total", status_class="4xx", error="unsupported_image_format") == [1]
    assert metrics.of("zoo_requests_total", status_class="4xx", error="invalid_parameter") == [1]
    assert metrics.of("zoo_forward_batch_images") == [2]  # the two good images, one forward pass
    assert set(metrics.stage_ms()) == {"decode", "preprocess", "forward", "postprocess"}
    assert all(value >= 0 for values in metrics.stage_ms().values() for value in values)
    top1 = metrics.of("zoo_top1_probability")
    assert len(top1) == 2 and all(0.9 < p <= 1 for p in top1)  # saturated red and blue: confident


def test_every_emitted_metric_is_declared_in_the_metrics_config(make_handler):
    """TorchServe's frontend exports only declared metrics, with the declared labels."""
    declared = yaml.safe_load((REPO / "scripts" / "configs" / "metrics.yaml").read_text())["model_metrics"]
    labels = {
        m["name"]: [d for d in m["dimensions"] if d not in ("ModelName", "Level")] for t in declared.values() for m in t
    }
    handler, context = make_handler()
    handler.handle([body(solid(RED)), body(b"junk")], context)
    for name, emitted in context.metrics.values:
        assert name in labels and [label for label, _ in emitted] == labels[name], name


def test_unknown_yaml_setting_fails_the_load(make_handler):
    with pytest.raises(ValueError, match="unknown handler setting"):
        make_handler(yaml={**DEFAULT_YAML, "handler": {"topk": 3}})


def test_model_of_another_task_is_refused(make_handler):
    with pytest.raises(ValueError, match="is a 'detection' model, not 'classification'"):
        make_handler(metadata={**TINY_METADATA, "task": "detection"})


def test_model_without_metadata_is_refused(make_handler):
    with pytest.raises(ValueError, match="not built by scripts/building/compile.py"):
        make_handler(metadata=None)


def test_labels_must_match_the_model(make_handler):
    with pytest.raises(ValueError, match="exactly the indices 0..9"):
        make_handler(metadata={**TINY_METADATA, "num_classes": 10})


@pytest.mark.parametrize("handler_settings", [{"num_threads": 1}, {}])
def test_threads_follow_the_busy_workers_on_the_machine(make_handler, monkeypatch, tmp_path, handler_settings):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "workers"))
    before = torch.get_num_threads()
    try:
        handler, context = make_handler(yaml={**DEFAULT_YAML, "handler": handler_settings})
        handler.threads.interval = 0  # re-read the registry at every batch
        pinned = handler_settings.get("num_threads")
        handler.handle([body(solid(RED))], context)
        assert torch.get_num_threads() == (pinned or usable_cores())  # alone on the machine
        another = WorkerRegistry(tmp_path / "workers")  # another model's worker gets busy
        another.heartbeat()
        handler.handle([body(solid(RED))], context)
        assert torch.get_num_threads() == (pinned or max(1, usable_cores() // 2))
        another.leave()  # scaled down
        handler.handle([body(solid(RED))], context)
        assert torch.get_num_threads() == (pinned or usable_cores())
    finally:
        torch.set_num_threads(before)


def test_an_idle_worker_gives_memory_back_after_loading_and_after_batches(make_handler):
    handler, context = make_handler(yaml={**DEFAULT_YAML, "handler": {"release_memory_after_s": 0.05}})

    def trims_reach(count: int) -> bool:
        deadline = time.monotonic() + 10
        while handler.memory.trims < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return handler.memory.trims == count

    assert trims_reach(1)  # once loaded and warmed up
    handler.handle([body(solid(RED))], context)
    assert trims_reach(2)


def test_batch_size_header_is_opt_in(make_handler):
    handler, context = make_handler()
    handler.handle([body(solid(RED)), body(solid(BLUE))], context)
    assert dict(context.headers) == {}
    handler, context = make_handler(yaml={**DEFAULT_YAML, "handler": {"batch_size_header": True}})
    handler.handle([body(solid(RED)), body(b"junk"), body(solid(BLUE))], context)
    assert [context.headers[i]["X-Batch-Size"] for i in range(3)] == ["3", "3", "3"]


@pytest.mark.parametrize("decoder", ["batched", "per_image"])
def test_both_jpeg_decoders_give_the_same_answers_and_isolate_corrupt_ones(make_handler, decoder):
    """ "batched" is the GPU path (nvJPEG, one call per batch); on CPU it runs the same code."""
    handler, context = make_handler(yaml={**DEFAULT_YAML, "handler": {"jpeg_decoder": decoder}})
    good = [solid(RED, (640, 480)), solid(GREEN, (31, 17)), solid(BLUE, (300, 451), "PNG")]
    truncated = solid(GREEN, (400, 400))[:500]
    results = handler.handle([body(good[0]), body(truncated), body(good[1]), body(good[2])], context)
    assert [context.status(i) for i in range(4)] == [200, 400, 200, 200]
    assert [top1(json.loads(results[i])) for i in (0, 2, 3)] == ["red", "green", "blue"]


def test_channels_last_inputs_give_the_same_answers(make_handler):
    handler, context = make_handler(yaml={**DEFAULT_YAML, "handler": {"channels_last": True}})
    (result,) = handler.handle([body(solid(RED))], context)
    assert top1(json.loads(result)) == "red"


def test_metrics_can_be_turned_off(make_handler):
    handler, context = make_handler(yaml={**DEFAULT_YAML, "handler": {"metrics": False}})
    handler.handle([body(solid(RED)), body(b"junk")], context)
    assert context.metrics.values == {} and context.status(1) == 415


def test_open_inference_requests_are_answered_in_the_protocol_even_when_malformed(make_handler):
    """A v2 request's answer (and error) is v2-shaped: TorchServe's gRPC front end fails the
    worker on any other answer to one."""
    handler, context = make_handler()
    red = base64.b64encode(solid(RED)).decode()
    good = {"id": "1", "parameters": {"top_k": 1}, "inputs": [{"name": "data", "datatype": "BYTES", "data": [red]}]}
    empty = {"id": "2", "inputs": [{"name": "data", "datatype": "BYTES", "shape": [1], "data": []}]}
    wrong_type = {"id": "3", "inputs": [{"name": "data", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    results = answers(handler.handle([{"body": good}, {"body": empty}, {"body": wrong_type}], context))
    assert [r["id"] for r in results] == ["1", "2", "3"] and all(r["model_version"] for r in results)
    (answer,) = results[0]["outputs"][0]["data"]
    assert json.loads(answer)["predictions"][0]["label"] == "red"
    assert [context.status(i) for i in range(3)] == [200, 400, 400]
    assert results[1]["error"].startswith("no image in request") and "outputs" in results[1]


def test_the_describe_api_gets_the_model_its_weights_and_parameters(make_handler):
    """TorchServe's GET /models/<name>?customized=true reaches the handler as one request
    with no input (ts/service.py: no parameters, an empty dict) and the header describe:
    True; the answer is what a client needs to build a form."""
    handler, context = make_handler()
    context.request_headers[0] = {"describe": "True"}
    (answer,) = handler.handle([{}], context)
    described = json.loads(answer)
    assert described == {
        "model": "tiny",
        "task": "classification",
        "weights": "test-fixture",
        "weights_sha256": None,
        "random_weights": False,
        "max_image_bytes": handler.task.settings.max_image_bytes,
        "max_image_pixels": handler.task.settings.max_image_pixels,
        "parameters": {"top_k": handler.task.settings.top_k},
        "choices": {},
    }
    assert context.status(0) == 200


def test_a_client_s_describe_header_does_not_change_a_prediction_s_route(make_handler):
    """TorchServe passes a prediction's headers to the handler: `describe: True` on a
    prediction must not turn it into the describe call."""
    handler, context = make_handler()
    for row in (body(solid(RED)), {"data": solid(RED, fmt="PNG")}, {"body": bytearray()}):
        context.request_headers[0] = {"describe": "True"}
        (answer,) = answers(handler.handle([row], context))
        assert "task" not in answer and ("predictions" in answer or answer["error"] == "empty request")


def test_the_warm_up_runs_the_model_in_the_memory_format_it_is_served_in(make_handler):
    """channels_last: the warm-up's batches reach the model channels-last, as served ones do
    (a warm-up in NCHW would tune kernels for a layout no request brings)."""
    served = {**DEFAULT_YAML, "handler": {"top_k": 3, "channels_last": True, "warmup": True}}
    handler, context = make_handler(module=OnlyChannelsLast(), yaml=served)  # the warm-up ran
    responses = handler.handle([body(solid(RED)), body(solid(GREEN, (30, 20), "PNG"))], context)
    assert [top1(answer) for answer in answers(responses)] == ["red", "green"]
