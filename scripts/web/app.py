"""The web page to try every served model: a person drops a photo and sees the answer
(top-k bars, boxes drawn in the page, the pixelated photo beside the original), or a
short clip and gets it back anonymised (scripts/client/video.py, frame memory on).

    python -m scripts.web.app start            # `make serve` does: http://127.0.0.1:8090/, logs/web.log
    python -m scripts.web.app stop             # `make stop` does
    python -m scripts.web.app run --port 8090  # in the foreground

It is a Starlette app on uvicorn -- a small, well-kept ASGI toolkit and its reference
server: routing, static files and request streams, nothing hand-written about HTTP -- and
a client of TorchServe like any other: it holds the keys (key_file.json, an expired
inference key refreshed as scripts/client does: the same ZooClient), so that no token
reaches the browser. It listens on loopback only, reads at most a model's own
max_image_bytes of an upload, and forwards the photo and the parameters as they came.
The page itself (static/) is plain HTML and JavaScript modules: no build step, no network.
"""

import argparse
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from scripts.client.auth import AuthError
from scripts.client.rest import ConnectionFailed, ZooClient
from scripts.client.video import FRAME_MEMORY, VIDEO_SUFFIXES, FrameRefused, anonymise_video
from scripts.ts_api import key_refused
from scripts.zoo import REPO

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# The answer headers the page reads (faces pixelated, their regions, the parameters applied).
RELAYED_HEADERS = ("X-Faces", "X-Face-Boxes", "X-Face-Boxes-Omitted", "X-Parameters")
MODELS_TTL_S = 5.0  # how long the model list (and each model's limits) is reused
MAX_VIDEO_BYTES = 100_000_000  # a short clip
MAX_RUNNING_VIDEOS, KEPT_VIDEOS = 2, 8  # clips anonymised at once; finished ones kept to download
VIDEO_PARAMS = ("confidence", "mode", "blocks", "block_size", "margin")  # the pixelizer's, for a clip


@dataclass
class VideoJob:
    """A clip being anonymised in a thread: how far it is, and where its result is."""

    directory: Path
    target: Path
    done: int = 0
    total: int = 0
    state: str = "running"  # running, done, failed
    error: str = ""

    def run(self, client: ZooClient, source: Path, params: dict, frame_memory: int) -> None:
        def progress(done: int, total: int) -> None:
            self.done, self.total = done, total

        try:
            anonymise_video(client, source, self.target, {**params, "format": "image"}, progress=progress,
                            frame_memory=frame_memory)  # fmt: skip
            self.state = "done"
        except FrameRefused as err:
            self.state, self.error = "failed", str(err)
        except (ConnectionFailed, AuthError) as err:
            self.state, self.error = "failed", f"TorchServe does not answer: {type(err).__name__}"
        except Exception as err:  # PyAV on a file that is not a video it can read, among others
            logger.exception("anonymising %s failed", self.directory.name)
            self.state, self.error = "failed", f"the clip cannot be read or written as a video ({type(err).__name__})"
        finally:
            source.unlink(missing_ok=True)


def failure(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, "status": status}, status_code=status)


