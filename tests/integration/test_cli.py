"""The command-line client against a real TorchServe: a directory of real photos for each
model kind (JSON and image answers), over REST and gRPC, a refreshed key, a killed
worker, and clean failures."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from scripts.client.grpc_client import GrpcClient
from scripts.samples.photos import photo, write_images
from scripts.serve.server import local_torchserve, read_keys, renew_keys
from scripts.zoo import REPO
from tests.integration.conftest import scrape

pytestmark = pytest.mark.integration

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("photos"), [photo(name) for name in PHOTOS], "JPEG")


def run_cli(server, *arguments: str, token: str | None = None) -> subprocess.CompletedProcess:
    """`python -m scripts.client ...` against `server`, as a user runs it."""
    connection = [
        "--config",
        str(server.workdir / "config.properties"),
        "--key-file",
        str(server.workdir / "key_file.json"),
    ]
    if token:
        connection += ["--token", token]
    command = [sys.executable, "-m", "scripts.client", *arguments, *connection]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def lines(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_directory_of_photos_through_each_model_kind(torchserve, photo_dir, tmp_path, protocol):
    classified = run_cli(torchserve, "predict", "mobilenet_v2", str(photo_dir), "--top-k", "2", "--protocol", protocol)
    assert classified.returncode == 0, classified.stderr
    answers = lines(classified)
    assert [Path(a["file"]).stem for a in answers] == sorted(f"{i:02d}" for i in range(len(PHOTOS)))
    assert all(len(a["predictions"]) == 2 and a["parameters"] == {"top_k": 2} for a in answers)
    assert "cat" in answers[1]["predictions"][0]["label"]  # 01: chelsea

    detected = run_cli(torchserve, "predict", "yolov5s", str(photo_dir), "--confidence", "0.01", "--protocol", protocol)
    assert detected.returncode == 0, detected.stderr
    assert all(a["status"] == 200 and "detections" in a for a in lines(detected))

    output = tmp_path / "pixelated"
    pixelated = run_cli(torchserve, "predict", "face_pixelizer", str(photo_dir), "--output", str(output),
                        "--mode", "blur", "--protocol", protocol)  # fmt: skip
    assert pixelated.returncode == 0, pixelated.stderr
    for answer, name in zip(lines(pixelated), PHOTOS, strict=True):
        assert Image.open(answer["output"]).size == photo(name).size
    if protocol == "rest":  # the parameters applied travel in a header, which gRPC does not carry
        assert all(a["parameters"]["mode"] == "blur" for a in lines(pixelated))


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_refused_images_and_parameters_fail_alone_with_the_handlers_reason(torchserve, photo_dir, tmp_path, protocol):
    (photo_dir.parent / "bad").mkdir(exist_ok=True)
    bad = photo_dir.parent / "bad" / "broken.jpg"
    bad.write_bytes((photo_dir / "00.jpeg").read_bytes()[:3000])
    result = run_cli(
        torchserve, "predict", "mobilenet_v2", str(photo_dir / "01.jpeg"), str(bad), "--protocol", protocol
    )
    assert result.returncode == 1 and "1 of 2 images were refused" in result.stderr
    good, broken = lines(result)
    assert good["status"] == 200 and broken["status"] == 400 and broken["error"].startswith("corrupt image")
    unknown = run_cli(
        torchserve, "predict", "yolov5s", str(photo_dir / "01.jpeg"), "--top-k", "3", "--protocol", protocol
    )
    assert unknown.returncode == 1 and lines(unknown)[0]["error"].startswith("unknown parameter: top_k")


def test_a_raw_grpc_call_gets_a_refused_request_as_a_successful_call(torchserve):
    """TorchServe 0.12's gRPC Predictions ignores the handler's per-request status: the call
    succeeds with the error JSON as its body. The client turns it back into a failure."""
    from ts_grpc import inference_pb2

    client = GrpcClient.from_config(torchserve.workdir / "config.properties", torchserve.workdir / "key_file.json")
    request = inference_pb2.PredictionsRequest(model_name="mobilenet_v2", input={"data": b"not an image"})
    metadata = (("authorization", f"Bearer {torchserve.keys.inference}"),)
    body = client._stub.Predictions(request, metadata=metadata, timeout=60).prediction  # no exception
    assert json.loads(body) == {
        "error": "unsupported image format",
        "detail": json.loads(body)["detail"],
        "status": 415,
    }
    with pytest.raises(Exception, match="unsupported image format") as raised:
        client.predict_or_raise("mobilenet_v2", b"not an image")
    assert raised.value.answer.status == 415


def test_wrong_port_or_key_fails_at_once_and_says_why(torchserve, photo_dir, tmp_path):
    config = tmp_path / "config.properties"
    config.write_text("inference_address=http://127.0.0.1:9\nmanagement_address=http://127.0.0.1:9\n")
    command = [sys.executable, "-m", "scripts.client", "predict", "mobilenet_v2", str(photo_dir), "--config",
               str(config), "--key-file", str(torchserve.workdir / "key_file.json")]  # fmt: skip
    unreachable = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 2 and "cannot reach TorchServe at http://127.0.0.1:9" in unreachable.stderr
    refused = run_cli(torchserve, "predict", "mobilenet_v2", str(photo_dir), token="not-the-key")
    assert refused.returncode == 2 and "refused the given inference key" in refused.stderr and not refused.stdout
    grpc_refused = run_cli(torchserve, "predict", "mobilenet_v2", str(photo_dir), "--protocol", "grpc", token="nope")
    assert grpc_refused.returncode == 2 and "refused the given inference key" in grpc_refused.stderr


@pytest.fixture(scope="module")
def short_lived_keys(archives):
    """A TorchServe of its own (the refresh replaces the key every other test uses) whose
    inference key expires after 3 s, serving one single-worker classifier."""
    store, _ = archives
    with local_torchserve(store, ["fault_probe"], overrides={"token_expiration_min": "0.05"}) as server:
        yield server


def test_an_expired_key_is_refreshed_with_the_api_key(short_lived_keys, photo_dir):
    key_file = short_lived_keys.workdir / "key_file.json"
    before = json.loads(key_file.read_text())["inference"]["key"]
    time.sleep(4)  # the key has expired
    result = run_cli(short_lived_keys, "predict", "fault_probe", str(photo_dir / "01.jpeg"))
    assert result.returncode == 0, result.stderr
    assert json.loads(key_file.read_text())["inference"]["key"] != before


def fresh_management_key(server) -> None:
    """The management key expires too: new keys through the token API, as the client gets them."""
    renew_keys(server.management, server.workdir / "key_file.json")
    server.keys = read_keys(server.workdir / "key_file.json")


def kill_after(server, model: str, pid: int, answered: int) -> None:
    """SIGKILL `pid` once TorchServe has answered `answered` requests to `model` (its metrics)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        samples = scrape(server).items()
        served = sum(v for (name, labels), v in samples if name == "ts_inference_requests_total" and
                     ("model_name", model) in labels)  # fmt: skip
        if served >= answered:
            break
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def test_a_killed_worker_is_retried_and_every_photo_answered(short_lived_keys, photo_dir, tmp_path):
    many = write_images(tmp_path / "many", [photo(PHOTOS[i % 4]) for i in range(240)], "JPEG")
    fresh_management_key(short_lived_keys)
    (worker,) = short_lived_keys.workers("fault_probe")
    # Killed once it has answered 24 requests: mid-run however fast the machine is (a fixed
    # delay let a fast machine finish all 240 first, and nothing was left to retry).
    killer = threading.Thread(target=kill_after, args=(short_lived_keys, "fault_probe", worker["pid"], 24))
    killer.start()
    result = run_cli(short_lived_keys, "predict", "fault_probe", str(many), "--concurrency", "8")
    killer.join()
    assert result.returncode == 0, result.stderr[-2000:]
    answers = lines(result)
    assert len(answers) == 240 and all(a["status"] == 200 for a in answers)
    assert any(a.get("attempts", 1) > 1 for a in answers)  # the batch the worker died under, retried
