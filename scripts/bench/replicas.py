"""Replicas behind the gateway, measured with real processes (scripts/serve/replicas.py):
req/s through HAProxy with 1 and with 2 TorchServe replicas on the same cores, then one
replica SIGKILLed under load and restarted -> the replicas section of docs/benchmarks.md.
tests/integration/test_replicas.py runs the same kill, briefly.

    python -m scripts.bench.replicas            # mobilenet_v2, 8 clients
"""

import argparse
import datetime
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

from scripts.bench.endtoend import images
from scripts.bench.report import machine, publish
from scripts.bench.side_by_side import WARMUP_S
from scripts.serve.replicas import Cluster, running_replicas
from scripts.zoo import REPO


@dataclass
class Answers:
    """What closed-loop clients got: (finished at, status) per request, 0 for no answer."""

    finished: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def between(self, start: float, end: float) -> list[int]:
        with self.lock:
            return [status for at, status in self.finished if start <= at < end]


class Load:
    """`clients` closed-loop clients PUTting `body` to the gateway until stopped."""

    def __init__(self, cluster: Cluster, model: str, body: bytes, clients: int):
        self.answers, self.stopped = Answers(), threading.Event()
        url, header = f"{cluster.gateway.url}/predictions/{model}", cluster.gateway.header()

        def client() -> None:
            session = requests.Session()
            while not self.stopped.is_set():
                try:
                    status = session.put(url, data=body, headers=header, timeout=120).status_code
                except requests.RequestException:
                    status = 0
                with self.answers.lock:
                    self.answers.finished.append((time.monotonic(), status))

        self.threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join()


def throughput(cluster: Cluster, model: str, body: bytes, clients: int, seconds: float) -> float:
    """req/s through the gateway over `seconds`, after 10 s of the same load (the Java
    frontends' first seconds)."""
    with Load(cluster, model, body, clients) as load:
        time.sleep(WARMUP_S)
        start = time.monotonic()
        time.sleep(seconds)
        answered = load.answers.between(start, time.monotonic())
    return sum(status == 200 for status in answered) / seconds


def kill_and_restart(cluster: Cluster, model: str, body: bytes, clients: int, before: float, after: float) -> dict:
    """Under load: `before` s, then SIGKILL the first replica (frontend and workers), wait
    for the balancer to mark it DOWN, restart it, wait for it to be UP and serving, `after`
    s more. -> what every phase got and what the balancer saw."""
    gateway, victim = cluster.gateway, cluster.replicas[0]
    seen_before = {name: int(row["stot"]) for name, row in gateway.servers().items()}
    with Load(cluster, model, body, clients) as load:
        started = time.monotonic()
        time.sleep(before)
        killed = time.monotonic()
        victim.kill()
        down_after = gateway.wait_until(victim.name, "DOWN", timeout=60)
        victim.start()
        victim.wait_ready()
        gateway.wait_until(victim.name, "UP", timeout=60)
        up = time.monotonic()
        time.sleep(after)
        ended = time.monotonic()
    servers = gateway.servers()
    phases = {"before": (started, killed), "outage": (killed, up), "after": (up, ended)}
    result = {"clients": clients, "killed": victim.name, "down_after_s": down_after, "up_after_s": up - killed}
    for phase, (start, end) in phases.items():
        statuses = load.answers.between(start, end)
        result[phase] = {
            "seconds": end - start,
            "answers": len(statuses),
            "ok": sum(status == 200 for status in statuses),
            "req_per_s": sum(status == 200 for status in statuses) / (end - start),
            "failed": dict(Counter(str(status) for status in statuses if status != 200)),
        }
    result["balancer"] = {
        name: {
            "status": row["status"],
            "requests": int(row["stot"]) - seen_before.get(name, 0),
            "retries": int(row["wretr"] or 0),
            "redispatches": int(row["wredis"] or 0),
            "checks_down": int(row["chkdown"] or 0),
        }
        for name, row in servers.items()
    }
    return result


