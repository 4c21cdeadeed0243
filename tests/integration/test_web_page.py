"""The web page (scripts/web/) in a real browser -- Debian's Chromium, headless, driven by
Selenium through its chromedriver (scripts/setup/browser.py) -- against the session's real
TorchServe: a person's photo in, the answer as the page shows it.

ZOO_SCREENSHOTS=<dir> keeps a screenshot of each view there (docs/screenshots/ holds them)."""

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
import pytest
import requests
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from scripts.samples.clips import panning_clip
from scripts.samples.photos import encode, photo, photo_bytes
from scripts.serve.server import local_torchserve
from scripts.setup.browser import browser_of
from scripts.web.app import MODELS_TTL_S
from scripts.zoo import MODELS, REPO
from tests.integration.conftest import scrape
from tests.web_page import page_token, web_page

pytestmark = pytest.mark.integration

REBOUND_NAME = "evil.example"
# The astronaut's face in skimage's 512x512 photo (x1, y1, x2, y2), by eye with a margin.
ASTRONAUT_FACE = (150, 30, 300, 215)


@pytest.fixture(scope="module")
def page_server(request):
    """The TorchServe behind the page: the session's; for screenshots, one that serves what
    `make serve` does (the session's also serves test variants of the models)."""
    if not os.environ.get("ZOO_SCREENSHOTS"):
        yield request.getfixturevalue("torchserve")
        return
    store, _ = request.getfixturevalue("archives")
    with local_torchserve(store, [spec.name for spec in MODELS], timeout=600) as server:
        yield server


@pytest.fixture(scope="module")
def page_url(page_server):
    with web_page(page_server) as page:
        yield page.url


@pytest.fixture(scope="module")
def browser():
    found = browser_of(REPO / ".venv")
    assert found is not None, "no Chromium: run `python -m scripts.setup.browser` (make test does)"
    options = webdriver.ChromeOptions()
    options.binary_location = found.chromium
    # evil.example resolves to this machine, as a DNS-rebinding attacker's name would.
    arguments = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1400",
                 f"--host-resolver-rules=MAP {REBOUND_NAME} 127.0.0.1")  # fmt: skip
    for argument in arguments:
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(found.chromedriver, env=found.env))
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, page_url):
    browser.get(page_url)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".card[data-model='yolov5s']"))
    return browser


def send(page, model: str, path: Path) -> None:
    Select(page.find_element(By.ID, "model")).select_by_value(model)
    page.find_element(By.ID, "file").send_keys(str(path))


def status(page) -> str:
    return page.find_element(By.ID, "status").text


def wait_for(page, condition, timeout: float = 120):
    return WebDriverWait(page, timeout).until(condition)


def screenshot(page, name: str, selector: str = "main") -> None:
    """The part of the page `selector` picks, as docs/screenshots/ shows it."""
    directory = os.environ.get("ZOO_SCREENSHOTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.find_element(By.CSS_SELECTOR, selector).screenshot(str(Path(directory) / f"{name}.png"))


def photo_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.jpg"
    path.write_bytes(encode(photo(name), "JPEG", quality=95))
    return path


def test_the_page_lists_every_served_model_with_its_weights_and_workers(page, page_server):
    cards = {card.get_attribute("data-model"): card.text for card in page.find_elements(By.CSS_SELECTOR, ".card")}
    assert {"mobilenet_v2", "resnet18", "yolov5s", "face_pixelizer"} <= set(cards)
    assert "classification · MobileNet_V2_Weights.IMAGENET1K_V1" in cards["mobilenet_v2"]
    assert "yolov5s v6" in cards["yolov5s"] and "random weights" not in cards["yolov5s"]
    assert "random weights" in cards["resnet18"] and "random random" not in cards["resnet18"]
    assert "worker(s) ready" in cards["face_pixelizer"]
    screenshot(page, "models", "#models")
    page_source = page.page_source
    assert page_server.keys.header("inference")["Authorization"].split()[-1] not in page_source  # no key in the page


def test_the_cat_is_an_egyptian_cat(page, tmp_path):
    send(page, "mobilenet_v2", photo_file(tmp_path, "chelsea"))
    bars = wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='predictions']"))
    assert bars[0].text.splitlines()[0] == "Egyptian cat"
    assert "mobilenet_v2 answered in" in status(page)
    screenshot(page, "classifier")


