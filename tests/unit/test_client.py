"""The client against a stand-in TorchServe (a real HTTP server in this process whose
answers the test scripts): retries, key refresh, failures and the CLI's exit status."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scripts.client import cli
from scripts.client.auth import AuthError, Tokens
from scripts.client.grpc_client import as_answer, retry_reason_grpc
from scripts.client.rest import DIED, UNAVAILABLE, ConnectionFailed, ZooClient, retry_reason
from scripts.families import families
from scripts.samples.photos import photo_bytes
from scripts.ts_api import KEY_REFUSED, key_refused, key_refused_grpc

# TorchServe 0.12's answer to a wrong or expired key, as its frontend writes it.
REFUSED = {"code": 400, "type": "InvalidKeyException", "message": KEY_REFUSED}
DIED_507 = {"code": 507, "type": "InternalServerException", "message": "Worker died."}
NO_WORKER = {"code": 503, "type": "ServiceUnavailableException", "message": 'Model "m" has no worker'}


class StandIn(BaseHTTPRequestHandler):
    """Answers /predictions/<model> from the server's script (a list of (status, body)),
    the last entry again once the script is used up; /token rewrites the key file."""

    def do_PUT(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        server.seen.append((self.path, self.headers.get("Authorization"), self.headers.get("Content-Type")))
        if self.headers.get("Authorization") != f"Bearer {server.valid_key}":
            return self.reply(400, REFUSED)
        status, body = server.script[min(server.calls, len(server.script) - 1)]
        server.calls += 1
        self.reply(status, body)

    do_POST = do_PUT

    def reply(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class TokenAPI(StandIn):
    def do_POST(self):
        if self.path.startswith("/token"):
            assert self.headers["Authorization"] == "Bearer api-key"
            self.server.valid_key = "fresh-key"
            write_keys(self.server.key_file, "fresh-key")
            return self.reply(200, {})
        return super().do_POST()


def write_keys(path: Path, inference: str) -> None:
    path.write_text(
        json.dumps({"inference": {"key": inference}, "management": {"key": "m"}, "API": {"key": "api-key"}})
    )


@pytest.fixture
def stand_in(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenAPI)
    server.valid_key, server.script, server.calls, server.seen = "key-1", [(200, {"ok": 1})], 0, []
    server.key_file = tmp_path / "key_file.json"
    write_keys(server.key_file, "key-1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    (tmp_path / "config.properties").write_text(f"inference_address={url}\nmanagement_address={url}\n")
    yield server
    server.shutdown()


def client_of(server, **options) -> ZooClient:
    return ZooClient.from_config(server.key_file.with_name("config.properties"), server.key_file, backoff=0, **options)


def test_every_handler_parameter_has_an_option():
    accepted = set()
    for task in families().values():
        accepted |= set(task.task.request_params)
    assert {param for param, _ in cli.PARAMETERS.values()} == accepted


def test_dead_workers_are_retried_and_refusals_are_not(stand_in):
    stand_in.script = [(507, DIED_507), (503, NO_WORKER), (200, {"a": 1})]
    answer = client_of(stand_in).predict("m", b"img")
    assert answer.ok and answer.attempts == 3 and answer.json() == {"a": 1}
    stand_in.script, stand_in.calls = [(400, {"error": "corrupt image", "detail": "x", "status": 400})], 0
    answer = client_of(stand_in).predict("m", b"img")
    assert answer.status == 400 and answer.attempts == 1 and answer.error() == "corrupt image: x"
    stand_in.script, stand_in.calls = [(503, NO_WORKER)], 0
    answer = client_of(stand_in, retries=2).predict("m", b"img")
    assert answer.status == 503 and answer.attempts == 3  # the limit: 1 + 2 retries


def test_a_request_that_meets_a_dead_worker_twice_is_not_sent_a_third_time(stand_in):
    """The first "Worker died." may be a batch-mate's doing; the second says that this
    request kills workers: sending it again would kill the next one."""
    stand_in.script = [(500, {**DIED_507, "code": 500}), (503, NO_WORKER), (507, DIED_507), (200, {"a": 1})]
    answer = client_of(stand_in).predict("m", b"img")
    assert answer.status == 507 and answer.attempts == 3 and stand_in.calls == 3


def test_only_the_frontend_refusing_a_key_renews_it(stand_in):
    """A handler's 400 quoting a client's parameter named like TorchServe's refusal is an
    answer, not a refused key: renewing the key would lock out every other client."""
    quoted = [
        {"error": "unknown parameter", "detail": f"{text!r} is not a parameter", "status": 400}
        for text in (KEY_REFUSED, "Token Authorization failed", "InvalidKeyException", json.dumps(REFUSED))
    ]
    stand_in.script = [(400, body) for body in quoted]
    client = client_of(stand_in)
    for _ in quoted:
        assert client.predict("m", b"img").status == 400
    assert json.loads(stand_in.key_file.read_text())["inference"]["key"] == "key-1"  # never renewed
    assert all(not key_refused(400, json.dumps(body)) for body in quoted)
    assert key_refused(400, json.dumps(REFUSED)) and not key_refused(200, json.dumps(REFUSED))
    assert not key_refused(400, json.dumps({**REFUSED, "detail": "x"}))  # not exactly the frontend's shape
    assert key_refused_grpc("PERMISSION_DENIED", KEY_REFUSED)
    assert not key_refused_grpc("PERMISSION_DENIED", f"{KEY_REFUSED}\norg.pytorch.serve.http.InternalServerException")


def test_raw_images_are_never_sent_as_a_form(stand_in):
    client_of(stand_in).predict("m", b"img")
    client_of(stand_in).predict("m", b"img", {"top_k": "3"})
    (_, _, raw), (_, _, with_params) = stand_in.seen
    assert raw == "application/octet-stream" and with_params.startswith("multipart/form-data")


def test_an_expired_key_is_refreshed_with_the_api_key(stand_in):
    client = client_of(stand_in)
    assert client.predict("m", b"img").ok
    stand_in.valid_key = "key-2"  # expired: TorchServe refuses key-1 from now on
    answer = client.predict("m", b"img")
    assert answer.ok and json.loads(stand_in.key_file.read_text())["inference"]["key"] == "fresh-key"
    assert stand_in.seen[-1][1] == "Bearer fresh-key"


def test_a_refused_given_token_stops_the_client(stand_in):
    client = ZooClient.from_config(stand_in.key_file.with_name("config.properties"), None, "wrong")
    with pytest.raises(AuthError, match="refused the given inference key"):
        client.predict("m", b"img")


def test_no_key_at_all_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("TS_ZOO_TOKEN", raising=False)
    with pytest.raises(AuthError, match="pass --token"):
        Tokens(tmp_path / "key_file.json")


def test_a_key_file_being_rewritten_is_read_again(tmp_path, monkeypatch):
    """TorchServe rewrites key_file.json in place when a key is refreshed: a client that
    reads it meanwhile sees it empty (CI caught exactly that), and reads it again."""
    monkeypatch.delenv("TS_ZOO_TOKEN", raising=False)
    key_file = tmp_path / "key_file.json"
    key_file.write_text("")  # truncated, not yet written
    tokens = Tokens(key_file)
    keys = {"inference": {"key": "fresh"}, "management": {"key": "m"}, "API": {"key": "a"}}
    writer = threading.Timer(0.2, lambda: key_file.write_text(json.dumps(keys)))
    writer.start()
    assert tokens.inference() == "fresh"
    writer.join()
    monkeypatch.setattr("scripts.client.auth.READ_RETRY_S", 0.2)
    key_file.write_text('{"inference": ')  # and one that stays broken: a clear error, soon
    with pytest.raises(AuthError, match="cannot read the keys"):
        tokens.inference()


def test_an_unreachable_server_is_a_connection_failure(stand_in, tmp_path):
    (tmp_path / "config.properties").write_text("inference_address=http://127.0.0.1:9\nmanagement_address=x\n")
    client = ZooClient.from_config(tmp_path / "config.properties", stand_in.key_file)
    with pytest.raises(ConnectionFailed, match="cannot reach TorchServe at http://127.0.0.1:9"):
        client.predict("m", b"img")


def test_retry_rules():
    died = {"code": 500, "type": "InternalServerException", "message": "Worker died."}
    assert retry_reason(500, json.dumps(died).encode()) == DIED
    assert retry_reason(507, json.dumps(DIED_507).encode()) == DIED
    assert retry_reason(503, json.dumps(NO_WORKER).encode()) == UNAVAILABLE
    assert retry_reason(503, b"") is None and retry_reason(507, b"") is None  # not the frontend's
    assert retry_reason(500, b'{"error": "inference failed", "status": 500}') is None  # the handler's own
    handler_quoting = {"error": "bad", "detail": "Worker died.", "message": "Worker died.", "status": 500}
    assert retry_reason(500, json.dumps(handler_quoting).encode()) is None
    assert not any(retry_reason(status, b"{}") for status in (400, 404, 413, 415))
    too_large = b'{"error": "result too large: ...", "model_name": "m", "outputs": []}'  # a v2 answer's 413
    assert retry_reason(413, too_large) is None  # the request's own fault: sent again, it would fail again
    assert retry_reason_grpc("INTERNAL", "Worker died.\norg.pytorch.serve.http.InternalServerException") == DIED
    assert retry_reason_grpc("INTERNAL", '{"error": "internal error", "detail": "Worker died."}') is None


def test_grpc_bodies_become_answers_with_their_status():
    refused = as_answer(b'{"error": "corrupt image", "detail": "x", "status": 400}', 1)
    assert refused.status == 400 and not refused.ok
    assert as_answer(b'{"predictions": []}', 1).ok
    assert as_answer(b"\xff\xd8\xff\xe0rest", 1).is_image


def cli_run(stand_in, tmp_path, *arguments: str) -> int:
    config = stand_in.key_file.with_name("config.properties")
    return cli.main(["predict", *arguments, "--config", str(config), "--key-file", str(stand_in.key_file)])


def test_cli_writes_a_line_per_file_in_order_and_its_exit_status(stand_in, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("b", "a", "c"):
        (photos / f"{name}.jpg").write_bytes(photo_bytes("chelsea"))
    (photos / "notes.txt").write_text("not an image")
    stand_in.script = [(200, {"predictions": [1]})]
    assert cli_run(stand_in, tmp_path, "m", str(photos), "--concurrency", "2") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(line["file"]).name for line in lines] == ["a.jpg", "b.jpg", "c.jpg"]
    assert all(line["status"] == 200 and line["predictions"] == [1] for line in lines)
    stand_in.script, stand_in.calls = [(200, {"p": 1}), (415, {"error": "unsupported image format", "status": 415})], 0
    assert cli_run(stand_in, tmp_path, "m", str(photos / "a.jpg"), str(photos / "b.jpg"), "--concurrency", "1") == 1
    out = capsys.readouterr()
    assert json.loads(out.out.splitlines()[1])["error"] == "unsupported image format" and "1 of 2" in out.err


def test_cli_exits_2_and_says_why(stand_in, tmp_path, capsys):
    assert cli_run(stand_in, tmp_path, "m", str(tmp_path / "missing.jpg")) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "x.jpg").write_bytes(b"x")
    config = tmp_path / "other.properties"
    config.write_text("inference_address=http://127.0.0.1:9\nmanagement_address=http://127.0.0.1:9\n")
    arguments = ["predict", "m", str(tmp_path / "x.jpg"), "--config", str(config), "--key-file", str(stand_in.key_file)]
    assert cli.main(arguments) == 2
    assert "cannot reach TorchServe" in capsys.readouterr().err
