"""N TorchServe replicas from one model store behind one authenticating load balancer,
on this machine: what a Kubernetes Deployment of N pods does, with real processes.

    python -m scripts.serve.replicas -n 2                   # make replicas N=2; Ctrl-C stops all
    python -m scripts.serve.replicas -n 2 --models mobilenet_v2,yolov5s --port 8088

Each replica is `python -m scripts.serve.launch --auth gateway`: TorchServe with its
token authorization off and every API on its own loopback ports. HAProxy
(deploy/haproxy/gateway.cfg; scripts/setup/haproxy.py provides it) listens on --port,
checks every client's key (one key for all replicas: $ZOO_API_KEY, or generated and
written to <workdir>/api_key), health-checks each replica's /ping every second, balances
by least connections and retries a request that a replica never answered on another one.
gRPC clients connect to --grpc-port, with the same key as metadata.
Its view of the replicas: http://127.0.0.1:<stats port>/stats (;csv), and /metrics.
"""

import argparse
import csv
import io
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from handlers.observers import default_registry_dir
from scripts.child_process import spawn, wait_ready
from scripts.serve.server import free_ports
from scripts.setup.haproxy import command_of, prefix_of
from scripts.zoo import REPO

GATEWAY_CONFIG = REPO / "deploy" / "haproxy" / "gateway.cfg"
BACKEND = "torchserve"  # the gateway's backend (gateway.cfg)
GRPC_BACKEND = "torchserve_grpc"  # the replicas' gRPC inference APIs
METRICS_BACKEND = "torchserve_metrics"  # its route to a TorchServe's metrics API (GET /torchserve/metrics)


def gateway_config(template: str, servers: Mapping[str, list[tuple[str, str]]]) -> str:
    """gateway.cfg with one `server NAME ADDRESS` line per (name, host:port) appended to
    each backend named in `servers` (BACKEND: the TorchServes' REST inference APIs;
    GRPC_BACKEND: their gRPC ones; METRICS_BACKEND: the metrics API of the one beside the
    gateway, in a pod)."""
    sections = re.split(r"(?m)^(?=\S)", template)  # each section starts at an unindented line
    for backend, members in servers.items():
        found = [index for index, text in enumerate(sections) if text.startswith(f"backend {backend}\n")]
        if not found:
            raise ValueError(f"{GATEWAY_CONFIG.name} has no backend {backend}")
        body = sections[found[0]].rstrip("\n")
        lines = "".join(f"    server {name} {address}\n" for name, address in members)
        sections[found[0]] = body + "\n" + lines + sections[found[0]][len(body) + 1 :]
    return "".join(sections)