def test_a_photo_can_be_dropped_or_pasted(page):
    """The drop zone and the page take a photo as a person's drag and drop or paste hands it
    over: a File in the event's DataTransfer."""
    give = """const [kind, data] = arguments;
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "photo.jpg", { type: "image/jpeg" }));
        if (kind === "drop") {
          const drop = new DragEvent("drop", { dataTransfer: transfer, bubbles: true });
          document.getElementById("drop").dispatchEvent(drop);
        } else {
          document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true }));
        }"""
    Select(page.find_element(By.ID, "model")).select_by_value("mobilenet_v2")
    page.execute_script(give, "drop", base64.b64encode(photo_bytes("chelsea")).decode())
    bars = wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='predictions']"))
    assert bars[0].text.splitlines()[0] == "Egyptian cat"
    Select(page.find_element(By.ID, "model")).select_by_value("face_pixelizer")
    page.execute_script(give, "paste", base64.b64encode(photo_bytes("astronaut")).decode())
    wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "img[data-testid='anonymised']"))


def test_a_text_file_shows_why_it_was_refused(page, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a photo\n")
    send(page, "resnet18", text)
    wait_for(page, lambda d: "refused" in status(d))
    assert "unsupported image format" in status(page) and "not an image in a supported format" in status(page)
    assert page.find_element(By.ID, "status").get_attribute("class") == "status error"


def test_detections_are_drawn_and_the_confidence_slider_refilters_without_a_request(page, tmp_path):
    send(page, "yolov5s", photo_file(tmp_path, "chelsea"))
    canvas = wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "canvas[data-testid='detections']"))[0]
    assert int(canvas.get_attribute("data-boxes")) >= 1
    assert (
        "1 of" in canvas.find_element(By.XPATH, "..").text
        or "detections at confidence" in canvas.find_element(By.XPATH, "..").text
    )
    drawn = canvas_pixels(page, canvas)
    plain = np.asarray(Image.open(photo_file(tmp_path, "chelsea")).convert("RGB"), dtype=np.int16)
    assert np.abs(drawn - plain).max() > 100  # the box's coloured outline is on the photo
    screenshot(page, "detector")
    requests_before = predictions_requested(page)
    page.execute_script(
        "const s = document.getElementById('param-confidence'); s.value = '1'; s.dispatchEvent(new Event('input'));"
    )
    assert canvas.get_attribute("data-boxes") == "0" and predictions_requested(page) == requests_before


def test_compare_shows_every_served_detector_side_by_side_with_its_latency(page, tmp_path):
    send(page, "yolov5s", photo_file(tmp_path, "chelsea"))
    wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "canvas[data-testid='detections']"))
    page.find_element(By.ID, "compare").click()
    wait_for(page, lambda d: status(d).startswith("Compared"))
    drawn = {c.get_attribute("data-model"): c for c in page.find_elements(By.CSS_SELECTOR, "canvas[data-testid]")}
    assert {"yolov5s", "yolov5m", "yolov5l"} <= set(drawn)
    captions = page.find_element(By.ID, "result").text
    assert re.search(r"yolov5m: \d+ ms, random weights", captions) and re.search(r"yolov5s: \d+ ms —", captions)


