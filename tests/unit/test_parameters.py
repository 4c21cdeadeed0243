"""Property-based tests of the per-request parameter parsers: whatever a client sends
for whichever parameter -- any JSON value, huge integers, NaN, text, bytes, empty or
repeated values -- the answer is the settings with that value applied or a 400 that
names the parameter, never another exception (which TorchServe would answer with 500)."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.edge import header_parameters, merge_parameters, parse_request
from handlers.errors import InputError
from handlers.settings import with_overrides
from handlers.tasks.classifier import Classifier
from handlers.tasks.detector import Detector, class_filter
from handlers.tasks.face import FacePixelizer


def split_request(row: dict) -> tuple[bytes, dict]:
    """A plain request's image and parameters, as the edge parses them."""
    request = parse_request(row, {}, ())
    return request.data, request.params


HANDLERS = [Classifier, Detector, FacePixelizer]
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
number_texts = st.one_of(
    st.integers(min_value=-(10**500), max_value=10**500).map(str),
    st.floats().map(repr),
    st.sampled_from(["", " ", "NaN", "nan", "inf", "-inf", "1e999", "-1e999", "0x10", "1_000", "½", "٣", "3 3"]),
)
values = st.one_of(json_values, number_texts, number_texts.map(str.encode), st.binary(max_size=20))


def apply(task_class, params: dict):
    defaults = task_class.settings_class()
    return with_overrides(defaults, params, task_class.request_params)


@PROPERTY
@given(task_class=st.sampled_from(HANDLERS), data=st.data(), value=values)
def test_any_value_of_any_parameter_is_applied_or_a_400_naming_it(task_class, data, value):
    name = data.draw(st.sampled_from(sorted(task_class.request_params)))
    try:
        applied = apply(task_class, {name: value})
    except InputError as err:
        assert err.status == 400 and err.error == "invalid parameter"
        assert err.detail.startswith(f"{name}: ") and len(err.detail) < 300
        return
    setting = getattr(applied, task_class.request_params[name])
    if isinstance(setting, float):
        assert math.isfinite(setting)
    json.dumps(setting)  # what the answer's "parameters" echoes


@pytest.mark.parametrize(
    "task_class, name, value, detail",
    [
        (Classifier, "top_k", 10**400, "top_k must be between 1 and 1000"),
        (Classifier, "top_k", "9" * 400, "top_k must be between 1 and 1000"),
        (Classifier, "top_k", "9" * 5000, "top_k must be a number"),
        (Detector, "max_detections", 10**400, "max_detections must be between 1 and 10000"),
        (Detector, "confidence", 10**400, "confidence is out of range"),
        (Detector, "confidence", float("inf"), "confidence must be a finite number"),  # JSON 1e999
        (Detector, "iou", float("nan"), "iou must be a finite number"),  # JSON NaN
        (Detector, "iou", "", "iou is empty"),
        (Detector, "classes", "", "classes is empty"),
        (Detector, "classes", "car,,person", "classes has an empty entry"),
        (Detector, "classes", [], "classes is empty"),
        (Detector, "format", None, "format is empty"),
        (FacePixelizer, "input_size", 100, "input_size must be a multiple of 32"),
        (FacePixelizer, "margin", [0.1, 0.2], "margin must be a number"),
    ],
)
def test_examples_of_refused_values(task_class, name, value, detail):
    with pytest.raises(InputError) as caught:
        apply(task_class, {name: value})
    assert caught.value.status == 400 and caught.value.detail.startswith(f"{name}: ") and detail in caught.value.detail


def test_json_integers_in_a_class_list_are_indices():
    settings = apply(Detector, {"classes": [0, "car"]})
    assert settings.classes == ("0", "car")
    assert class_filter(settings.classes, ["person", "bicycle", "car"]).tolist() == [0, 2]


@PROPERTY
@given(classes=st.lists(st.text(max_size=12), min_size=1, max_size=4))
def test_a_class_filter_is_indices_or_a_value_error_naming_the_class(classes):
    names = ["person", "bicycle", "car"]
    try:
        indices = class_filter(tuple(classes), names)
    except ValueError as err:
        assert "unknown class" in str(err)
        return
    assert all(0 <= index < len(names) for index in indices.tolist())


def test_a_key_repeated_in_a_json_body_is_refused():
    with pytest.raises(InputError) as caught:
        split_request({"body": bytearray(b'{"data": "AAAA", "top_k": 3, "top_k": 4}')})
    assert caught.value.error == "repeated parameter" and "'top_k'" in caught.value.detail


def test_parameters_from_headers():
    accepted = Classifier.request_params
    headers = {"X-Top-K": "3", "x-forwarded-for": "10.0.0.1", "Content-Type": "image/jpeg", "data": {"x": "y"}}
    assert header_parameters(headers, accepted) == {"top_k": "3"}
    assert header_parameters({"x-top_k": "2"}, accepted) == {"top_k": "2"}
    with pytest.raises(InputError, match="top_k is given by more than one X- header"):
        header_parameters({"X-Top-K": "3", "x-top_k": "4"}, accepted)
    with pytest.raises(InputError, match="top_k given both in an X- header and in the body"):
        merge_parameters({"top_k": b"3"}, {"top_k": "3"})
