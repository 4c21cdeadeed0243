"""What an error answer may quote: never a path, an address or a traceback, never more
than a few hundred characters, whatever a client or a decoder put in it."""

import pytest

from handlers.errors import MAX_DETAIL_CHARS, listed, public_detail, shown
from tests.corpus import assert_clean

# Messages seen in error answers before they were cleaned.
TORCHVISION = (
    "Unsupported marker type 0x4c\nException raised from decode_jpeg at "
    "/__w/vision/vision/torchvision/csrc/io/image/cpu/decode_jpeg.cpp:171 (most recent call first):\n"
    "frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x96 (0x7f2b1c0d9446 in "
    "/work/.venv/lib/python3.11/site-packages/torch/lib/libc10.so)"
)
PIL_BUFFER = "cannot identify image file <_io.BytesIO object at 0x7f3364c99ae0>"
TRACEBACK = 'boom Traceback (most recent call last):\n  File "/srv/handlers/imaging.py", line 3, in x\nValueError'


@pytest.mark.parametrize(
    "text, kept",
    [(TORCHVISION, "Unsupported marker type 0x4c"), (PIL_BUFFER, "cannot identify image file <object>"),
     (TRACEBACK, "boom"), (r"cannot open C:\Users\ts\model.pt now", "cannot open <path> now"),
     ("read /tmp/models/x/model.pt2 failed", "read <path> failed"), ("in decode.cpp:12", "in <source>")],
)  # fmt: skip
def test_server_internals_are_cut_out(text, kept):
    detail = public_detail(text)
    assert detail == kept
    assert_clean(detail)


def test_ordinary_messages_are_left_alone():
    text = "expected image/jpeg or image/png; top_k must be between 1 and 1000, got 1e+99 (0.5 s)"
    assert public_detail(text) == text


def test_details_are_one_bounded_line():
    detail = public_detail("é" * 5_000_000 + "\n" * 10)
    assert len(detail) == MAX_DETAIL_CHARS and "\n" not in detail


def test_a_value_nested_a_thousand_levels_deep_is_shown_short():
    nested = []
    for _ in range(100_000):  # far deeper than repr() survives
        nested = [nested]
    assert len(shown(nested)) <= 40
    deep = {}
    for _ in range(5_000):
        deep = {"a": deep}
    assert len(shown(deep)) <= 40


@pytest.mark.parametrize(
    "value",
    ["é" * 5_000_000, b"\xff" * 10_000_000, 10**5000, 1.5e308, None, True, ["x" * 10**6] * 10**4],
    ids=["5M é", "10 MB", "5000 digits", "float", "null", "bool", "list of long strings"],
)
def test_any_value_is_shown_in_a_few_dozen_characters(value):
    assert len(shown(value)) <= 60


def test_short_values_are_shown_whole():
    assert shown("abc") == "'abc'" and shown(-1) == "-1" and shown(["car", ""]) == "['car', '']"


def test_a_million_names_are_listed_as_five_and_a_count():
    text = listed([f"field{i}" + "é" * 1000 for i in range(1_000_000)])
    assert text.endswith(" and 999995 more") and len(text) < 300
    assert listed(["a", "b"]) == "a, b"