class Zoo:
    """The served models, from TorchServe's management API, and predictions through the client."""

    def __init__(self, client: ZooClient, videos: Path):
        self.client, self.listed_at, self.models = client, 0.0, []
        self.videos_dir, self.videos = videos, {}  # id -> VideoJob, oldest first

    def start_video(self, data: bytes, suffix: str, params: dict, frame_memory: int) -> str:
        finished = [key for key, job in self.videos.items() if job.state != "running"]
        for key in finished[: max(0, len(self.videos) - KEPT_VIDEOS)]:
            shutil.rmtree(self.videos.pop(key).directory, ignore_errors=True)
        key = secrets.token_hex(8)
        directory = self.videos_dir / key
        directory.mkdir()
        (source := directory / f"clip{suffix}").write_bytes(data)
        job = self.videos[key] = VideoJob(directory, directory / f"anonymised{suffix}")
        threading.Thread(target=job.run, args=(self.client, source, params, frame_memory), daemon=True).start()
        return key

    def management(self, path: str) -> requests.Response:
        """GET of TorchServe's management API, its key renewed once if it has expired."""
        for attempt in range(2):
            key = self.client.tokens.management()
            url, headers = f"{self.client.management_url}{path}", {"Authorization": f"Bearer {key}"}
            answer = requests.get(url, headers=headers, timeout=30)
            if attempt or not key_refused(answer.status_code, answer.text):
                return answer
            self.client.tokens.refresh(self.client.management_url, key, "management")

    def list_models(self) -> list[dict]:
        """Each served model: name, workers ready, and what its handler describes (task,
        weights, whether they are random, limits, parameters with defaults and choices)."""
        if time.monotonic() - self.listed_at < MODELS_TTL_S:
            return self.models
        names = [entry["modelName"] for entry in self.management("/models?limit=1000").json()["models"]]
        models = []
        for name in sorted(names):
            (version, *_) = self.management(f"/models/{name}?customized=true").json()
            described = version.get("customizedMetadata") or {}  # TorchServe parses the handler's JSON
            described = json.loads(described) if isinstance(described, str) else described
            ready = sum(worker.get("status") == "READY" for worker in version.get("workers", []))
            models.append({"name": name, "workers": ready, "batch_size": version.get("batchSize"), **described})
        self.models, self.listed_at = models, time.monotonic()
        return models

    def limit_of(self, model: str) -> int | None:
        found = [entry for entry in self.list_models() if entry["name"] == model]
        return found[0].get("max_image_bytes") if found else None


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is longer than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def build_app(zoo: Zoo) -> Starlette:
    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def models(request: Request) -> Response:
        try:
            return JSONResponse(await run_in_threadpool(zoo.list_models))
        except (requests.ConnectionError, ConnectionFailed):
            return failure(502, "server unreachable", "TorchServe does not answer; start it with `make serve`")
        except AuthError as err:
            return failure(502, "not authorized", str(err))

    async def predict(request: Request) -> Response:
        model = request.path_params["model"]
        try:
            limit = await run_in_threadpool(zoo.limit_of, model)
        except (requests.ConnectionError, ConnectionFailed, AuthError) as err:
            return failure(502, "server unreachable", f"TorchServe does not answer ({type(err).__name__})")
        if limit is None:
            return failure(404, "unknown model", f"no model named {model[:80]!r} is served")
        data = await read_limited(request, limit)
        if data is None:
            return failure(413, "image too large", f"the upload is over {model}'s limit of {limit} bytes")
        repeated = sorted({key for key, _ in request.query_params.multi_items()
                           if len(request.query_params.getlist(key)) > 1})  # fmt: skip
        if repeated:
            return failure(400, "repeated parameter", f"{', '.join(repeated)[:200]} given more than once; send it once")
        params = dict(request.query_params)
        try:
            answer = await run_in_threadpool(zoo.client.predict, model, data, params, "upload")
        except (ConnectionFailed, AuthError) as err:
            return failure(502, "server unreachable", str(err))
        headers = {name: answer.headers[name] for name in RELAYED_HEADERS if name in answer.headers}
        return Response(answer.body, answer.status, headers, media_type=answer.content_type)

    async def start_video(request: Request) -> Response:
        if sum(job.state == "running" for job in zoo.videos.values()) >= MAX_RUNNING_VIDEOS:
            return failure(429, "busy", f"{MAX_RUNNING_VIDEOS} clips are being anonymised; try again when one is done")
        try:
            frame_memory = int(request.query_params.get("frame_memory", FRAME_MEMORY))
        except ValueError:
            return failure(400, "invalid parameter", "frame_memory must be a whole number of frames")
        if not 0 <= frame_memory <= 100:
            return failure(400, "invalid parameter", "frame_memory must be between 0 and 100 frames")
        data = await read_limited(request, MAX_VIDEO_BYTES)
        if data is None:
            return failure(413, "video too large", f"a clip may have at most {MAX_VIDEO_BYTES} bytes")
        suffix = Path(request.headers.get("x-filename", "clip.mp4")).suffix.lower()
        suffix = suffix if suffix in VIDEO_SUFFIXES else ".mp4"
        params = {key: value for key, value in request.query_params.items() if key in VIDEO_PARAMS}
        return JSONResponse({"id": await run_in_threadpool(zoo.start_video, data, suffix, params, frame_memory)})

    def video_job(request: Request) -> VideoJob | None:
        return zoo.videos.get(request.path_params["key"])

    async def video_status(request: Request) -> Response:
        job = video_job(request)
        if job is None:
            return failure(404, "unknown video", "no clip with this id (finished ones are kept a while)")
        return JSONResponse({"state": job.state, "done": job.done, "total": job.total, "error": job.error})

    async def video_file(request: Request) -> Response:
        job = video_job(request)
        if job is None or job.state != "done":
            return failure(404, "no video", "this clip is not anonymised (yet)")
        return FileResponse(job.target, filename=f"anonymised{job.target.suffix}")

    routes = [
        Route("/", index),
        Route("/api/models", models),
        Route("/api/predictions/{model}", predict, methods=["POST"]),
        Route("/api/videos", start_video, methods=["POST"]),
        Route("/api/videos/{key}", video_status),
        Route("/api/videos/{key}/file", video_file),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def internal_error(request: Request, exc: Exception) -> Response:
        return failure(500, "internal error", "the page's server failed on this request; see its log")

    return Starlette(routes=routes, exception_handlers={Exception: internal_error})


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "action", choices=("run", "start", "stop"), nargs="?", default="run",
        help="run in the foreground; start in the background (and wait until it answers); stop",
    )  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--config", type=Path, default=REPO / "config.properties", help="TorchServe's config")
    parser.add_argument("--key-file", type=Path, default=REPO / "key_file.json", help="TorchServe's keys")
    parser.add_argument("--logs", type=Path, default=REPO / "logs", help="start/stop: its log and pid file")
    return parser


