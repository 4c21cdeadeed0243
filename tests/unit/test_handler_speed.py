"""The GPU benchmark's bookkeeping (scripts/bench/handler_speed.py): a variant that crashes
its process is recorded with where it died, the doc section says why a target is missed, and
the EXIF check tells a handler that reads a phone photo upright from one that does not."""

import argparse
import io
import json
import math
import subprocess
import sys

import pytest
from PIL import Image, ImageOps

from scripts.bench.handler_speed import (
    RATIO_TARGET,
    answer_distance,
    death,
    exif_orientation,
    key_value,
    render_section,
    run_variant_process,
)
from scripts.samples.photos import encode


def test_a_native_crash_is_reported_with_where_it_happened():
    crash = "import faulthandler\ndef load_package():\n    faulthandler._sigsegv()\nload_package()\n"
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", crash], capture_output=True, text=True)
    message = death(done.returncode, done.stderr)
    assert message.startswith("the process died (killed by SIGSEGV) in File") and "in load_package" in message
    assert death(3, "Traceback ...\nValueError: no") == "the process died (exit status 3)"


def test_a_variant_that_fails_costs_only_itself():
    """(Handler settings reach the child's command line, which takes them.)"""
    args = argparse.Namespace(device="cpu", batches=[1], seconds=0.1, setting=[("jpeg_encoder", "host")], artifact=None)
    rows, error = run_variant_process(args, "no_such_model", "torchscript", "fp32")
    assert rows == [] and error.startswith("KeyError") and "no_such_model" in error


def test_handler_settings_are_read_as_yaml_values():
    assert key_value("jpeg_encoder=host") == ("jpeg_encoder", "host")
    assert key_value("num_threads=4") == ("num_threads", 4) and key_value("warmup=false") == ("warmup", False)
    with pytest.raises(argparse.ArgumentTypeError):
        key_value("jpeg_encoder")


def row(model, batch, model_ips, handler_ips, random=True):
    stages = {"decode": 4.0, "preprocess": 2.0, "forward": 4.1, "postprocess": 3.0}
    return {
        "model": model, "compiler": "torchscript", "precision": "bf16", "batch": batch,
        "model_img_per_s": model_ips, "handler_img_per_s": handler_ips, "ratio": handler_ips / model_ips,
        "stage_ms": stages, "random_weights": random,
    }  # fmt: skip


def test_the_section_explains_a_missed_target_with_the_runs_own_stage_times():
    results = {
        "date": "2026-11-23", "device": "NVIDIA H100 80GB HBM3", "cpus": 16, "torch": "2.11.0", "cuda": "13.0",
        "seconds": 2, "rows": [row("resnet50", 1, 500, 320), row("resnet50", 32, 8000, 2000)],
        "failures": [{"model": "face_pixelizer", "compiler": "aoti", "precision": "fp32", "error": "the process died"}],
    }  # fmt: skip
    results["rows"].append({**row("face_pixelizer", 32, 900, 700, random=False), "settings": {"jpeg_encoder": "host"}})
    text = render_section(results)
    assert "| face_pixelizer jpeg_encoder=host | torchscript | bf16 | 32 | 900 | 700 | 0.78 yes |" in text
    assert "NVIDIA H100 80GB HBM3" in text and "2026-11-23" in text and "**Random weights**: resnet50" in text
    assert "| resnet50 | torchscript | bf16 | 32 | 8000 | 2000 | 0.25 **no** |" in text
    assert "| resnet50 | torchscript | bf16 | 1 | 500 | 320 | 0.64 |" in text  # no verdict off the target's batch
    # batch 32: the model 4.0 ms, the handler 16.0 ms, the target allows 4.0 / 0.6
    assert f"| resnet50 torchscript bf16 | 4.0 | 4.0 | 2.0 | 4.1 | 3.0 | 16.0 | {4.0 / RATIO_TARGET:.1f} |" in text
    assert "- face_pixelizer aoti fp32: the process died" in text


class StandIn:
    """A handler that answers each photo with what it read: its pixels as a JPEG, or as JSON
    its size and a label of its shape; reading the EXIF orientation or not, or answering
    the same whatever it reads."""

    def __init__(self, orient: bool, answer: str = "image"):
        self.orient, self.answer = orient, answer

    def handle(self, requests, context):
        image = Image.open(io.BytesIO(requests[0]["body"]))
        image = ImageOps.exif_transpose(image) if self.orient else image.convert("RGB")
        if self.answer == "image":
            return [encode(image, "JPEG", quality=90)]
        if self.answer == "constant":
            return [json.dumps({"predictions": [{"label": "cat", "score": 0.5}]})]
        wide = image.width > image.height
        predictions = [
            {"label": "wide" if wide else "tall", "score": 0.9},
            {"label": "tall" if wide else "wide", "score": 0.1},
        ]
        return [json.dumps({"image_size": list(image.size), "predictions": predictions})]


@pytest.mark.parametrize("answer", ["image", "json"])
def test_the_exif_check_tells_a_handler_that_reads_the_orientation_from_one_that_does_not(answer):
    assert exif_orientation(StandIn(orient=True, answer=answer), None) == "applied"
    assert exif_orientation(StandIn(orient=False, answer=answer), None) == "ignored"
    assert exif_orientation(StandIn(orient=True, answer="constant"), None) == "undecided"


def test_answers_are_compared_by_what_they_say_not_by_their_order():
    cat = {"name": "cat", "box": [10, 20, 200, 280], "score": 0.9}
    dog = {"name": "dog", "box": [0, 0, 5, 5], "score": 0.3}
    first, swapped = (json.dumps({"size": [451, 300], "detections": found}) for found in ([cat, dog], [dog, cat]))
    assert answer_distance(first, swapped, 451) == 0
    moved = first.replace("[10, 20, 200, 280]", "[10, 20, 200, 289]").replace("0.9", "0.8")
    assert answer_distance(first, moved, 451) == pytest.approx(9 / 451 + 0.1)  # pixels as a share of the side
    assert answer_distance(first, first.replace('"dog"', '"fox"'), 451) == 12  # the dog's 6 values gone, the fox's new
    small, large = (encode(Image.new("RGB", size, "gray"), "JPEG") for size in ((4, 3), (3, 4)))
    assert answer_distance(small, small, 4) == 0 and answer_distance(small, large, 4) == math.inf
