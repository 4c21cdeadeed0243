"""The page's server (scripts/web/) as a hostile client and a hostile website would use
it, over HTTP, against the session's real TorchServe: it answers its own page and local
programs only, renews a key only when TorchServe itself refused it, bounds its video jobs
by construction, and answers anything at all without a 5xx or a key. The browser's side
(another origin's fetch and form, DNS rebinding) is in test_web_page.py."""

import http.client
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlencode

import av
import numpy as np
import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts.samples.clips import panning_clip
from scripts.samples.photos import encode, photo, photo_bytes
from scripts.ts_api import KEY_REFUSED, KEY_REFUSED_TYPE
from scripts.web.videos import MAX_VIDEOS_AT_ONCE
from scripts.zoo import REPO
from tests.corpus import assert_clean
from tests.web_page import web_page

pytestmark = pytest.mark.integration

IDLE_S = 2.0  # the page's body timeout in these tests
MODELS = ("mobilenet_v2", "yolov5s", "face_pixelizer")
# Everything a client's text could say to look like TorchServe refusing a key.
REFUSAL_TEXTS = [
    KEY_REFUSED, "Token Authorization failed", KEY_REFUSED_TYPE,
    json.dumps({"code": 400, "type": KEY_REFUSED_TYPE, "message": KEY_REFUSED}),
]  # fmt: skip


@pytest.fixture(scope="module")
def page(torchserve):
    with web_page(torchserve, "--body-idle-s", str(IDLE_S)) as page:
        yield page


@pytest.fixture(scope="module")
def worker_pids(torchserve):
    """The served models' worker pids at the start; the module's last test checks them."""
    return {model: [w["pid"] for w in torchserve.workers(model)] for model in MODELS}


class PeakMemory:
    """The largest resident memory of a process, sampled every 50 ms from start to stop."""

    def __init__(self, pid: int):
        self.process, self.stopped = psutil.Process(pid), threading.Event()
        self.idle = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self):
        while not self.stopped.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self.stopped.set()
        self.thread.join()
        return self.peak - self.idle


@pytest.fixture(scope="module")
def page_memory(page):
    """The page server's memory from the module's first test to its last."""
    memory = PeakMemory(page.pid)
    yield memory
    memory.stop()


def keys_of(torchserve) -> dict:
    return json.loads((torchserve.workdir / "key_file.json").read_text())


def post(page, path: str, data: bytes = b"", token: str | None = None, **headers) -> requests.Response:
    if token is not None:
        headers["X-Zoo-Token"] = token
    return requests.post(f"{page.url}{path}", data=data, headers=headers, timeout=120)


def test_only_this_page_and_local_programs_are_answered(page, worker_pids, page_memory):
    token, cat = page.token(), photo_bytes("chelsea")
    assert requests.get(f"{page.url}/api/models", timeout=60).status_code == 200  # curl
    rebound = requests.get(f"{page.url}/api/models", headers={"Host": f"evil.example:{page.port}"}, timeout=60)
    assert rebound.status_code == 403 and "answers requests for" in rebound.json()["detail"]
    other_origin = {"Origin": "http://evil.example", "Content-Type": "text/plain"}  # a simple cross-site post
    assert post(page, "/api/predictions/mobilenet_v2", cat, **other_origin).status_code == 403
    assert post(page, "/api/predictions/mobilenet_v2", cat, token, **other_origin).status_code == 403
    assert post(page, "/api/predictions/mobilenet_v2", cat).status_code == 403  # no token
    assert post(page, "/api/videos", b"x", "guessed").status_code == 403
    same_site = {"Origin": f"http://localhost:{page.port + 1}", "Sec-Fetch-Site": "same-site"}
    assert post(page, "/api/predictions/mobilenet_v2", cat, token, **same_site).status_code == 403
    answer = post(
        page, "/api/predictions/mobilenet_v2", cat, token, Origin=page.url, **{"Sec-Fetch-Site": "same-origin"}
    )
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "Egyptian cat"
    asking = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    preflight = requests.options(f"{page.url}/api/predictions/mobilenet_v2", headers=asking, timeout=60)
    for response in (preflight, answer, rebound, requests.get(f"{page.url}/", timeout=60)):
        assert not any(name.lower().startswith("access-control-") for name in response.headers)  # no CORS, ever
        assert response.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in response.headers[
            "Content-Security-Policy"]  # fmt: skip