def start(args: argparse.Namespace) -> None:
    """The page's server in a session of its own (its pid in logs/web.pid), once it answers."""
    args.logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "scripts.web.app", "run", "--host", args.host, "--port", str(args.port),
               "--config", str(args.config), "--key-file", str(args.key_file)]  # fmt: skip
    with open(args.logs / "web.log", "ab") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, start_new_session=True)
    (args.logs / "web.pid").write_text(f"{process.pid}\n")
    url, deadline = f"http://{args.host}:{args.port}", time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            requests.get(f"{url}/api/models", timeout=30)
            print(f"Try every model in a browser: {url}/")
            return
        except requests.ConnectionError:
            time.sleep(0.3)
    sys.exit(f"error: the web page did not start; see {args.logs / 'web.log'}")


def stop(args: argparse.Namespace) -> None:
    """The server `start` started, if it still runs (its pid file names it)."""
    pid_file = args.logs / "web.pid"
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text())
    try:
        if b"scripts.web.app" in Path(f"/proc/{pid}/cmdline").read_bytes():  # not a recycled pid
            os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ProcessLookupError):
        pass  # already gone
    pid_file.unlink()


def main(args: argparse.Namespace) -> None:
    if not is_loopback(args.host):
        sys.exit(f"error: {args.host} is not a loopback address; the page holds TorchServe's keys")
    if args.action == "start":
        return start(args)
    if args.action == "stop":
        return stop(args)
    try:
        client = ZooClient.from_config(args.config, args.key_file, retries=2)
    except AuthError as err:
        sys.exit(f"error: {err} (start TorchServe first: make serve)")
    with tempfile.TemporaryDirectory(prefix="zoo-web-") as videos:
        uvicorn.run(build_app(Zoo(client, Path(videos))), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
