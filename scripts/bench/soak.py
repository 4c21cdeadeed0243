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

from scripts.bench.loadgen import DEFAULT_MODELS, closed_loop, request_mix, summarize
from scripts.serve.server import read_keys
from scripts.ts_api import read_properties

REPO = Path(__file__).resolve().parents[2]


class MemorySampler(threading.Thread):
    """Every `interval` seconds until stopped: each model's workers' RSS, by PID from the
    management API. A sample that cannot be taken (a worker restarting) is skipped, and said."""

    def __init__(self, management: str, headers: dict[str, str], models: list[str], interval: float):
        super().__init__(daemon=True)
        self.management, self.headers, self.models, self.interval = management, headers, models, interval
        self.samples: list[dict] = []  # {"t": s since start, "model": ..., "pid": ..., "rss_mb": ...}
        self.stopping, self.started_at = threading.Event(), time.monotonic()

    def run(self) -> None:
        self.sample()
        while not self.stopping.wait(self.interval):
            self.sample()
        self.sample()

    def sample(self) -> None:
        now = round(time.monotonic() - self.started_at, 1)
        for model in self.models:
            try:
                url = f"{self.management}/models/{model}"
                (description,) = requests.get(url, headers=self.headers, timeout=10).json()
                for pid in [worker["pid"] for worker in description["workers"]]:
                    rss = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
                    self.samples.append({"t": now, "model": model, "pid": pid, "rss_mb": rss})
            except (requests.RequestException, ValueError, psutil.Error, KeyError, TypeError) as err:
                print(f"note: an RSS sample of {model} was skipped ({err!r})", file=sys.stderr)

    def summary(self) -> dict[str, dict]:
        """Per model: RSS at the first and last sample, the peak, the growth, the worker PIDs."""
        result = {}
        for model in self.models:
            rss = [s["rss_mb"] for s in self.samples if s["model"] == model]
            pids = sorted({s["pid"] for s in self.samples if s["model"] == model})
            if rss:
                growth = rss[-1] - rss[0]
                result[model] = {"start_mb": rss[0], "end_mb": rss[-1], "peak_mb": max(rss), "growth_mb": growth,
                                 "pids": pids}  # fmt: skip
        return result


def soak(
    config: Path, key_file: Path, models: list[str], concurrency: int, duration: float, bad_every: int, interval: float
) -> dict:
    properties = read_properties(config)
    keys = read_keys(key_file)
    sampler = MemorySampler(properties["management_address"], keys.header("management"), models, interval)
    sampler.start()
    started = time.monotonic()
    mix = request_mix(models, bad_every)
    outcomes = closed_loop(properties["inference_address"], keys.header("inference"), mix, concurrency, duration)
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