def test_a_client_s_text_never_renews_torchserve_s_keys(page, torchserve, tmp_path):
    """Parameters named or valued like TorchServe's refusal, through the page and the CLI:
    the handler quotes them in a 400, and nobody's key changes."""
    before, token, cat = keys_of(torchserve), page.token(), photo_bytes("chelsea")
    for text in REFUSAL_TEXTS:
        answer = post(page, f"/api/predictions/mobilenet_v2?{urlencode({text: '1'})}", cat, token)
        assert answer.status_code == 400 and answer.json()["error"] == "unknown parameter"
        answer = post(page, f"/api/predictions/yolov5s?{urlencode({'classes': text})}", cat, token)
        assert answer.status_code == 400
    (tmp_path / "cat.jpg").write_bytes(cat)
    for text in REFUSAL_TEXTS:
        done = subprocess.run(
            [sys.executable, "-m", "scripts.client", "predict", "yolov5s", str(tmp_path / "cat.jpg"), "--classes", text,
             "--config", str(torchserve.workdir / "config.properties"),
             "--key-file", str(torchserve.workdir / "key_file.json")],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 1 and json.loads(done.stdout)["status"] == 400, done.stderr[-500:]
    assert keys_of(torchserve) == before


def test_an_image_answer_a_jpeg_cannot_hold_is_refused_once_and_kills_nothing(page, torchserve):
    wide = encode(photo("coffee").resize((65_501, 1)), "PNG")
    answer = post(page, "/api/predictions/face_pixelizer", wide, page.token())
    assert answer.status_code == 413 and answer.json()["error"] == "image answer too large"
    assert "format=json" in answer.json()["detail"]


def upload_headers(page, path: str, length: int, token: str) -> http.client.HTTPConnection:
    """A POST whose headers are sent and whose body is not (yet)."""
    connection = http.client.HTTPConnection("127.0.0.1", page.port, timeout=60)
    connection.putrequest("POST", path)
    for name, value in (("Content-Length", str(length)), ("X-Zoo-Token", token),
                        ("Content-Type", "application/octet-stream")):  # fmt: skip
        connection.putheader(name, value)
    connection.endheaders()
    return connection


def answer_of(connection: http.client.HTTPConnection) -> tuple[int, dict]:
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def wait_until_settled(page, ids: list[str], timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        states = [requests.get(f"{page.url}/api/videos/{key}", timeout=30).json() for key in ids]
        if all(state["state"] not in ("uploading", "running") for state in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.3)


def test_uploads_arriving_together_are_counted_before_their_bodies_are_read(page, tmp_path):
    clip = panning_clip(tmp_path / "walk.mp4", 160, 120, frames=4, fps=4, audio=False).read_bytes()
    token = page.token()
    connections = [upload_headers(page, "/api/videos", len(clip), token) for _ in range(4)]
    time.sleep(0.5)  # every request's headers are in; no body yet
    for connection in connections:
        try:
            connection.send(clip)
        except OSError:
            pass  # refused already: the server closed it
    answers = [answer_of(connection) for connection in connections]
    assert sorted(status for status, _ in answers) == [200] * MAX_VIDEOS_AT_ONCE + [429] * (4 - MAX_VIDEOS_AT_ONCE)
    started = [document["id"] for status, document in answers if status == 200]
    assert [state["state"] for state in wait_until_settled(page, started)] == ["done"] * MAX_VIDEOS_AT_ONCE


def test_bursts_of_uploads_never_fail_the_server(page):
    """More jobs than the page keeps, in concurrent bursts: each accepted or told to wait
    (429), never a 5xx (the job table's clean-up raced without a lock)."""
    token, accepted = page.token(), []

    def upload(_):
        return post(page, "/api/videos", b"not a video " * 100, token)

    with ThreadPoolExecutor(4) as pool:
        for _ in range(6):
            answers = list(pool.map(upload, range(4)))
            assert {answer.status_code for answer in answers} <= {200, 429}, [a.text for a in answers]
            ids = [answer.json()["id"] for answer in answers if answer.status_code == 200]
            accepted += ids
            states = wait_until_settled(page, ids)
            assert all(state["state"] == "failed" and "cannot be read" in state["error"] for state in states)
    assert len(accepted) > 8


def huge_frame_clip(path, width: int, height: int, frames: int):
    """Motion JPEG of flat frames: a few MB that decode to `frames` x width x height pixels."""
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=4)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        picture = av.VideoFrame.from_ndarray(np.full((height, width, 3), 90, np.uint8), format="rgb24")
        for index in range(frames):
            picture.pts = index
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    return path


def test_frames_over_the_pixel_limit_are_refused_from_the_header_in_a_child_process(page, tmp_path):
    """12 frames of 7000x6000 (42 M pixels, over the pixelizer's 40 M) in a few MB: refused
    before any frame is decoded, by the child process (the page's memory: the last test)."""
    clip = huge_frame_clip(tmp_path / "huge.avi", 7000, 6000, 12).read_bytes()
    answer = post(page, "/api/videos", clip, page.token(), **{"X-Filename": "huge.avi"})
    assert answer.status_code == 200
    (state,) = wait_until_settled(page, [answer.json()["id"]])
    assert state["state"] == "failed" and "7000x6000 = 42000000 pixels, over face_pixelizer's limit" in state["error"]


def test_a_child_that_crashes_fails_its_clip_and_nothing_else(page, tmp_path):
    """FFmpeg crashing on a hostile file, as the page sees it: its child process killed."""
    clip = panning_clip(tmp_path / "long.mp4", 320, 240, frames=80, fps=8, audio=False).read_bytes()
    key = post(page, "/api/videos", clip, page.token()).json()["id"]
    deadline = time.monotonic() + 60
    while not (children := video_children(page)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for child in children:
        child.kill()
    (state,) = wait_until_settled(page, [key])
    assert state["state"] == "failed" and "decoder stopped" in state["error"]
    assert requests.get(f"{page.url}/api/models", timeout=60).status_code == 200


def video_children(page) -> list[psutil.Process]:
    return [child for child in psutil.Process(page.pid).children(recursive=True)
            if "scripts.web.videos" in " ".join(child.cmdline())]  # fmt: skip


def test_video_parameters_are_checked_and_a_job_can_be_cancelled(page, tmp_path):
    token = page.token()
    clip = panning_clip(tmp_path / "long.mp4", 320, 240, frames=120, fps=8, audio=False).read_bytes()
    repeated = post(page, "/api/videos?mode=blur&mode=mosaic", clip, token)
    assert repeated.status_code == 400 and repeated.json()["error"] == "repeated parameter"
    unknown = post(page, "/api/videos?colour=red", clip, token)
    assert unknown.status_code == 400 and "colour" in unknown.json()["detail"]
    for query, detail in (("track_frames=151", "track_frames must be between 0 and 150 frames"),
                          ("frame_memory=x", "frame_memory must be a whole number of frames")):  # fmt: skip
        refused = post(page, f"/api/videos?{query}", clip, token)
        assert refused.status_code == 400 and refused.json()["detail"] == detail
    key = post(page, "/api/videos", clip, token).json()["id"]
    deadline = time.monotonic() + 60
    while requests.get(f"{page.url}/api/videos/{key}", timeout=30).json()["done"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert requests.delete(f"{page.url}/api/videos/{key}", timeout=30).status_code == 403  # no token
    cancelled = requests.delete(f"{page.url}/api/videos/{key}", headers={"X-Zoo-Token": token}, timeout=30)
    assert cancelled.status_code == 200 and cancelled.json() == {"state": "cancelled"}
    assert requests.get(f"{page.url}/api/videos/{key}", timeout=30).status_code == 404
    assert not video_children(page)


def test_an_upload_that_stalls_is_refused_and_frees_its_place(page):
    token = page.token()
    for path in ("/api/predictions/mobilenet_v2", "/api/videos", "/api/videos"):
        connection = upload_headers(page, path, 100_000, token)
        connection.send(b"\xff\xd8\xff" + bytes(100))
        started = time.monotonic()
        status, document = answer_of(connection)
        assert status == 408 and document["error"] == "upload too slow"
        assert time.monotonic() - started < IDLE_S + 10
    # the stalled clips held no place: two clips may start now
    ids = [post(page, "/api/videos", b"not a video", token).json()["id"] for _ in range(MAX_VIDEOS_AT_ONCE)]
    wait_until_settled(page, ids)


PATHS = ["/", "/api/models", "/api/predictions/mobilenet_v2", "/api/predictions/face_pixelizer",
         "/api/predictions/nope", "/api/videos", "/api/videos/0123", "/api/videos/0123/file", "/static/app.js",
         "/static/../app.py", "/api/predictions/%2e%2e%2fmodels", "/api/predictions/"]  # fmt: skip
PAGE_CALLS = ["/api/predictions/mobilenet_v2", "/api/predictions/face_pixelizer", "/api/predictions/yolov5s",
              "/api/videos", "/api/videos/0123", "/api/models"]  # fmt: skip
header_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=40
).filter(
    lambda value: not value[:1].isspace()  # what HTTP clients (requests) send at all
)


@st.composite
def requests_to_the_page(draw, port: int, token: str):
    """Any request at all; half of them as the page would send them (its Host, its token,
    no other origin), so that they get past the door and into the models and the clips."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PROPFIND"]))
    path = draw(st.sampled_from(PATHS) | st.text(max_size=30).map(lambda text: "/" + quote(text)))
    query = draw(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=4))
    headers = draw(st.dictionaries(st.from_regex(r"X-[A-Za-z-]{1,12}", fullmatch=True), header_text, max_size=3))
    body = draw(st.binary(max_size=2000) | st.sampled_from([photo_bytes("chelsea"), b"", b"{}"]))
    if draw(st.booleans()):  # as the page
        method = draw(st.sampled_from(["POST", "POST", "GET", "DELETE"]))
        path = draw(st.sampled_from(PAGE_CALLS))
        headers |= {"Host": f"127.0.0.1:{port}", "X-Zoo-Token": token}
        headers |= draw(st.dictionaries(st.sampled_from(["Content-Type", "X-Filename"]), header_text, max_size=2))
    else:
        headers["Host"] = draw(st.sampled_from([f"127.0.0.1:{port}", f"localhost:{port}", "evil.example"]))
        headers |= draw(st.dictionaries(st.sampled_from(["Origin", "Sec-Fetch-Site", "Sec-Fetch-Dest", "Content-Type",
                                                         "X-Zoo-Token", "Transfer-Encoding-X"]),
                                        header_text, max_size=3))  # fmt: skip
    return method, path + ("?" + urlencode(query) if query else ""), headers, body


def test_any_request_is_answered_without_a_5xx_or_a_key(page, torchserve):
    token = page.token()
    secrets = {value["key"] for value in keys_of(torchserve).values()}
    statuses = set()

    @settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(requests_to_the_page(page.port, token))
    def check(request):
        method, path, headers, body = request
        answer = requests.request(method, page.url + path, headers=headers, data=body, timeout=120)
        assert answer.status_code < 500, (request, answer.status_code, answer.text[:300])
        statuses.add(answer.status_code)
        text = answer.content.decode("latin-1") + json.dumps(dict(answer.headers))
        assert not any(secret in text for secret in secrets)
        if answer.status_code >= 400 and method != "HEAD":
            assert answer.json()["error"], answer.text[:300]
            assert_clean(answer.text)

    check()
    assert {200, 403} <= statuses and statuses & {400, 413, 415}, statuses  # at the door, and past it


def test_the_workers_and_the_page_s_memory_lived_through_all_of_it(torchserve, worker_pids, page_memory):
    assert {model: [w["pid"] for w in torchserve.workers(model)] for model in MODELS} == worker_pids
    assert page_memory.stop() < 300 * 2**20, (page_memory.idle, page_memory.peak)
