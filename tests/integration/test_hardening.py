"""Bad input, concurrency and worker faults through a real TorchServe:
every malformed request costs exactly one 4xx, for that request alone."""

import base64
import io
import json
import os
import signal
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from scripts.samples.photos import encode, photo
from tests.corpus import (
    GIF_COLOURS,
    GIF_PAST_ITS_TABLE,
    Case,
    assert_clean,
    corpus,
    json_values,
    read_image_size,
    v2_binary,
)

pytestmark = pytest.mark.integration

KINDS = {"classifier": "mobilenet_v2", "detector": "yolov5s", "face": "face_pixelizer"}


def send(server, model: str, case: Case):
    if case.route == "v2":
        request = {key: value for key, value in case.request.items() if key != "method"}
        return server.inference_api("POST", f"/v2/models/{model}/infer", **request)
    return server.predict(model, **case.request)


def answer_of(case: Case, response) -> tuple[str, bytes]:
    """(content type, body) of the handler's answer: a v2 document carries it in its tensor
    (a v2 request whose JSON does not parse, the handler cannot know for one: its answer
    is the plain error, whose "error" tritonclient reads all the same)."""
    if case.route != "v2" or "outputs" not in response.json():
        return response.headers["Content-Type"].split(";")[0], response.content
    document = response.json()
    assert document["model_name"] and document["id"] in ("", "a")
    (output,) = document["outputs"]
    if output["name"] == "image":
        return output["parameters"]["content_type"], base64.b64decode(output["data"][0])
    return "application/json", output["data"][0].encode()


def check_result(kind: str, case: Case, content_type: str, body: bytes) -> None:
    """A 200 must carry a valid result for an image of the case's size."""
    if content_type == "image/jpeg":
        assert case.size is None or read_image_size(body) == case.size
        return
    result = json.loads(body)
    assert result["model"] == KINDS[kind] and "weights" in result
    if kind == "classifier":
        assert 1 <= len(result["predictions"]) <= 5
    elif case.size is not None:
        assert tuple(result["image_size"]) == case.size
        found = result["detections" if kind == "detector" else "faces"]
        width, height = case.size
        assert all(0 <= f["left"] <= f["right"] <= width and 0 <= f["top"] <= f["bottom"] <= height for f in found)


def check_refusal(case: Case, response) -> None:
    """A 4xx: the handler's JSON error (in a v2 document on that route), naming the problem
    and nothing of the server."""
    assert response.headers["Content-Type"].startswith("application/json")
    assert_clean(response.text)
    if case.route == "v2":
        assert response.json()["error"]
    _content_type, body = answer_of(case, response)
    document = json.loads(body)
    assert set(document) == {"error", "detail", "status"} and document["detail"]
    assert document["status"] == response.status_code
    assert case.error is None or document["error"] == case.error
    assert len(response.content) < 10_000  # nothing of unbounded size echoed


@pytest.mark.parametrize("kind", KINDS)
def test_corpus_costs_one_4xx_per_bad_request_and_never_a_worker(torchserve, kind):
    model = KINDS[kind]
    pids_before = [worker["pid"] for worker in torchserve.workers(model)]
    failures = []
    for case in corpus(kind):
        response = send(torchserve, model, case)
        try:
            assert case.expects(response.status_code), f"status {response.status_code}: {response.text[:300]}"
            if response.status_code != 200:
                check_refusal(case, response)
            else:
                check_result(kind, case, *answer_of(case, response))
        except (AssertionError, ValueError, KeyError) as err:
            failures.append(f"{case.name}: {err}")
    assert not failures, "\n".join(failures)
    assert [worker["pid"] for worker in torchserve.workers(model)] == pids_before  # no worker restarted
    assert len(corpus(kind)) >= 50


