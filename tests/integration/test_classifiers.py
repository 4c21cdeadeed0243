"""Every classifier served by a real TorchServe: request encodings, real labels,
error isolation under concurrency and worker scaling (tokens: test_security.py)."""

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from scripts.samples.photos import photo_bytes
from scripts.zoo import MODELS, get_model

pytestmark = pytest.mark.integration

CLASSIFIERS = [spec.name for spec in MODELS if spec.family == "classifier"]
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def cat_png() -> bytes:
    return photo_bytes("chelsea", "PNG")


def encodings(image: bytes) -> dict[str, dict]:
    """The ways a client can send one image, as requests.request keyword arguments."""
    encoded = base64.b64encode(image)
    return {
        "raw": {"method": "PUT", "data": image},  # curl -T
        "raw-post": {"method": "POST", "data": image, "headers": {"Content-Type": "image/png"}},
        "multipart": {"method": "POST", "files": {"data": ("cat.png", image, "image/png")}},
        "json-base64": {"method": "POST", "json": {"data": encoded.decode()}},
        "plain-base64": {"method": "PUT", "data": encoded},
    }


def assert_same_answer(batched: dict, alone: dict) -> None:
    """Same classes in the same order; scores equal up to float rounding, which
    differs between batch sizes (the convolution kernels do)."""
    assert [p["index"] for p in batched["predictions"]] == [p["index"] for p in alone["predictions"]]
    for got, expected in zip(batched["predictions"], alone["predictions"], strict=True):
        assert got["score"] == pytest.approx(expected["score"], abs=1e-4)
    assert {k: v for k, v in batched.items() if k != "predictions"} == {
        k: v for k, v in alone.items() if k != "predictions"
    }


def test_ping(torchserve):
    ping = torchserve.inference_api("GET", "/ping")
    assert ping.status_code == 200 and ping.json() == {"status": "Healthy"}


@pytest.mark.parametrize("model", CLASSIFIERS)
def test_every_classifier_answers_every_encoding(torchserve, cat_png, model):
    results = []
    for name, request in encodings(cat_png).items():
        response = torchserve.predict(model, **request)
        assert response.status_code == 200, (name, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        results.append(response.json())
    assert all(result == results[0] for result in results)
    predictions = results[0]["predictions"]
    assert len(predictions) == 5 and results[0]["model"] == model
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)
    assert results[0]["weights"] == "random" or results[0]["weights_sha256"]


@pytest.mark.parametrize(
    "model, weights",
    [("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1"),
     ("efficientnet_lite0", get_model("efficientnet_lite0").offline_weights.weights)],
)  # fmt: skip
def test_the_trained_classifiers_recognise_real_photos(torchserve, cat_png, model, weights):
    """Served as their weights were evaluated: MobileNetV2 bilinear with ImageNet's mean and
    std, EfficientNet-Lite0 bicubic with TensorFlow's 127 and 128 (its compiled model says so)."""
    cat = torchserve.predict(model, data=cat_png).json()
    assert cat["weights"] == weights
    assert cat["predictions"][0]["label"] in CATS
    coffee = torchserve.predict(model, data=photo_bytes("coffee")).json()
    assert coffee["predictions"][0]["label"] in {"espresso", "cup", "coffee mug"}


def test_top_k_per_request(torchserve, cat_png):
    form = torchserve.predict("mobilenet_v2", method="POST", files={"data": cat_png}, data={"top_k": "2"})
    assert len(form.json()["predictions"]) == 2
    body = torchserve.predict(
        "mobilenet_v2", method="POST", json={"data": base64.b64encode(cat_png).decode(), "top_k": 1}
    )
    assert len(body.json()["predictions"]) == 1
    # TorchServe forwards query strings on /invocations (not on /predictions/<model>).
    query = torchserve.inference_api("PUT", "/invocations?model_name=mobilenet_v2&top_k=3", data=cat_png)
    assert len(query.json()["predictions"]) == 3
    bad = torchserve.predict("mobilenet_v2", method="POST", files={"data": cat_png}, data={"top_k": "-1"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid parameter"


def test_bad_requests_fail_alone_among_concurrent_good_ones(torchserve, cat_png):
    coffee = photo_bytes("coffee")
    alone = {
        name: torchserve.predict("mobilenet_v2", data=image).json()
        for name, image in (("cat", cat_png), ("coffee", coffee))
    }
    mix = [("cat", cat_png), ("bad", b"definitely not an image"), ("coffee", coffee), ("truncated", coffee[:2000])] * 4
    start = threading.Barrier(len(mix))

    def send(item):
        start.wait()  # release all clients at once so that their requests share batches
        return item[0], torchserve.predict("mobilenet_v2", data=item[1])

    with ThreadPoolExecutor(len(mix)) as pool:
        results = list(pool.map(send, mix))
    for name, response in results:
        if name in alone:
            assert response.status_code == 200
            assert_same_answer(response.json(), alone[name])
        else:
            assert response.status_code in (400, 415), response.text
            assert set(response.json()) == {"error", "detail", "status"}


def test_scale_workers_through_the_management_api(torchserve, cat_png):
    def ready_workers() -> int:
        return sum(worker["status"] == "READY" for worker in torchserve.workers("resnet18"))

    scaled = torchserve.manage("PUT", "/models/resnet18?min_worker=2&max_worker=2&synchronous=true")
    assert scaled.status_code == 200, scaled.text
    assert ready_workers() == 2
    assert torchserve.predict("resnet18", data=cat_png).status_code == 200
    assert torchserve.manage("PUT", "/models/resnet18?min_worker=1&max_worker=1&synchronous=true").status_code == 200
    assert ready_workers() == 1