def test_the_astronaut_s_face_is_pixelated_and_nothing_else_changes(page, tmp_path):
    original = photo_file(tmp_path, "astronaut")
    send(page, "face_pixelizer", original)
    image = wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "img[data-testid='anonymised']"))[0]
    wait_for(page, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
    shown = image_pixels(page, image)
    sent = np.asarray(Image.open(original).convert("RGB"), dtype=np.int16)
    x1, y1, x2, y2 = ASTRONAUT_FACE
    mask = np.zeros(sent.shape[:2], dtype=bool)
    mask[y1:y2, x1:x2] = True
    difference = np.abs(shown - sent).mean(axis=2)
    assert difference[mask].mean() > 8 * difference[~mask].mean()  # the face hidden ...
    assert difference[~mask].mean() < 3  # ... and the rest as it was, up to the JPEG round trip
    assert "1 face(s) hidden" in page.find_element(By.ID, "result").text
    assert page.find_element(By.LINK_TEXT, "Download").get_attribute("download") == "anonymised.jpg"
    screenshot(page, "face_pixelizer")


def test_a_clip_comes_back_anonymised_frame_for_frame(page, page_url, tmp_path):
    clip = panning_clip(tmp_path / "walk.mp4", 320, 240, frames=8, fps=4, audio=False)
    page.find_element(By.CSS_SELECTOR, ".tab[data-tab='video']").click()
    page.find_element(By.ID, "clip").send_keys(str(clip))
    page.find_element(By.ID, "anonymise").click()
    link = wait_for(page, lambda d: d.find_element(By.ID, "video-download").is_displayed()
                    and d.find_element(By.ID, "video-download"))  # fmt: skip
    assert page.find_element(By.ID, "video-status").text == "8 frames anonymised"
    screenshot(page, "video")
    answer = requests.get(link.get_attribute("href"), timeout=60)
    (tmp_path / "out.mp4").write_bytes(answer.content)
    with av.open(str(tmp_path / "out.mp4")) as out, av.open(str(clip)) as source:
        sent = [f.to_ndarray(format="rgb24").astype(np.int16) for f in source.decode(video=0)]
        got = [f.to_ndarray(format="rgb24").astype(np.int16) for f in out.decode(video=0)]
    assert len(got) == len(sent) == 8
    assert all(np.abs(a - b).max() > 100 for a, b in zip(got, sent, strict=True))  # a face hidden in each


def test_the_page_s_server_refuses_what_it_must_not_forward(page_url):
    """Over a model's own upload limit, an unknown model, a repeated parameter: a JSON 4xx
    naming the problem, before TorchServe is asked."""
    token = {"X-Zoo-Token": page_token(page_url)}
    over = requests.post(f"{page_url}/api/predictions/mobilenet_v2", data=b"\xff" * 16_000_001, headers=token,
                         timeout=60)  # fmt: skip
    assert over.status_code == 413 and over.json()["error"] == "image too large"
    unknown = requests.post(f"{page_url}/api/predictions/nope", data=b"x", headers=token, timeout=60)
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    repeated = requests.post(f"{page_url}/api/predictions/mobilenet_v2?top_k=1&top_k=2", data=b"x", headers=token,
                             timeout=60)  # fmt: skip
    assert repeated.status_code == 400 and repeated.json()["error"] == "repeated parameter"


def test_the_page_s_server_renews_expired_keys(archives, tmp_path):
    """TorchServe's keys expire (here after 3 s): the page lists the models (management key)
    and forwards a photo (inference key) all the same, renewing each with the API key."""
    store, _ = archives
    with local_torchserve(store, ["fault_probe"], overrides={"token_expiration_min": "0.05"}) as server:
        key_file = server.workdir / "key_file.json"
        before = json.loads(key_file.read_text())
        with web_page(server) as page:
            url = page.url
            time.sleep(max(4, MODELS_TTL_S) + 0.5)  # the keys (3 s), and the page's model list, expired
            listed = requests.get(f"{url}/api/models", timeout=60)
            answer = requests.post(f"{url}/api/predictions/fault_probe", data=photo_bytes("chelsea"),
                                   headers={"X-Zoo-Token": page.token()}, timeout=60)  # fmt: skip
        after = json.loads(key_file.read_text())
    assert listed.status_code == 200 and [m["name"] for m in listed.json()] == ["fault_probe"]
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "Egyptian cat"
    assert after["management"]["key"] != before["management"]["key"]
    assert after["inference"]["key"] != before["inference"]["key"]


ATTACK = """<!doctype html><html><body>
<form id="form" method="POST" action="PAGE/api/videos" enctype="text/plain"><input name="x" value="y"></form>
<script>
const page = "PAGE", photo = Uint8Array.from(atob("PHOTO"), (c) => c.charCodeAt(0));
window.results = {};
async function attempt(name, request) {
  try { const answer = await request(); results[name] = answer.type === "opaque" ? "sent" : await answer.text(); }
  catch (error) { results[name] = `blocked: ${error.name}`; }
}
(async () => {
  await attempt("read", () => fetch(`${page}/api/models`));
  await attempt("simple post", () => fetch(`${page}/api/predictions/mobilenet_v2`,
    { method: "POST", mode: "no-cors", body: new Blob([photo], { type: "text/plain" }) }));
  await attempt("post with a header", () => fetch(`${page}/api/predictions/mobilenet_v2`,
    { method: "POST", body: photo, headers: { "X-Zoo-Token": "guessed" } }));
  results.done = true;
})();
</script></body></html>"""


def attacker_site(page_url: str, html: str) -> ThreadingHTTPServer:
    """Another website's page, on another loopback port (another origin), aimed at the page."""
    body = html.replace("PAGE", page_url).replace("PHOTO", base64.b64encode(photo_bytes("chelsea")).decode()).encode()

    class Attacker(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def served(torchserve, model: str) -> float:
    return sum(value for (name, labels), value in scrape(torchserve).items()
               if name == "ts_inference_requests_total" and ("model_name", model) in labels)  # fmt: skip


def test_another_website_can_neither_read_the_page_s_answers_nor_act_through_it(browser, page_url, page_server):
    """A page of another origin (another loopback port) tries what any website could: read
    the model list, post a photo without a preflight, post one with a custom header, submit
    a form. Nothing is read, no prediction runs, the form gets the page server's 403."""
    attacker = attacker_site(page_url, ATTACK)
    before = served(page_server, "mobilenet_v2")
    try:
        browser.get(f"http://127.0.0.1:{attacker.server_address[1]}/")
        wait_for(browser, lambda d: d.execute_script("return window.results && window.results.done"), 60)
        results = browser.execute_script("return window.results")
        assert results["read"] == "blocked: TypeError" and results["post with a header"] == "blocked: TypeError"
        # sent without a preflight; the page's server refuses it (its answer, with its
        # Cross-Origin-Resource-Policy, is not even handed to the other page as opaque)
        assert results["simple post"] in ("sent", "blocked: TypeError")
        browser.execute_script("document.getElementById('form').submit()")
        wait_for(browser, lambda d: "forbidden" in d.page_source)
        assert "another" in browser.page_source  # "a request from another origin / site"
    finally:
        attacker.shutdown()
    time.sleep(1)  # a prediction the page had forwarded would be counted by now
    assert served(page_server, "mobilenet_v2") == before


def test_a_rebound_name_gets_nothing_from_the_page(browser, page_url):
    """DNS rebinding: a name an attacker controls, resolving to 127.0.0.1, makes the
    attacker's page same-origin with whatever answers there; the page's server answers its
    own names only."""
    browser.get(page_url.replace("127.0.0.1", REBOUND_NAME) + "/")
    assert "this server answers requests for" in browser.page_source
    assert not browser.find_elements(By.CSS_SELECTOR, ".card")


def test_the_page_s_server_listens_on_loopback_only():
    done = subprocess.run([sys.executable, "-m", "scripts.web.app", "run", "--host", "0.0.0.0"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and "not a loopback address" in done.stderr


def canvas_pixels(page, canvas) -> np.ndarray:
    data_url = page.execute_script("return arguments[0].toDataURL('image/png');", canvas)
    return decode_data_url(data_url)


def image_pixels(page, image) -> np.ndarray:
    """The pixels the page shows in an <img>, as the browser decoded them (drawn on a canvas:
    the page's CSP lets it fetch from its own server only, blob URLs included)."""
    data_url = page.execute_script(
        """const [image] = arguments;
        const canvas = document.createElement("canvas");
        canvas.width = image.naturalWidth;
        canvas.height = image.naturalHeight;
        canvas.getContext("2d").drawImage(image, 0, 0);
        return canvas.toDataURL("image/png");""",
        image,
    )
    return decode_data_url(data_url)


def decode_data_url(data_url: str) -> np.ndarray:
    data = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def predictions_requested(page) -> int:
    return page.execute_script(
        "return performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/predictions/')).length;"
    )