def test_a_bad_request_fails_alone_inside_a_shared_batch(torchserve):
    """batching_probe waits up to 500 ms to fill a batch of 8 and reports its size."""
    cat, coffee = encode(photo("chelsea"), "JPEG"), encode(photo("coffee"), "JPEG")
    alone = {
        name: torchserve.predict("batching_probe", data=image).json()
        for name, image in (("cat", cat), ("coffee", coffee))
    }  # noqa: E501
    mix = [("cat", cat), ("bad", b"GIF89a and then garbage"), ("coffee", coffee), ("empty", b"")] * 2
    start = threading.Barrier(len(mix))

    def send(item):
        start.wait()  # all eight leave together, well inside the 500 ms batch delay
        return item[0], torchserve.predict("batching_probe", data=item[1])

    with ThreadPoolExecutor(len(mix)) as pool:
        results = list(pool.map(send, mix))
    batch_sizes = {response.headers["X-Batch-Size"] for _, response in results}
    assert max(int(size) for size in batch_sizes) >= 4, batch_sizes  # they really shared batches
    for name, response in results:
        if name in alone:
            assert response.status_code == 200
            got, expected = response.json(), alone[name]
            assert [p["index"] for p in got["predictions"]] == [p["index"] for p in expected["predictions"]]
            for a, b in zip(got["predictions"], expected["predictions"], strict=True):
                assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        else:
            assert response.status_code in (400, 415) and set(response.json()) == {"error", "detail", "status"}


def test_a_killed_worker_costs_only_its_in_flight_requests(torchserve):
    """SIGKILL the worker under load: TorchServe restarts it, the requests of the batch
    it was running get "Worker died." (507 or 500: TorchServe's status depends on where it
    notices the death), every queued request is answered."""
    image = encode(photo("chelsea"), "JPEG")
    (worker,) = torchserve.workers("fault_probe")
    results, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            sent = time.monotonic()
            response = torchserve.predict("fault_probe", data=image)
            results.append((sent, time.monotonic(), response.status_code, response.text))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    killed_at = time.monotonic()
    os.kill(worker["pid"], signal.SIGKILL)
    deadline = killed_at + 30
    while time.monotonic() < deadline and not any(r[0] > killed_at and r[2] == 200 for r in list(results)):
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)

    answered_after = [r for r in results if r[0] > killed_at and r[2] == 200]
    assert answered_after and min(r[1] for r in answered_after) - killed_at < 30  # back within 30 s
    failed = [r for r in results if r[2] != 200]
    assert 1 <= len(failed) <= 4, failed  # at most the one batch (batchSize 4) that was running
    assert all(r[2] in (500, 507) and json.loads(r[3])["message"] == "Worker died." for r in failed), failed
    (restarted,) = torchserve.workers("fault_probe")
    assert restarted["pid"] != worker["pid"] and restarted["status"] == "READY"


def test_requests_above_torchserves_own_limit_get_its_413(torchserve):
    """Above max_request_size the frontend answers alone, with an empty 413 (see docs/security.md)."""
    response = torchserve.predict("mobilenet_v2", data=bytes(17_000_000))
    assert response.status_code == 413


def test_no_worker_leaves_its_model_unpacked_on_disk(torchserve):
    """The AOTInductor models (detectors, face pixelizer) are unpacked to load and the copy
    deleted at once: a worker that TorchServe kills cleans nothing up, so whatever lies in
    the temp dir while workers serve would stay there for good (190 MB per yolov5l start)."""
    served = {model["modelName"] for model in torchserve.manage("GET", "/models").json()["models"]}
    assert {"yolov5s", "face_pixelizer"} <= served and torchserve.workers("yolov5s")[0]["status"] == "READY"
    unpacked = [path.name for path in torchserve.workdir.iterdir() if path.name.startswith(("aotinductor_", "zoo-"))]
    assert unpacked == []  # TorchServe's TMPDIR (scripts/serve/server.py)


def test_a_gif_answer_shows_only_the_gifs_own_colours(torchserve):
    """Pixel indices past a GIF's colour table: the face pixelizer sends the photo back, and
    every pixel of it is a colour of the table or black -- no byte of the worker's memory
    (torchvision's GIF decoder showed whatever followed the table)."""
    response = torchserve.predict("face_pixelizer", data=GIF_PAST_ITS_TABLE)
    assert response.status_code == 200 and response.headers["X-Faces"] == "0"
    pixels = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
    # Each 16x16 block is one colour; the middle of it survives JPEG within a few levels
    # (its edges take some of the neighbours' colour from chroma upsampling).
    middles = pixels.reshape(4, 16, 4, 16, 3)[:, 4:12, :, 4:12].mean(axis=(1, 3)).reshape(-1, 1, 3)
    allowed = np.array([*GIF_COLOURS, (0, 0, 0)]).reshape(1, -1, 3)
    nearest = np.abs(middles - allowed).max(axis=2).min(axis=1)  # each block's distance to an allowed colour
    assert nearest.max() <= 10, nearest