def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Every live process below `pid` (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


@dataclass
class Replica:
    """One TorchServe (scripts.serve.launch --auth gateway) on its own loopback ports."""

    name: str
    store: Path
    models: str
    workdir: Path
    ports: list[int] = field(default_factory=lambda: free_ports(5))  # inference, management, metrics, gRPC x2
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.ports[3]}"

    def start(self) -> None:
        inference, management, metrics, grpc_inference, grpc_management = self.ports
        command = [sys.executable, "-m", "scripts.serve.launch", "--auth", "gateway", "--models", self.models,
                   "--model-store", str(self.store), "--workdir", str(self.workdir),
                   "--inference-address", f"http://127.0.0.1:{inference}",
                   "--management-address", f"http://127.0.0.1:{management}",
                   "--metrics-address", f"http://127.0.0.1:{metrics}",
                   "--grpc-inference-port", str(grpc_inference),
                   "--grpc-management-port", str(grpc_management)]  # fmt: skip
        self.workdir.mkdir(parents=True, exist_ok=True)
        # TMPDIR: its worker sockets and unpacked models apart from the other replicas'. The
        # worker registry stays the machine's: replicas share its cores, so their workers
        # split the threads (handlers/observers.py), as the workers of one TorchServe do.
        registry = str(default_registry_dir())
        env = {**os.environ, "TMPDIR": str(self.workdir), "TEMP": str(self.workdir),
               "TS_ZOO_WORKER_REGISTRY": registry}  # fmt: skip
        self.process = spawn(command, REPO, env, log=self.workdir / "console.log")

    def ready(self) -> bool:
        try:
            return requests.get(f"http://{self.address}/ping", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout: float = 300) -> None:
        wait_ready(self.process, self.ready, timeout, self.name, self.workdir / "console.log")

    def kill(self) -> None:
        """SIGKILL the replica: its TorchServe frontend, workers and launcher, as a crash would."""
        for pid in [*descendants(self.process.pid), self.process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # launch.py stops TorchServe cleanly
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Gateway:
    url: str
    stats_url: str
    key: str
    process: subprocess.Popen
    grpc_target: str = ""  # host:port of its gRPC frontend

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def servers(self) -> dict[str, dict[str, str]]:
        """The balancer's view: each replica's row of HAProxy's stats CSV (status UP/DOWN,
        sessions, retries, redispatches, answers by class, ...)."""
        text = requests.get(f"{self.stats_url}/stats;csv", timeout=5).text.lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {row["svname"]: row for row in rows if row["pxname"] == BACKEND and row["svname"] != "BACKEND"}

    def status(self, name: str) -> str:
        """The balancer's word for replica `name` ("UP", "DOWN", ...), "" while it does not answer."""
        if self.process.poll() is not None:
            raise RuntimeError(f"HAProxy exited ({self.process.returncode})")
        try:
            return self.servers()[name]["status"].split()[0]
        except (requests.RequestException, KeyError, IndexError):
            return ""

    def wait_until(self, name: str, status: str, timeout: float = 300) -> float:
        """Seconds until the balancer reports replica `name` with `status` ("UP", "DOWN")."""
        started = time.monotonic()
        while (seen := self.status(name)) != status:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{name} not {status} after {timeout:.0f}s: {seen or 'no answer'}")
            time.sleep(0.1)
        return time.monotonic() - started


@dataclass
class Cluster:
    gateway: Gateway
    replicas: list[Replica]


@contextmanager
def running_replicas(store: Path, models: str, count: int, workdir: Path, port: int = 0, stats_port: int = 0,
                     key: str | None = None, grpc_port: int = 0) -> Iterator[Cluster]:  # fmt: skip
    """`count` replicas and the gateway in front of them, until the block ends."""
    found = command_of(prefix_of(Path(sys.executable).parents[1]))
    if found is None:
        raise RuntimeError("no HAProxy 2.2+: run `make setup` (scripts/setup/haproxy.py) or put one on PATH")
    haproxy, env = found
    port, stats_port, grpc_port = (
        port or free_ports(1)[0],
        stats_port or free_ports(1)[0],
        grpc_port or free_ports(1)[0],
    )
    key = key or secrets.token_urlsafe(24)
    replicas = [Replica(f"ts{index}", store, models, workdir / f"ts{index}") for index in range(1, count + 1)]
    with ExitStack() as stack:
        for replica in replicas:
            stack.callback(replica.stop)
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        config = workdir / "haproxy.cfg"
        servers = {BACKEND: [(replica.name, replica.address) for replica in replicas],
                   GRPC_BACKEND: [(replica.name, replica.grpc_address) for replica in replicas]}  # fmt: skip
        config.write_text(gateway_config(GATEWAY_CONFIG.read_text(), servers))
        env = {**env, "ZOO_API_KEY": key, "ZOO_GATEWAY_BIND": f"127.0.0.1:{port}",
               "ZOO_GATEWAY_GRPC_BIND": f"127.0.0.1:{grpc_port}",
               "ZOO_GATEWAY_STATS_BIND": f"127.0.0.1:{stats_port}"}  # fmt: skip
        with open(workdir / "haproxy.log", "ab") as log:
            process = subprocess.Popen([haproxy, "-db", "-f", str(config)], env=env, stdout=log, stderr=log)
        stack.callback(process.wait, 30)
        stack.callback(process.terminate)
        gateway = Gateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats_port}", key, process,
                          f"127.0.0.1:{grpc_port}")  # fmt: skip
        for replica in replicas:
            gateway.wait_until(replica.name, "UP", timeout=30)
        yield Cluster(gateway, replicas)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--replicas", type=int, default=2)
    parser.add_argument("--models", default="all", help="archive names, comma-separated, or all")
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    parser.add_argument("--port", type=int, default=8088, help="the gateway's port (loopback)")
    parser.add_argument("--stats-port", type=int, default=8404, help="the balancer's stats and metrics (loopback)")
    parser.add_argument("--grpc-port", type=int, default=7088, help="the gateway's gRPC port (loopback)")
    parser.add_argument("--workdir", type=Path, default=REPO / "logs" / "replicas")
    return parser


def main(args: argparse.Namespace) -> None:
    args.workdir.mkdir(parents=True, exist_ok=True)
    key_file = args.workdir / "api_key"
    key = os.environ.get("ZOO_API_KEY")
    if not key:
        key = secrets.token_urlsafe(24)
        key_file.touch(mode=0o600)
        key_file.chmod(0o600)
        key_file.write_text(key + "\n")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    with running_replicas(args.model_store, args.models, args.replicas, args.workdir, args.port, args.stats_port,
                          key, args.grpc_port) as cluster:  # fmt: skip
        gateway = cluster.gateway
        print(f"{args.replicas} TorchServe replicas ({args.models}) behind {gateway.url}; the balancer's view: "
              f"{gateway.stats_url}/stats")  # fmt: skip
        source = "$ZOO_API_KEY" if os.environ.get("ZOO_API_KEY") else f"$(cat {key_file})"
        print(f'  curl -H "Authorization: Bearer {source}" -T photo.jpg {gateway.url}/predictions/<model>\n'
              f"  gRPC: {gateway.grpc_target}, the same key as metadata\n"
              "Ctrl-C stops them all.", flush=True)  # fmt: skip
        try:
            while not stopping and gateway.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(get_args_parser().parse_args())
