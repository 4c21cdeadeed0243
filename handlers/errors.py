"""What a client is told when its request is refused: the error, and text that is safe
and small enough to send back. Pure functions.

An error answer quotes what went wrong, and what went wrong can quote the client (a
parameter's name or value) or the server (a C++ decoder's message names its source file;
Python's repr of a buffer names its heap address). Neither may reach the client whole:
a client's megabytes of field names would make the answer larger than TorchServe's
max_response_size (which kills the worker's channel), and a path or an address tells an
attacker about the server. Everything here is bounded whatever it is given.
"""

import re
import reprlib
from collections.abc import Collection
from typing import Any

# An error answer's detail, at most: a sentence or two.
MAX_DETAIL_CHARS = 600

# Text that belongs to the server, never to an answer.
_TRACE_TAIL = re.compile(r"(Exception raised from|Traceback \(most recent call last\)|\n\s*frame #\d).*", re.S)
_OBJECT_REPR = re.compile(r"<[^<>]{0,200}? at 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[\\/][\w.@+~-]+){2,}[\\/]?")
_SOURCE_FILE = re.compile(r"\b[\w.-]+\.(?:py|pyc|cpp|cc|cxx|c|h|hpp|cu|so|java)(?::\d+)?\b")
_SPACE = re.compile(r"\s+")


class InputError(Exception):
    """A problem with one request that the client must fix (HTTP 4xx).

    `error` is a short stable description, `detail` says what exactly was wrong.
    """

    def __init__(self, error: str, detail: str, status: int = 400):
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail
        self.status = status


def public_detail(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """`text` as an answer may carry it: no traceback or C++ stack, no file path or
    source file, no memory address, one line, at most `limit` characters."""
    text = _TRACE_TAIL.sub("", str(text))
    text = _OBJECT_REPR.sub("<object>", text)
    text = _ADDRESS.sub("0x...", text)
    text = _PATH.sub("<path>", text)
    text = _SOURCE_FILE.sub("<source>", text)
    text = _SPACE.sub(" ", text).strip().rstrip(":;,").strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    # Nesting shown two levels deep and containers cut short: reprlib then never recurses
    # deeper however deeply a client nests JSON (the builtin repr overflows the stack).
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset = 2, 4, 4, 4, 4
    short.maxstring, short.maxother, short.maxlong = 40, 40, 40
    return short


_SHORT = _short_repr()


def shown(value: Any, limit: int = 40) -> str:
    """A value for an error message, cut short: a client may send megabytes, or JSON
    nested a thousand levels deep."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = repr(bytes(value[: limit + 1]))
        length = len(value)
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    else:
        text = _SHORT.repr(value)
        length = len(value) if isinstance(value, str) else None
    if len(text) <= limit:
        return text
    size = f" ({length} {'characters' if isinstance(value, str) else 'bytes'})" if length is not None else ""
    return f"{text[: limit - 5]}...{text[-2:]}{size}"


def listed(names: Collection[str], most: int = 5, limit: int = 40) -> str:
    """Names (a client's field names, say) for an error message: at most `most` of
    them, each cut to `limit` characters, and how many more there are."""
    names = list(names)
    cut = [name if len(name) <= limit else f"{name[: limit - 3]}..." for name in map(str, names[:most])]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(cut) + more
