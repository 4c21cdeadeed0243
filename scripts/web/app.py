"""The web page to try every served model: a person drops a photo and sees the answer
(top-k bars, boxes drawn in the page, the pixelated photo beside the original), or a
short clip and gets it back anonymised (scripts/client/video.py, frame memory on).

    python -m scripts.web.app start            # `make serve` does: http://127.0.0.1:8090/, logs/web.log
    python -m scripts.web.app stop             # `make stop` does
    python -m scripts.web.app run --port 8090  # in the foreground

It is a Starlette app on uvicorn -- a small, well-kept ASGI toolkit and its reference
server: routing, static files and request streams, nothing hand-written about HTTP -- and
a client of TorchServe like any other: it holds the keys (key_file.json, a key TorchServe
refused renewed as scripts/client does: the same ZooClient), so that no token reaches the
browser. Because it holds them, it answers this page only (scripts/web/access.py: Host,
Origin, Fetch Metadata and the page's own token), never another website through its
visitor's browser. It listens on loopback only, reads at most a model's own
max_image_bytes of an upload (and none that stalls), and forwards the photo and the
parameters as they came. Clips are anonymised by child processes (scripts/web/videos.py).
The page itself (static/) is plain HTML and JavaScript modules: no build step, no network.
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

import requests
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from scripts.child_process import ChildFailed, spawn, wait_ready
from scripts.client.auth import AuthError
from scripts.client.rest import ConnectionFailed, ZooClient
from scripts.client.video import FRAME_MEMORY, TRACK_FRAMES, VIDEO_SUFFIXES
from scripts.client.video import MODEL as VIDEO_MODEL
from scripts.ts_api import is_loopback, key_refused
from scripts.web.access import SameOriginOnly, allowed_hosts, new_token
from scripts.web.videos import MAX_VIDEO_BYTES, MAX_VIDEOS_AT_ONCE, VideoJobs
from scripts.zoo import REPO

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# The answer headers the page reads (faces pixelated, their regions, the parameters applied).
RELAYED_HEADERS = ("X-Faces", "X-Face-Boxes", "X-Face-Boxes-Omitted", "X-Parameters")
MODELS_TTL_S = 5.0  # how long the model list (and each model's limits) is reused
# The pixelizer's parameters a clip takes (every frame is sent with them).
VIDEO_PARAMS = ("preset", "shape", "confidence", "mode", "blocks", "block_size", "margin", "upscale_to",
                "enlarged_view")  # fmt: skip
# The clip's own parameters, in frames: (default, most). Frame memory's look-ahead holds
# up to max(2 x track_frames, frame_memory) answers (JPEGs) in the child process: 300 at most.
CLIP_FRAMES = {"frame_memory": (FRAME_MEMORY, 100), "track_frames": (TRACK_FRAMES, 150)}
BODY_IDLE_S = 20.0  # an upload that sends nothing for this long is refused (408)
BODY_TOTAL_S = 600.0  # and one that takes longer than this in all
MAX_CONNECTIONS = 16  # uvicorn answers 503 beyond: each may hold an upload of up to a model's max_image_bytes
TOKEN_PLACEHOLDER = "{{zoo_token}}"  # where index.html carries the page's token (scripts/web/access.py)


def failure(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, "status": status}, status_code=status)


class Zoo:
    """The served models, from TorchServe's management API, and predictions through the client."""

    def __init__(self, client: ZooClient):
        self.client, self.listed_at, self.models = client, 0.0, []

    def management(self, path: str) -> requests.Response:
        """GET of TorchServe's management API, its key renewed once if TorchServe refused it."""
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

    def described(self, model: str) -> dict | None:
        found = [entry for entry in self.list_models() if entry["name"] == model]
        return found[0] if found else None


