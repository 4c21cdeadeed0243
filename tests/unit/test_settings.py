"""Strict settings parsing and per-request overrides."""

import pytest

from handlers.errors import InputError
from handlers.settings import ImageHandlerSettings, coerce, settings_from_mapping, with_overrides
from handlers.tasks.classifier import ClassifierSettings

TOP_K = {"top_k": "top_k"}


def test_defaults_when_section_is_missing():
    assert settings_from_mapping(ClassifierSettings, None) == ClassifierSettings()


def test_yaml_values_are_typed():
    settings = settings_from_mapping(ClassifierSettings, {"top_k": 3, "warmup": "false", "max_image_pixels": 1e6})
    assert (settings.top_k, settings.warmup, settings.max_image_pixels) == (3, False, 1_000_000)


def test_unknown_yaml_key_fails_loudly():
    with pytest.raises(ValueError, match="unknown handler setting.*topk.*known:.*top_k"):
        settings_from_mapping(ClassifierSettings, {"topk": 3})


@pytest.mark.parametrize("mapping", [{"top_k": 0}, {"top_k": 1001}, {"max_image_pixels": -1}, {"num_threads": -2}])
def test_out_of_range_yaml_value_fails(mapping):
    with pytest.raises(ValueError, match="must be between"):
        settings_from_mapping(ClassifierSettings, mapping)


def test_request_override_from_form_bytes():
    assert with_overrides(ClassifierSettings(), {"top_k": bytearray(b"2")}, TOP_K).top_k == 2


def test_no_parameters_returns_the_same_settings():
    settings = ClassifierSettings()
    assert with_overrides(settings, {}, TOP_K) is settings


@pytest.mark.parametrize(
    "params, error, detail",
    [
        ({"top_k": "-1"}, "invalid parameter", "top_k must be between 1 and 1000"),
        ({"top_k": "abc"}, "invalid parameter", "top_k must be a number"),
        ({"top_k": "2.5"}, "invalid parameter", "top_k must be an integer"),
        ({"top_k": True}, "invalid parameter", "top_k must be a number"),
        ({"top_k": "inf"}, "invalid parameter", "top_k must be a finite number"),
        ({"max_image_pixels": "10"}, "unknown parameter", "max_image_pixels (accepted per request: top_k)"),
        ({"format": "xml"}, "unknown parameter", "format"),
    ],
)
def test_bad_request_parameters_are_the_clients_fault(params, error, detail):
    with pytest.raises(InputError) as caught:
        with_overrides(ClassifierSettings(), params, TOP_K)
    assert caught.value.status == 400 and caught.value.error == error and detail in caught.value.detail


@pytest.mark.parametrize("value, expected", [("true", True), ("0", False), (True, True), ("No", False)])
def test_bool_coercion(value, expected):
    assert coerce("flag", value, bool) is expected


def test_tuple_coercion_from_csv_and_list():
    assert coerce("classes", "0,2,5", tuple[int, ...]) == (0, 2, 5)
    assert coerce("classes", [1, "3"], tuple[int, ...]) == (1, 3)


def test_base_settings_are_frozen():
    with pytest.raises(AttributeError):
        ImageHandlerSettings().warmup = False  # type: ignore[misc]