def test_the_face_boxes_header_stays_small_however_many_faces(torchserve):
    """confidence=0 and iou=1 keep thousands of 'faces' in one view (two views' merge drops
    the boxes nested in others: merge_faces): the header lists 200 of them and says how many
    it left out (Python's http.client, behind requests, refuses a header over 64 KiB)."""
    form = {"confidence": "0", "iou": "1", "max_faces": "10000", "enlarged_view": "false"}
    astronaut = encode(photo("astronaut"), "JPEG")
    response = torchserve.predict("face_pixelizer", method="POST", files={"data": ("a.jpg", astronaut)}, data=form)
    assert response.status_code == 200, response.text[:300]
    faces, listed = int(response.headers["X-Faces"]), json.loads(response.headers["X-Face-Boxes"])
    assert faces > 1000 and len(listed) == 200 and len(response.headers["X-Face-Boxes"]) < 8192
    assert int(response.headers["X-Face-Boxes-Omitted"]) == faces - 200
    as_json = torchserve.predict("face_pixelizer", method="POST", files={"data": ("a.jpg", astronaut)},
                                 data={**form, "format": "json"})  # fmt: skip
    assert len(as_json.json()["faces"]) == faces  # the full list


def test_an_answer_larger_than_torchserve_takes_is_a_413_and_the_worker_lives(torchserve):
    """A 14 MB photo's pixelated JPEG fits TorchServe's max_response_size; in a v2 answer,
    base64 makes it 4/3 larger: the frontend would drop the worker's channel ("Worker
    died."), so the handler answers 413 for that request, in the v2 shape."""
    worker = torchserve.workers("face_pixelizer")[0]
    noise = np.random.default_rng(0).integers(0, 256, (3400, 4600, 3), dtype=np.uint8)
    jpeg = encode(Image.fromarray(noise), "JPEG", quality=90)
    element = struct.pack("<I", len(jpeg)) + jpeg
    header = {"id": "big", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(element)}}]}  # fmt: skip
    request = {key: value for key, value in v2_binary(header, element).items() if key != "method"}
    protocol = torchserve.inference_api("POST", "/v2/models/face_pixelizer/infer", **request)
    assert protocol.status_code == 413 and protocol.json()["id"] == "big"
    assert "Open Inference Protocol" in protocol.json()["error"] and len(protocol.content) < 10_000
    plain = torchserve.predict("face_pixelizer", data=jpeg)
    assert plain.status_code == 200 and 12_600_000 < len(plain.content) < 16_000_000  # base64 of it would not fit
    assert worker["pid"] in [w["pid"] for w in torchserve.workers("face_pixelizer")]


def as_json(document) -> dict:
    """A JSON body as a client may send it: NaN and Infinity included (requests' json= refuses them)."""
    return {"data": json.dumps(document).encode(), "headers": {"Content-Type": "application/json"}}


def test_any_json_in_any_v2_or_parameter_field_is_a_4xx_through_torchserve(torchserve):
    """The property tests' shapes (tests/handler/test_hostile_requests.py), sent for real."""
    model = "mobilenet_v2"
    pids = [worker["pid"] for worker in torchserve.workers(model)]
    image = base64.b64encode(encode(photo("chelsea").resize((64, 48)), "JPEG")).decode()

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(
        where=st.sampled_from(["id", "parameters", "inputs", "tensor parameters", "data", "top_k"]), value=json_values
    )
    def check(where, value):
        tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}
        document = {"id": "a", "inputs": [tensor]}
        if where == "top_k":
            response = torchserve.predict(model, method="POST", **as_json({"data": image, "top_k": value}))
        else:
            if where in ("id", "parameters", "inputs"):
                document[where] = value
            else:
                tensor[where.removeprefix("tensor ")] = value
            response = torchserve.inference_api("POST", f"/v2/models/{model}/infer", **as_json(document))
        assert response.status_code < 500, response.text[:300]
        if response.status_code != 200:
            assert_clean(response.text)

    check()
    assert [worker["pid"] for worker in torchserve.workers(model)] == pids
