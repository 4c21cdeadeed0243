"""Bounded load/soak run against a running TorchServe: a mix of models and of good and
bad inputs from closed-loop clients, reporting throughput, latency percentiles, error
counts by status, requests answered otherwise than expected, and each worker's memory
(RSS) over time.

    make serve && python -m scripts.bench.soak --duration 600 --markdown docs/soak.md   # make soak
"""

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

from scripts.bench.loadgen import Request, run_load, summarize
from scripts.bench.photos import encode, photo
from scripts.serve.server import read_keys
from scripts.ts_api import read_properties

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = ("mobilenet_v2", "yolov5s", "face_pixelizer")


def request_mix(models: list[str], bad_every: int) -> list[Request]:
    """For every model: real photos, and after every `bad_every` of them one bad request
    (truncated image, text, unknown parameter, in turn) with the 4xx it must get.
    Models are interleaved, so every client keeps all of them busy."""
    good = [(name, encode(photo(name), "JPEG")) for name in ("chelsea", "coffee", "astronaut")]
    bad = [
        ("truncated jpeg", {"method": "PUT", "data": good[1][1][:3000]}, (400,)),
        ("text", {"method": "PUT", "data": b"this is not an image"}, (415,)),
        ("unknown parameter", {"method": "POST", "files": {"data": good[0][1]}, "data": {"x": "1"}}, (400,)),
    ]
    per_model = []
    for model in models:
        sequence = []
        for round_ in range(len(bad) if bad_every else 1):
            for index in range(bad_every or len(good)):
                name, image = good[(round_ * (bad_every or 1) + index) % len(good)]
                sequence.append(Request(model, f"good:{name}", {"method": "PUT", "data": image}))
            if bad_every:
                label, kwargs, expected = bad[round_]
                sequence.append(Request(model, f"bad:{label}", kwargs, expected))
        per_model.append(sequence)
    return [request for group in zip(*per_model, strict=True) for request in group]


class MemorySampler(threading.Thread):
    """Every `interval` seconds: each model's workers' RSS, by PID from the management API."""

    def __init__(self, management: str, headers: dict[str, str], models: list[str], interval: float):
        super().__init__(daemon=True)
        self.management, self.headers, self.models, self.interval = management, headers, models, interval
        self.samples: list[dict] = []  # {"t": s since start, "model": ..., "pid": ..., "rss_mb": ...}
        self.skipped: set[str] = set()  # kinds of reasons a sample was skipped (said once each)
        self.stopping = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.interval)
        self.sample()

    def sample(self) -> None:
        now = round(time.monotonic() - self.started_at, 1)
        for model in self.models:
            try:
                (description,) = requests.get(
                    f"{self.management}/models/{model}", headers=self.headers, timeout=10
                ).json()
            except (requests.RequestException, ValueError) as err:
                self.skip(f"{model}: management API: {err!r}")
                continue
            for worker in description["workers"]:
                try:
                    rss = psutil.Process(worker["pid"]).memory_info().rss / 2**20
                except (psutil.Error, KeyError, TypeError) as err:  # e.g. a worker restarting
                    self.skip(f"{model} worker {worker.get('pid')}: {err!r}")
                    continue
                self.samples.append({"t": now, "model": model, "pid": worker["pid"], "rss_mb": round(rss, 1)})

    def skip(self, reason: str) -> None:
        """A sample that could not be taken: said once per kind of reason, on stderr."""
        kind = reason.split(":", 1)[0]
        if kind not in self.skipped:
            self.skipped.add(kind)
            print(f"note: an RSS sample was skipped ({reason})", file=sys.stderr)

    def summary(self) -> dict[str, dict]:
        """Per model: RSS at the first and last sample, the peak, and the growth."""
        result = {}
        for model in self.models:
            series = [s for s in self.samples if s["model"] == model]
            if series:
                first, last = series[0]["rss_mb"], series[-1]["rss_mb"]
                peak = max(s["rss_mb"] for s in series)
                pids = sorted({s["pid"] for s in series})
                result[model] = {
                    "start_mb": first,
                    "end_mb": last,
                    "peak_mb": peak,
                    "growth_mb": last - first,
                    "pids": pids,
                }
        return result


