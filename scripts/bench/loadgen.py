"""Closed-loop load against a server's inference API, and its statistics: the one load
generator of the benchmarks, the soak and the replicas' kill test.

Each of `concurrency` clients sends its next request as soon as the previous one is
answered, until `duration` seconds, `max_requests` requests or `stop`: the load stays
bounded whatever the server does. On asyncio and raw HTTP/1.1 keep-alive connections: a
few microseconds of client CPU per request, so that on a small machine the load
generator does not eat the server's cores.
"""

import asyncio
import itertools
import statistics
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field

from scripts.samples.photos import encode, photo

# One model of each kind: what the soak and the memory benchmark load.
DEFAULT_MODELS = ("mobilenet_v2", "yolov5s", "face_pixelizer")


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, one raw request each
class Request:
    """One request to send, and which statuses count as correct."""

    model: str
    label: str  # e.g. "good:chelsea" or "bad:truncated jpeg"
    body: bytes = field(repr=False)
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/octet-stream"})
    method: str = "PUT"
    expected: tuple[int, ...] = (200,)


@dataclass(frozen=True)
class Outcome:
    request: Request
    started: float  # time.monotonic()
    latency: float  # seconds
    status: int  # HTTP status, or 0 when no answer came (connection error, timeout)
    detail: str = ""  # the start of an unexpected answer's body

    @property
    def unexpected(self) -> bool:
        return self.status not in self.request.expected


def multipart(data: bytes, fields: dict[str, str] | None = None, name: str = "data",
              boundary: str | None = None) -> tuple[dict[str, str], bytes]:  # fmt: skip
    """(headers, body) of a multipart/form-data request: the file `data` as field `name`,
    then `fields`."""
    boundary = boundary or uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="photo.jpg"\r\n'
             "Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n"]  # fmt: skip
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
              for key, value in (fields or {}).items()]  # fmt: skip
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body


def request_mix(models: list[str], bad_every: int) -> list[Request]:
    """For every model: real photos, and after every `bad_every` of them one bad request
    (truncated image, text, unknown parameter, in turn) with the 4xx it must get.
    Models are interleaved, so every client keeps all of them busy."""
    good = [(name, encode(photo(name), "JPEG")) for name in ("chelsea", "coffee", "astronaut")]
    form_headers, form = multipart(good[0][1], {"x": "1"})
    bad = [("truncated jpeg", good[1][1][:3000], {}, (400,)), ("text", b"this is not an image", {}, (415,)),
           ("unknown parameter", form, {"headers": form_headers, "method": "POST"}, (400,))]  # fmt: skip
    per_model = []
    for model in models:
        sequence = []
        for round_ in range(len(bad) if bad_every else 1):
            for index in range(bad_every or len(good)):
                name, image = good[(round_ * (bad_every or 1) + index) % len(good)]
                sequence.append(Request(model, f"good:{name}", image))
            if bad_every:
                label, body, how, expected = bad[round_]
                sequence.append(Request(model, f"bad:{label}", body, **how, expected=expected))
        per_model.append(sequence)
    return [request for group in zip(*per_model, strict=True) for request in group]


def closed_loop(url: str, headers: dict[str, str], mix: list[Request], concurrency: int, duration: float,
                max_requests: int = 0, timeout: float = 120,
                stop: threading.Event | None = None) -> list[Outcome]:  # fmt: skip
    """The requests of `mix` sent round-robin by `concurrency` closed-loop clients to
    `url`/predictions/<model>, with `headers` added to each -> one Outcome per request."""
    raw = {request: raw_request(url, request, headers) for request in set(mix)}
    return asyncio.run(_closed_loop(url, raw, mix, concurrency, duration, max_requests, timeout, stop))


def raw_request(url: str, request: Request, headers: dict[str, str]) -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in {**request.headers, **headers}.items())
    host, path = urllib.parse.urlsplit(url).netloc, f"/predictions/{request.model}"
    return (f"{request.method} {path} HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(request.body)}\r\n\r\n"
            .encode() + request.body)  # fmt: skip


async def _closed_loop(url, raw, mix, concurrency, duration, max_requests, timeout, stop) -> list[Outcome]:
    parsed = urllib.parse.urlsplit(url)
    deadline, sent, order = time.monotonic() + duration, itertools.count(), itertools.cycle(mix)
    outcomes: list[Outcome] = []

    async def client() -> None:
        connection = None
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            if max_requests and next(sent) >= max_requests:
                break
            request, started = next(order), time.monotonic()
            try:
                connection = connection or await asyncio.open_connection(parsed.hostname, parsed.port)
                status, keep_alive, detail = await asyncio.wait_for(_exchange(*connection, raw[request]), timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as err:
                status, keep_alive, detail = 0, False, repr(err)[:200]
            outcomes.append(Outcome(request, started, time.monotonic() - started, status, detail))
            if not keep_alive and connection is not None:
                connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcomes


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool, str]:
    """Send one request, read its answer -> (status, whether the connection stays open, the
    start of the body of an answer other than 200)."""
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:  # the server closed the connection without an answer
        raise ConnectionResetError("connection closed before an answer")
    status = int(status_line.split()[1])
    length, keep_alive = 0, True
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "connection" and value.strip().lower() == "close":
            keep_alive = False
    body = await reader.readexactly(length)
    return status, keep_alive, "" if status == 200 else body[:200].decode("utf-8", "replace")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation; NaN for no values."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


def summarize(outcomes: list[Outcome], elapsed: float) -> dict:
    """Throughput, latency percentiles (ms) and status counts, overall and per model."""

    def stats(group: list[Outcome]) -> dict:
        latencies = sorted(o.latency * 1000 for o in group)
        return {"requests": len(group), "req_per_s": len(group) / elapsed if elapsed else 0.0,
                **{f"p{q}_ms": percentile(latencies, q) for q in (50, 90, 99)},
                "statuses": dict(sorted(Counter(o.status for o in group).items())),
                "unexpected": sum(o.unexpected for o in group)}  # fmt: skip

    models = sorted({o.request.model for o in outcomes})
    examples = [f"{o.request.model} {o.request.label}: {o.status} {o.detail}" for o in outcomes if o.unexpected]
    per_model = {model: stats([o for o in outcomes if o.request.model == model]) for model in models}
    return {"elapsed_s": elapsed, "overall": stats(outcomes), "models": per_model, "unexpected_examples": examples[:10]}
