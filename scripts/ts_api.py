"""What every caller of a TorchServe shares -- the client, the servers' launcher and
harness, the benchmarks, the web page: reading its config.properties, and telling the
frontend's own refusals (a refused key, a worker that died) from a handler's answers.
Standard library only: the runtime image's launcher imports it.

A handler's answer may quote its client (a parameter's name, a value), so the text of
an answer never tells who wrote it. The frontend's own errors have a shape of their own
(NettyUtils.sendError: exactly {"code": <the HTTP status>, "type": <its exception's
class>, "message": ...}), which no handler here writes: only that shape counts.
"""

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

# What TorchServe 0.12's frontend says, over REST and gRPC, to a missing, wrong or expired key
# (TokenAuthorizationHandler, GRPCInterceptor).
KEY_REFUSED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
KEY_REFUSED_TYPE = "InvalidKeyException"
# Its message for the requests of a batch whose worker process died (status 500 or 507).
WORKER_DIED = "Worker died."


@dataclass(frozen=True)
class FrontendError:
    """An error TorchServe's frontend answered itself, not a handler."""

    status: int
    type: str
    message: str


def read_properties(path: Path) -> dict[str, str]:
    """A Java properties file's key=value lines (comments skipped): how everything here
    reads config.properties."""
    pairs = (line.split("=", 1) for line in Path(path).read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.lstrip().startswith("#")}


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or "localhost") can only be reached from this machine. An
    IPv4 address mapped into IPv6 counts as itself (Java listens on ::ffff:127.0.0.1); any
    other name, or an empty host, is not provably loopback."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def frontend_error(status: int, body: str | bytes) -> FrontendError | None:
    """The frontend's own error document, if `body` is exactly one (see the module's docstring)."""
    if status < 400 or len(body) > 4096:  # its messages are a sentence
        return None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict) or set(document) != {"code", "type", "message"}:
        return None
    code, kind, message = document["code"], document["type"], document["message"]
    if code != status or type(code) is not int or not isinstance(kind, str) or not isinstance(message, str):
        return None
    return FrontendError(status, kind, message)


def key_refused(status: int, body: str | bytes) -> bool:
    """Whether an HTTP answer is TorchServe's frontend refusing the key it was sent (400
    in 0.12), never a handler's answer that quotes the same words."""
    error = frontend_error(status, body)
    return error is not None and status in (400, 401) and (error.type, error.message) == (KEY_REFUSED_TYPE, KEY_REFUSED)


def key_refused_grpc(code: str, details: str) -> bool:
    """The same for a gRPC call's status (its code's name, its details): the interceptor's
    PERMISSION_DENIED with exactly its message. A handler's error carries its own body and
    the frontend's exception name on a second line."""
    return code == "PERMISSION_DENIED" and details == KEY_REFUSED


def worker_died(status: int, body: str | bytes) -> bool:
    """Whether an HTTP answer is the frontend's "Worker died." for a batch whose worker died."""
    error = frontend_error(status, body)
    return error is not None and status in (500, 507) and error.message == WORKER_DIED