def render_section(results: dict) -> str:
    kill = results["kill"]
    one, two = results["req_per_s"]["1"], results["req_per_s"]["2"]
    rows = [
        f"| {phase} | {kill[phase]['seconds']:.1f} | {kill[phase]['ok']} | {kill[phase]['req_per_s']:.1f} | "
        f"{sum(kill[phase]['failed'].values())} |"
        for phase in ("before", "outage", "after")
    ]
    balancer = [
        f"| {name} | {row['status']} | {row['requests']} | {row['retries']} | {row['redispatches']} | "
        f"{row['checks_down']} |"
        for name, row in kill["balancer"].items()
    ]
    failed = sum(sum(kill[phase]["failed"].values()) for phase in ("before", "outage", "after"))
    return "\n".join([
        "## Replicas behind the gateway",
        "",
        f"`python -m scripts.bench.replicas` ({results['date']}, {results['machine']}): `{results['model']}` served "
        f"by TorchServe replicas (`python -m scripts.serve.launch --auth gateway`, loopback ports) behind HAProxy "
        f"(`deploy/haproxy/gateway.cfg`: one key, /ping checked every second, least connections, a request no "
        f"replica answered retried on another), {results['clients']} closed-loop clients sending the 451x300 "
        f"JPEG through the gateway, on the same {results['machine'].split(', ')[1]}.",
        "",
        f"| replicas | req/s ({results['seconds']:g} s) |",
        "| --- | --- |",
        f"| 1 | {one:.1f} |",
        f"| 2 | {two:.1f} |",
        "",
        f"Two replicas on the same cores serve {two / one:.2f}x what one does: the cores, not the replica count, "
        "bound throughput, and two Java frontends and twice the workers share them (the workers split the "
        "threads through the machine's worker registry). Replicas add capacity with machines (pods), and "
        "availability on one.",
        "",
        f"Kill: replica `{kill['killed']}` SIGKILLed (frontend and workers) under load, restarted at once; the "
        f"balancer marked it DOWN {kill['down_after_s']:.1f} s after the kill, and it was UP and serving again "
        f"{kill['up_after_s']:.1f} s after the kill (TorchServe's start and model loading).",
        "",
        "Throughput during the outage is the surviving replica's alone; after it, the restarted replica's first "
        "seconds are slow (its Java frontend compiling its hot paths, its workers warming up).",
        "",
        "| phase | s | answered 200 | req/s | failed |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        "The balancer's view at the end (HAProxy's stats):",
        "",
        "| replica | status | requests | retries | redispatches | times marked down |",
        "| --- | --- | --- | --- | --- | --- |",
        *balancer,
        "",
        f"Failed requests over the whole run: **{failed}**. Requests in flight on the killed replica were "
        "retried on the other one (gateway.cfg: `retry-on conn-failure empty-response junk-response`, "
        "`option redispatch`; inference has no side effects, and a request up to 256 KB is kept for the retry): "
        "none reached a client as an error.",
    ])  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30, help="per throughput point")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path)
    return parser


def main(args: argparse.Namespace) -> None:
    body = images()["small"]
    results = {"date": datetime.date.today().isoformat(), "machine": machine(), "model": args.model,
               "clients": args.clients, "seconds": args.seconds, "req_per_s": {}}  # fmt: skip
    for count in (1, 2):
        with tempfile.TemporaryDirectory(prefix="replicas-") as workdir:
            with running_replicas(REPO / "model_store", args.model, count, Path(workdir)) as cluster:
                rate = throughput(cluster, args.model, body, args.clients, args.seconds)
                results["req_per_s"][str(count)] = rate
                print(f"  {count} replica(s): {rate:.1f} req/s", file=sys.stderr, flush=True)
                if count == 2:
                    results["kill"] = kill_and_restart(cluster, args.model, body, args.clients, 10, 10)
                    print(f"  kill: {results['kill']}", file=sys.stderr, flush=True)
    publish("replicas", render_section(results), results, args.output, args.json)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
