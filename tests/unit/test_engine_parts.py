"""The batch engine with a task that sees each photo at two sizes (Parts): one forward pass
per size for the whole batch, each request concluded from both of its parts, and a part
that fails -- in the model, in `summarise` or in `conclude` -- failing its request alone."""

from types import SimpleNamespace

import torch
from PIL import Image

from handlers.engine import INTERNAL, Answer, BatchEngine, Failure, Parts, Task
from handlers.observers import Observer, Observers
from handlers.settings import ImageHandlerSettings
from handlers.vision_ops import resize
from scripts.samples.photos import encode

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
SIZES = (8, 16)  # the two parts' input sizes


class TwoSizes(Task):
    """Each photo at 8x8 and at 16x16; a part's summary is its (size, mean red); the answer
    lists both parts' summaries in order."""

    name = "two_sizes"
    fail_summarise: set[int] = set()  # requests whose 16x16 part fails in `summarise`
    fail_conclude: set[int] = set()  # requests whose `conclude` fails

    def prepare(self, item):
        return Parts([(resize(item.image, (size, size), antialias=True), size) for size in SIZES])

    def summarise(self, outputs, items):
        if len(items) > 1 and any(item.index in self.fail_summarise and item.part == 1 for item in items):
            raise RuntimeError("one item of the group cannot be summarised")
        if len(items) == 1 and items[0].index in self.fail_summarise and items[0].part == 1:
            raise RuntimeError("this item cannot be summarised")
        return [(item.geometry, round(value)) for item, value in zip(items, outputs.tolist(), strict=True)]

    def conclude(self, items, parts):
        if any(item.index in self.fail_conclude for item in items):
            raise RuntimeError("conclude failed")
        return parts

    def postprocess(self, summary, item):
        return Answer({"parts": summary})


class Recorder(Observer):
    def __init__(self):
        self.forwards = []

    def forwarded(self, images, features):
        self.forwards.append((images, features.shape[0]))


def red_mean_model(poisoned_size: int = 0):
    """A model answering each image's mean red (and its mean colour as features); it fails
    on any batch at `poisoned_size` that holds a blue image."""
    calls = []

    def model(batch: torch.Tensor):
        calls.append(tuple(batch.shape))
        if batch.shape[-1] == poisoned_size and (batch[:, 2].float().mean(dim=(1, 2)) > 200).any():
            raise RuntimeError("the model cannot process this image")
        means = batch.float().mean(dim=(2, 3))
        return means[:, 0], means

    model.calls = calls
    return model


def run(task: Task, model, colours: list[str]):
    recorder = Recorder()
    engine = BatchEngine(task, model, torch.device("cpu"), Observers(recorder))
    png = {name: encode(Image.new("RGB", (40, 30), rgb), "PNG") for name, rgb in COLOURS.items()}
    requests = [SimpleNamespace(data=png[name], params={}, refused=None) for name in colours]
    return engine.run(requests), recorder


def task(settings: ImageHandlerSettings | None = None, **failing) -> TwoSizes:
    metadata = {"weights": {"name": "test-fixture", "sha256": None}}
    made = TwoSizes(settings or ImageHandlerSettings(), metadata, None, torch.device("cpu"))
    for name, indices in failing.items():
        setattr(made, name, set(indices))
    return made


def test_each_size_is_one_forward_pass_and_each_request_gets_both_parts():
    model = red_mean_model()
    results, recorder = run(task(), model, ["red", "green", "red"])
    assert [result.fields["parts"] for result in results] == [
        [(8, 255), (16, 255)], [(8, 0), (16, 0)], [(8, 255), (16, 255)]]  # fmt: skip
    assert model.calls == [(3, 3, 8, 8), (3, 3, 16, 16)]
    assert recorder.forwards == [(3, 3)]  # the drift test and batch fill see each request once


def test_a_forward_pass_sees_at_most_max_forward_pixels_and_the_answers_are_the_same():
    """max_forward_pixels 512: the three 8x8 parts (192 px) in one pass; the three 16x16 ones
    (768 px) in two, of 2 and 1 -- joined in order, the answers what one pass gives, the
    drift test still seeing each request once."""
    model = red_mean_model()
    results, recorder = run(task(ImageHandlerSettings(max_forward_pixels=512)), model, ["red", "green", "blue"])
    assert model.calls == [(3, 3, 8, 8), (2, 3, 16, 16), (1, 3, 16, 16)]
    whole, _ = run(task(), red_mean_model(), ["red", "green", "blue"])
    assert [result.fields for result in results] == [result.fields for result in whole]
    assert recorder.forwards == [(3, 3)]
    model = red_mean_model()
    run(task(ImageHandlerSettings(max_forward_pixels=10)), model, ["red", "green"])  # each image over the limit
    assert model.calls == [(1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 16, 16)]


def test_a_part_the_model_fails_on_fails_its_request_alone():
    results, _ = run(task(), red_mean_model(poisoned_size=16), ["red", "blue", "green"])
    assert isinstance(results[1], Failure) and results[1].status == 500
    assert results[0].fields["parts"] == [(8, 255), (16, 255)] and results[2].fields["parts"] == [(8, 0), (16, 0)]


def test_a_part_that_cannot_be_summarised_fails_its_request_alone():
    results, _ = run(task(fail_summarise={0}), red_mean_model(), ["red", "green"])
    assert results[0] == INTERNAL and results[1].fields["parts"] == [(8, 0), (16, 0)]


def test_a_request_that_cannot_be_concluded_fails_alone():
    results, _ = run(task(fail_conclude={2}), red_mean_model(), ["red", "green", "blue"])
    assert results[2] == INTERNAL
    assert [result.fields["parts"] for result in results[:2]] == [[(8, 255), (16, 255)], [(8, 0), (16, 0)]]
