"""Property-based tests of the per-request parameter parsers: whatever a client sends
for whichever parameter -- any JSON value, huge integers, NaN, text, bytes, empty or
repeated values -- the answer is the settings with that value applied or a 400 that
names the parameter, never another exception (which TorchServe would answer with 500)."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier_handler import ClassifierHandler
from detection import class_filter
from detector_handler import DetectorHandler
from errors import InputError
from face_pixelizer_handler import FacePixelizerHandler
from payload import header_parameters, merge_parameters, split_request
from settings import with_overrides

HANDLERS = [ClassifierHandler, DetectorHandler, FacePixelizerHandler]
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


def apply(handler_class, params: dict):
    defaults = handler_class.settings_class()
    return with_overrides(defaults, params, handler_class.request_params)


@PROPERTY
@given(handler_class=st.sampled_from(HANDLERS), data=st.data(), value=values)
def test_any_value_of_any_parameter_is_applied_or_a_400_naming_it(handler_class, data, value):
    name = data.draw(st.sampled_from(sorted(handler_class.request_params)))
    try:
        applied = apply(handler_class, {name: value})
    except InputError as err:
        assert err.status == 400 and err.error == "invalid parameter"
        assert err.detail.startswith(f"{name}: ") and len(err.detail) < 300
        return
    setting = getattr(applied, handler_class.request_params[name])
    if isinstance(setting, float):
        assert math.isfinite(setting)
    json.dumps(setting)  # what the answer's "parameters" echoes


@pytest.mark.parametrize(
    "handler_class, name, value, detail",
    [
        (ClassifierHandler, "top_k", 10**400, "top_k must be between 1 and 1000"),
        (ClassifierHandler, "top_k", "9" * 400, "top_k must be between 1 and 1000"),
        (ClassifierHandler, "top_k", "9" * 5000, "top_k must be a number"),
        (DetectorHandler, "max_detections", 10**400, "max_detections must be between 1 and 10000"),
        (DetectorHandler, "confidence", 10**400, "confidence is out of range"),
        (DetectorHandler, "confidence", float("inf"), "confidence must be a finite number"),  # JSON 1e999
        (DetectorHandler, "iou", float("nan"), "iou must be a finite number"),  # JSON NaN
        (DetectorHandler, "iou", "", "iou is empty"),
        (DetectorHandler, "classes", "", "classes is empty"),
        (DetectorHandler, "classes", "car,,person", "classes has an empty entry"),
        (DetectorHandler, "classes", [], "classes is empty"),
        (DetectorHandler, "format", None, "format is empty"),
        (FacePixelizerHandler, "input_size", 100, "input_size must be a multiple of 32"),
        (FacePixelizerHandler, "margin", [0.1, 0.2], "margin must be a number"),
    ],
)
def test_examples_of_refused_values(handler_class, name, value, detail):
    with pytest.raises(InputError) as caught:
        apply(handler_class, {name: value})
    assert caught.value.status == 400 and caught.value.detail.startswith(f"{name}: ") and detail in caught.value.detail


def test_json_integers_in_a_class_list_are_indices():
    settings = apply(DetectorHandler, {"classes": [0, "car"]})
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
    accepted = ClassifierHandler.request_params
    headers = {"X-Top-K": "3", "x-forwarded-for": "10.0.0.1", "Content-Type": "image/jpeg", "data": {"x": "y"}}
    assert header_parameters(headers, accepted) == {"top_k": "3"}
    assert header_parameters({"x-top_k": "2"}, accepted) == {"top_k": "2"}
    with pytest.raises(InputError, match="top_k is given by more than one X- header"):
        header_parameters({"X-Top-K": "3", "x-top_k": "4"}, accepted)
    with pytest.raises(InputError, match="top_k given both in an X- header and in the body"):
        merge_parameters({"top_k": b"3"}, {"top_k": "3"})