def soak(
    config: Path, key_file: Path, models: list[str], concurrency: int, duration: float, bad_every: int, interval: float
) -> dict:
    properties = read_properties(config)
    keys = read_keys(key_file)
    sampler = MemorySampler(properties["management_address"], keys.header("management"), models, interval)
    sampler.start()
    started = time.monotonic()
    outcomes = run_load(
        properties["inference_address"], keys.header("inference"), request_mix(models, bad_every), concurrency, duration
    )
    elapsed = time.monotonic() - started
    sampler.stopping.set()
    sampler.join()
    report = summarize(outcomes, elapsed)
    report.update(
        concurrency=concurrency, duration_s=duration, memory=sampler.summary(), memory_samples=sampler.samples
    )
    return report


def render_markdown(report: dict) -> str:
    overall = report["overall"]
    lines = [
        "# Soak run",
        "",
        f"`python -m scripts.bench.soak --duration {report['duration_s']:.0f} --concurrency {report['concurrency']}`"
        f" on {time.strftime('%Y-%m-%d')}: {overall['requests']} requests in {report['elapsed_s']:.0f} s"
        f" ({overall['req_per_s']:.1f} req/s), {overall['unexpected']} answered otherwise than expected.",
        "Good requests are real photos (must get 200); bad ones are truncated images, text and",
        "invalid parameters (must get their 4xx).",
        "",
        "| model | requests | req/s | p50 ms | p90 ms | p99 ms | statuses | unexpected |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for model, stats in report["models"].items():
        statuses = ", ".join(f"{code}: {count}" for code, count in stats["statuses"].items())
        latency = " | ".join(f"{stats[key]:.0f}" for key in ("p50_ms", "p90_ms", "p99_ms"))
        lines.append(f"| {model} | {stats['requests']} | {stats['req_per_s']:.2f} | {latency} | {statuses} |")
        lines[-1] += f" {stats['unexpected']} |"
    lines += [
        "",
        "Worker memory (RSS, MiB), sampled over the run:",
        "",
        "| model | start | end | peak | growth | worker PIDs |",
    ]
    lines.append("| --- | ---: | ---: | ---: | ---: | --- |")
    for model, memory in report["memory"].items():
        lines.append(
            f"| {model} | {memory['start_mb']:.0f} | {memory['end_mb']:.0f} | {memory['peak_mb']:.0f}"
            f" | {memory['growth_mb']:+.0f} | {', '.join(map(str, memory['pids']))} |"
        )
    lines += ["", *memory_timeline(report["memory_samples"], report["duration_s"])]
    if report["unexpected_examples"]:
        lines += ["", "Unexpected answers (first 10):", ""] + [
            f"- {example}" for example in report["unexpected_examples"]
        ]
    return "\n".join(lines) + "\n"


def memory_timeline(samples: list[dict], duration: float, columns: int = 10) -> list[str]:
    """RSS per model at `columns` evenly spaced moments: does memory plateau or keep growing?"""
    models = sorted({sample["model"] for sample in samples})
    moments = [duration * i / columns for i in range(columns + 1)]

    def rss_at(model: str, moment: float) -> str:
        series = [s for s in samples if s["model"] == model and s["t"] <= moment + 1e-6]
        return f"{series[-1]['rss_mb']:.0f}" if series else "-"

    lines = [
        "RSS (MiB) over time (s):",
        "",
        "| model | " + " | ".join(f"{moment:.0f}" for moment in moments) + " |",
        "| --- |" + " ---: |" * len(moments),
    ]
    lines += [f"| {model} | " + " | ".join(rss_at(model, moment) for moment in moments) + " |" for model in models]
    return lines


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "config.properties")
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"))
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60, help="seconds")
    parser.add_argument("--bad-every", type=int, default=4, help="one bad request after this many good ones")
    parser.add_argument("--memory-interval", type=float, default=5, help="seconds between memory samples")
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--markdown", type=Path, help="write a summary here")
    return parser


def main(args: argparse.Namespace) -> None:
    models = [name for name in args.models.split(",") if name]
    report = soak(
        args.config, args.key_file, models, args.concurrency, args.duration, args.bad_every, args.memory_interval
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    markdown = render_markdown(report)
    if args.markdown:
        args.markdown.write_text(markdown)
    print(markdown)
    if report["overall"]["unexpected"]:
        sys.exit(f"error: {report['overall']['unexpected']} requests were answered otherwise than expected")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