async def receive_body(request: Request, limit: int, write: Callable[[bytes], object],
                       idle_s: float = BODY_IDLE_S) -> str | None:  # fmt: skip
    """The request body handed to `write` chunk by chunk -> None, or what was wrong with it:
    longer than `limit` bytes (said as soon as it is), silent for `idle_s`, or slower than
    BODY_TOTAL_S in all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return "too large"
    received, stream = 0, request.stream().__aiter__()
    try:
        async with asyncio.timeout(BODY_TOTAL_S):
            while True:
                try:
                    chunk = await asyncio.wait_for(stream.__anext__(), idle_s)
                except StopAsyncIteration:
                    return None
                received += len(chunk)
                if received > limit:
                    return "too large"
                write(chunk)
    except TimeoutError:
        return "too slow"
    except ClientDisconnect:
        return "broken off"


def body_problem(problem: str, limit: int, what: str) -> JSONResponse:
    if problem == "too large":
        return failure(413, f"{what} too large", f"the upload is over the limit of {limit} bytes")
    return failure(408, "upload too slow", f"the upload stalled or took too long ({problem}); send it again")


def one_value_each(request: Request) -> JSONResponse | None:
    """A 400 naming the query parameters given more than once, else None."""
    repeated = sorted(
        {key for key, _ in request.query_params.multi_items() if len(request.query_params.getlist(key)) > 1}
    )
    if repeated:
        return failure(400, "repeated parameter", f"{', '.join(repeated)[:200]} given more than once; send it once")
    return None


def build_app(zoo: Zoo, jobs: VideoJobs, hosts: frozenset[str], token: str, body_idle_s: float = BODY_IDLE_S
              ) -> SameOriginOnly:  # fmt: skip
    index_html = (STATIC / "index.html").read_text().replace(TOKEN_PLACEHOLDER, token)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(index_html, headers={"Cache-Control": "no-store"})

    async def models(request: Request) -> Response:
        try:
            return JSONResponse(await run_in_threadpool(zoo.list_models))
        except (requests.ConnectionError, ConnectionFailed):
            return failure(502, "server unreachable", "TorchServe does not answer; start it with `make serve`")
        except AuthError as err:
            return failure(502, "not authorized", str(err))

    async def described(model: str) -> dict | JSONResponse:
        try:
            found = await run_in_threadpool(zoo.described, model)
        except (requests.ConnectionError, ConnectionFailed, AuthError) as err:
            return failure(502, "server unreachable", f"TorchServe does not answer ({type(err).__name__})")
        return found if found is not None else failure(404, "unknown model", f"no model named {model[:80]!r} is served")

    async def predict(request: Request) -> Response:
        model = request.path_params["model"]
        if (refused := one_value_each(request)) is not None:
            return refused
        found = await described(model)
        if isinstance(found, Response):
            return found
        unknown = sorted(set(request.query_params) - set(found.get("parameters") or {}))
        if unknown:  # the handler would refuse them too; TorchServe fails some names itself (an empty one: 500)
            taken = ", ".join(found.get("parameters") or {}) or "none"
            return failure(400, "unknown parameter", f"{', '.join(map(repr, unknown))[:200]} (taken: {taken})")
        limit, body = found.get("max_image_bytes") or 0, bytearray()
        if (problem := await receive_body(request, limit, body.extend, body_idle_s)) is not None:
            return body_problem(problem, limit, "image")
        try:
            answer = await run_in_threadpool(
                zoo.client.predict, model, bytes(body), dict(request.query_params), "upload"
            )
        except (ConnectionFailed, AuthError) as err:
            return failure(502, "server unreachable", str(err))
        headers = {name: answer.headers[name] for name in RELAYED_HEADERS if name in answer.headers}
        return Response(answer.body, answer.status, headers, media_type=answer.content_type)

    async def start_video(request: Request) -> Response:
        if (refused := one_value_each(request)) is not None:
            return refused
        unknown = sorted(set(request.query_params) - {*VIDEO_PARAMS, *CLIP_FRAMES})
        if unknown:
            return failure(
                400,
                "unknown parameter",
                f"{', '.join(unknown)[:200]}: a clip takes {', '.join([*VIDEO_PARAMS, *CLIP_FRAMES])}",
            )
        frames = {}
        for name, (default, most) in CLIP_FRAMES.items():
            try:
                frames[name] = int(request.query_params.get(name, default))
            except ValueError:
                return failure(400, "invalid parameter", f"{name} must be a whole number of frames")
            if not 0 <= frames[name] <= most:
                return failure(400, "invalid parameter", f"{name} must be between 0 and {most} frames")
        found = await described(VIDEO_MODEL)
        if isinstance(found, Response):
            return found
        suffix = Path(request.headers.get("x-filename", "clip.mp4")[-200:]).suffix.lower()
        reserved = jobs.reserve(suffix if suffix in VIDEO_SUFFIXES else ".mp4")
        if reserved is None:
            return failure(
                429, "busy", f"{MAX_VIDEOS_AT_ONCE} clips are being sent or anonymised; try again when one is done"
            )
        key, job = reserved
        try:
            with job.source.open("wb") as upload:
                problem = await receive_body(request, MAX_VIDEO_BYTES, upload.write, body_idle_s)
        except BaseException:
            jobs.discard(key)
            raise
        if problem is not None:
            jobs.discard(key)
            return body_problem(problem, MAX_VIDEO_BYTES, "video")
        params = {name: value for name, value in request.query_params.items() if name in VIDEO_PARAMS}
        await run_in_threadpool(jobs.start, key, params, frames, found.get("max_image_pixels") or 0)
        return JSONResponse({"id": key})

    async def video(request: Request) -> Response:
        key = request.path_params["key"]
        if request.method == "DELETE":
            if not await run_in_threadpool(jobs.cancel, key):
                return failure(404, "unknown video", "no clip with this id")
            return JSONResponse({"state": "cancelled"})
        status = jobs.status(key)
        if status is None:
            return failure(404, "unknown video", "no clip with this id (finished ones are kept a while)")
        return JSONResponse(status)

    async def video_file(request: Request) -> Response:
        target = jobs.result(request.path_params["key"])
        if target is None:
            return failure(404, "no video", "this clip is not anonymised (yet)")
        return FileResponse(target, filename=f"anonymised{target.suffix}")

    routes = [
        Route("/", index),
        Route("/api/models", models),
        Route("/api/predictions/{model}", predict, methods=["POST"]),
        Route("/api/videos", start_video, methods=["POST"]),
        Route("/api/videos/{key}", video, methods=["GET", "DELETE"]),
        Route("/api/videos/{key}/file", video_file),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def refused(request: Request, exc: HTTPException) -> Response:  # no such route, method not allowed
        detail = "no such page or API call" if exc.status_code == 404 else f"{request.method[:20]} is not taken here"
        return failure(exc.status_code, HTTPStatus(exc.status_code).phrase.lower(), detail)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return failure(500, "internal error", "the page's server failed on this request; see its log")

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        jobs.close()  # no child process outlives the server

    handlers = {HTTPException: refused, Exception: internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    return SameOriginOnly(app, hosts, token)


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
    parser.add_argument("--body-idle-s", type=float, default=BODY_IDLE_S,
                        help="refuse an upload that sends nothing for this many seconds (408)")  # fmt: skip
    return parser


def start(args: argparse.Namespace) -> None:
    """The page's server in a session of its own (its pid in logs/web.pid), once it answers."""
    args.logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "scripts.web.app", "run", "--host", args.host, "--port", str(args.port),
               "--config", str(args.config), "--key-file", str(args.key_file),
               "--body-idle-s", str(args.body_idle_s)]  # fmt: skip
    process = spawn(command, REPO, log=args.logs / "web.log")
    (args.logs / "web.pid").write_text(f"{process.pid}\n")
    url = f"http://{args.host}:{args.port}"
    try:  # any answer will do: the page's server answers even while TorchServe does not
        wait_ready(process, lambda: requests.get(f"{url}/api/models", timeout=30) is not None, 60, "the web page",
                   args.logs / "web.log")  # fmt: skip
    except ChildFailed as err:
        sys.exit(f"error: {err}")
    print(f"Try every model in a browser: {url}/")


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
        jobs = VideoJobs(Path(videos), args.config, args.key_file)
        app = build_app(Zoo(client), jobs, allowed_hosts(args.host, args.port), new_token(), args.body_idle_s)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", limit_concurrency=MAX_CONNECTIONS,
                    timeout_keep_alive=5)  # fmt: skip


if __name__ == "__main__":
    main(get_args_parser().parse_args())
