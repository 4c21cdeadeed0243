"""The benchmarks' harness against real processes: CPU time read per process tree
(psutil), a server paused while another is measured, and the one load generator
against a real HTTP server."""

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest

from scripts.bench.harness import Target, cpu_seconds, measure, paused, peer
from scripts.bench.loadgen import Request, closed_loop, multipart, request_mix, summarize
from scripts.child_process import ChildFailed


@pytest.fixture
def busy_tree():
    """A process spinning on a core, with a child that does too."""
    spin = "while True: pass"
    code = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {spin!r}])\n{spin}"
    process = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(0.5)
    try:
        yield process.pid
    finally:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.wait()


def test_a_paused_tree_spends_no_cpu_and_runs_again_afterwards(busy_tree):
    assert len(psutil.Process(busy_tree).children()) == 1
    with paused(busy_tree):
        assert all(p.status() == psutil.STATUS_STOPPED for p in [psutil.Process(busy_tree),
                                                                 *psutil.Process(busy_tree).children()])  # fmt: skip
        before = cpu_seconds(busy_tree)["workers"]
        time.sleep(0.5)
        assert cpu_seconds(busy_tree)["workers"] == pytest.approx(before, abs=0.02)
    time.sleep(0.5)
    assert cpu_seconds(busy_tree)["workers"] > before + 0.3  # both processes spin again
    assert cpu_seconds(busy_tree)["frontend"] == 0.0  # no Java here


class Answers(BaseHTTPRequestHandler):
    """200 for a JPEG body, 415 for anything else; keep-alive, as TorchServe."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 200 if body.startswith(b"\xff\xd8") else 415
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_PUT

    def log_message(self, *args):
        pass


def test_the_load_generator_keeps_its_clients_closed_loop_and_counts_every_answer():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        mix = request_mix(["m"], bad_every=2)
        outcomes = closed_loop(url, {}, mix, concurrency=3, duration=30, max_requests=60)
        report = summarize(outcomes, 1.0)
        sent = Counter(outcome.request.label for outcome in outcomes)
        assert report["overall"]["requests"] == 60 and len(sent) == 6  # every request of the mix, round robin
        # this stand-in answers the truncated JPEG 200 and the form 415, where a real handler says 400
        refused = sent["bad:text"] + sent["bad:unknown parameter"]
        assert report["overall"]["statuses"] == {200: 60 - refused, 415: refused}
        assert report["overall"]["unexpected"] == sent["bad:truncated jpeg"] + sent["bad:unknown parameter"]
        stop = threading.Event()
        stop.set()
        assert closed_loop(url, {}, [Request("m", "photo", b"\xff\xd8")], 2, 30, stop=stop) == []
    finally:
        server.shutdown()


def test_a_multipart_body_holds_the_file_and_the_fields():
    headers, body = multipart(b"\xff\xd8jpeg", {"top_k": "3"}, boundary="b0")
    assert headers == {"Content-Type": "multipart/form-data; boundary=b0"}
    assert body.startswith(b'--b0\r\nContent-Disposition: form-data; name="data"; filename="photo.jpg"')
    assert b'name="top_k"\r\n\r\n3\r\n' in body and body.endswith(b"--b0--\r\n")


class Broken(BaseHTTPRequestHandler):
    """A server that answers every request at once, with an error."""

    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_error_answers_are_never_counted_as_throughput():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = Target("broken", f"http://127.0.0.1:{server.server_address[1]}", os.getpid())
        point = measure(target, "m", b"x", clients=2, seconds=0.5, warmup=0.1)
    finally:
        server.shutdown()
    assert point.requests > 0 and point.errors == point.requests and point.req_per_s == 0


def test_a_peer_that_cannot_start_is_reported_at_once():
    """As it exits (the message), not when its 300 s are up ("did not answer within")."""
    with pytest.raises(ChildFailed, match="the litserve server exited with status 1 before it answered"):
        with peer("litserve", [sys.executable, "-c", "raise SystemExit(1)"], 9, "/health", timeout=300):
            pass
