"""Closed-loop load generation against a TorchServe inference API, and its statistics.

Each of `concurrency` clients sends its next request as soon as the previous one is
answered, until `duration` seconds or `max_requests` requests have passed: the load
stays bounded whatever the server does. Used by scripts/bench/soak.py and the benchmarks.
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

import requests


@dataclass(frozen=True)
class Request:
    """One request to send: where, how, and which statuses count as correct."""

    model: str
    label: str  # e.g. "good:chelsea.jpg" or "bad:truncated jpeg"
    kwargs: dict = field(repr=False)  # for requests.request: method, data, files, ...
    expected: tuple[int, ...] = (200,)


@dataclass(frozen=True)
class Outcome:
    request: Request
    started: float  # time.monotonic()
    latency: float  # seconds
    status: int  # HTTP status, or 0 when no answer came (connection error, timeout)
    detail: str = ""

    @property
    def unexpected(self) -> bool:
        return self.status not in self.request.expected


def run_load(
    url: str,
    headers: dict[str, str],
    mix: list[Request],
    concurrency: int,
    duration: float,
    max_requests: int = 0,
    timeout: float = 120,
) -> list[Outcome]:
    """Send the requests of `mix` round-robin from `concurrency` closed-loop clients."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    order = itertools.cycle(mix)
    deadline = time.monotonic() + duration
    sent = itertools.count()

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < deadline:
            if max_requests and next(sent) >= max_requests:
                return
            with lock:
                request = next(order)
            started = time.monotonic()
            try:
                response = session.request(
                    url=f"{url}/predictions/{request.model}", headers=headers, timeout=timeout, **request.kwargs
                )
                status, detail = response.status_code, "" if response.ok else response.text[:200]
            except requests.RequestException as err:
                status, detail = 0, repr(err)[:200]
            outcome = Outcome(request, started, time.monotonic() - started, status, detail)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


def summarize(outcomes: list[Outcome], elapsed: float) -> dict:
    """Throughput, latency percentiles (ms) and status counts, overall and per model."""

    def stats(group: list[Outcome]) -> dict:
        latencies = sorted(o.latency * 1000 for o in group)
        return {
            "requests": len(group),
            "req_per_s": len(group) / elapsed if elapsed else 0.0,
            "p50_ms": percentile(latencies, 50),
            "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99),
            "statuses": dict(sorted(Counter(o.status for o in group).items())),
            "unexpected": sum(o.unexpected for o in group),
        }

    models = sorted({o.request.model for o in outcomes})
    return {
        "elapsed_s": elapsed,
        "overall": stats(outcomes),
        "models": {model: stats([o for o in outcomes if o.request.model == model]) for model in models},
        "unexpected_examples": [
            f"{o.request.model} {o.request.label}: {o.status} {o.detail}" for o in outcomes if o.unexpected
        ][:10],
    }


def closed_loop_raw(
    url: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    concurrency: int,
    duration: float,
    max_requests: int = 0,
    timeout: float = 120,
    method: str = "PUT",
) -> list[tuple[float, float, int]]:
    """The same closed loop with one fixed request, on asyncio and raw HTTP/1.1
    keep-alive connections: a few microseconds of client CPU per request, so that on a
    small machine the load generator does not eat the server's cores. The body is sent
    as application/octet-stream unless `headers` name a Content-Type. Returns
    (started, latency s, status) per request; status 0 for a failed connection."""
    headers = {"Content-Type": "application/octet-stream", **headers}
    request = raw_request(method, url, path, headers, body)
    return asyncio.run(_closed_loop(url, request, concurrency, duration, max_requests, timeout))


def raw_request(method: str, url: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    host = urllib.parse.urlsplit(url).netloc
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def multipart(field: str, filename: str, data: bytes, content_type: str = "image/jpeg") -> tuple[dict[str, str], bytes]:
    """(headers, body) of a multipart/form-data request holding one file."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body


async def _closed_loop(url, request, concurrency, duration, max_requests, timeout):
    parsed = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + duration
    sent = itertools.count()
    results: list[tuple[float, float, int]] = []

    async def client() -> None:
        connection = None
        while time.monotonic() < deadline and not (max_requests and next(sent) >= max_requests):
            started = time.monotonic()
            try:
                connection = connection or await asyncio.open_connection(parsed.hostname, parsed.port)
                status, keep_alive = await asyncio.wait_for(_exchange(*connection, request), timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                status, keep_alive = 0, False
            results.append((started, time.monotonic() - started, status))
            if not keep_alive and connection is not None:
                connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bool]:
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
    await reader.readexactly(length)
    return status, keep_alive
