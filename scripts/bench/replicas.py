"""Replicas behind the gateway, measured with real processes (scripts/serve/replicas.py):
req/s through HAProxy with 1 and with 2 TorchServe replicas on the same cores, then one
replica SIGKILLed under load and restarted -> the replicas section of docs/benchmarks.md.
tests/integration/test_replicas.py runs the same kill, briefly.

    python -m scripts.bench.replicas            # mobilenet_v2, 8 clients
"""

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from scripts.bench.doc import DOCUMENT, about_the_run, markdown_table, publish
from scripts.bench.harness import WARMUP_S, images
from scripts.bench.loadgen import Request, closed_loop
from scripts.serve.replicas import Cluster, running_replicas
from scripts.zoo import REPO


class Load:
    """`clients` closed-loop clients sending `body` through the gateway until the block ends
    (loadgen.closed_loop in a thread) -> every answer's status by when it came."""

    def __init__(self, cluster: Cluster, model: str, body: bytes, clients: int):
        self.stop, self.outcomes = threading.Event(), []
        mix, gateway = [Request(model, "photo", body)], cluster.gateway
        self.thread = threading.Thread(target=lambda: self.outcomes.extend(
            closed_loop(gateway.url, gateway.header(), mix, clients, 3600, stop=self.stop)))  # fmt: skip

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def between(self, start: float, end: float) -> list[int]:
        """The statuses of the answers that came between `start` and `end` (time.monotonic)."""
        return [o.status for o in self.outcomes if start <= o.started + o.latency < end]


def throughput(cluster: Cluster, model: str, body: bytes, clients: int, seconds: float) -> float:
    """req/s through the gateway over `seconds`, after WARMUP_S of the same load."""
    with Load(cluster, model, body, clients) as load:
        time.sleep(WARMUP_S)
        start = time.monotonic()
        time.sleep(seconds)
        end = time.monotonic()
    return sum(status == 200 for status in load.between(start, end)) / seconds


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
        statuses = load.between(start, end)
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
    kill, phases = results["kill"], ("before", "outage", "after")
    one, two = results["req_per_s"]["1"], results["req_per_s"]["2"]
    rows = [[phase, f"{kill[phase]['seconds']:.1f}", kill[phase]["ok"], f"{kill[phase]['req_per_s']:.1f}",
             sum(kill[phase]["failed"].values())] for phase in phases]  # fmt: skip
    balancer = [[name, row["status"], row["requests"], row["retries"], row["redispatches"], row["checks_down"]]
                for name, row in kill["balancer"].items()]  # fmt: skip
    failed = sum(row[-1] for row in rows)
    return "\n".join([
        "## Replicas behind the gateway",
        "",
        f"`make bench-replicas` (`scripts/bench/replicas.py`, {results['date']}, {results['machine']}): "
        f"`{results['model']}` served by TorchServe replicas (`python -m scripts.serve.launch --auth gateway`) "
        f"behind HAProxy (`deploy/haproxy/gateway.cfg`), {results['clients']} closed-loop clients sending the "
        f"451x300 JPEG through the gateway, all on the same cores: 1 replica {one:.1f} req/s, 2 replicas "
        f"{two:.1f} req/s ({results['seconds']:g} s each; on one machine the cores bound throughput, replicas "
        "add capacity with machines and availability on one).",
        "",
        f"Kill: replica `{kill['killed']}` SIGKILLed (frontend and workers) under load and restarted at once: "
        f"DOWN in the balancer {kill['down_after_s']:.1f} s after the kill, UP and serving again after "
        f"{kill['up_after_s']:.1f} s. Failed requests over the whole run: **{failed}** (the gateway retries a "
        "request no replica answered on another: `retry-on`, `option redispatch`).",
        "",
        *markdown_table(["phase", "s", "answered 200", "req/s", "failed"], rows),
        "",
        *markdown_table(["replica", "status", "requests", "retries", "redispatches", "times marked down"], balancer),
    ])  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30, help="per throughput point")
    parser.add_argument("--output", type=Path, default=DOCUMENT)
    parser.add_argument("--json", type=Path)
    return parser


def main(args: argparse.Namespace) -> None:
    body = images()["small"]
    results = {**about_the_run(), "model": args.model, "clients": args.clients, "seconds": args.seconds,
               "req_per_s": {}}  # fmt: skip
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
