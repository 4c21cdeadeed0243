"""The zoo's models over TorchServe's REST inference API: one image per call, the
per-request parameters as form fields (TorchServe drops query strings on /predictions),
the token from key_file.json refreshed when it expires, and "Worker died." / "no worker"
answers retried with backoff. Thread-safe: one HTTP session per thread."""

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from scripts.client.auth import AuthError, Tokens
from scripts.ts_api import key_refused, read_properties

# TorchServe's answers while a worker is (re)starting or died under the request: worth a retry.
RETRY_STATUSES = (503, 507)
WORKER_DIED = "Worker died."  # its message, with 500 or 507 depending on where it noticed


class ConnectionFailed(Exception):
    """The server cannot be reached: the client stops and says where it tried."""


@dataclass(frozen=True)
class Answer:
    """One image's answer: HTTP status, body and its content type."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/")

    def json(self):
        return json.loads(self.body)

    def error(self) -> str:
        """What went wrong, for a message: the handler's JSON error, TorchServe's message, or the body."""
        try:
            document = self.json()
            return f"{document.get('error') or document.get('message')}: {document.get('detail', '')}".rstrip(": ")
        except (ValueError, AttributeError):
            return self.body[:200].decode("utf-8", "replace")


def wait_before_retry(attempt: int, backoff: float) -> None:
    """backoff, 2 x backoff, 4 x backoff, ... seconds before retry `attempt` (1, 2, ...), at most 8 s."""
    time.sleep(min(backoff * 2 ** (attempt - 1), 8.0))


def retryable(status: int, body: bytes) -> bool:
    """A worker that died or is not there yet (never a 4xx, never the handler's own 500)."""
    if status in RETRY_STATUSES:
        return True
    if status == 500:
        try:
            return json.loads(body).get("message") == WORKER_DIED
        except (ValueError, AttributeError):
            return False
    return False


class ZooClient:
    def __init__(
        self,
        inference_url: str,
        management_url: str,
        tokens: Tokens,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: float = 120,
    ):
        self.inference_url, self.management_url = inference_url.rstrip("/"), management_url.rstrip("/")
        self.tokens = tokens
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self._local = threading.local()

    @classmethod
    def from_config(cls, config: Path, key_file: Path | None = None, token: str | None = None, **options):
        """A client of the TorchServe that `config` (a config.properties) describes."""
        properties = read_properties(config)
        tokens = Tokens(key_file, token)
        return cls(properties["inference_address"], properties["management_address"], tokens, **options)

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _send(self, model: str, data: bytes, params: dict[str, str], filename: str) -> requests.Response:
        url = f"{self.inference_url}/predictions/{model}"
        headers = self.tokens.header()
        try:
            if params:  # a multipart form: the handler refuses a parameter it does not take
                files = {"data": (filename, data, "application/octet-stream")}
                return self._session().post(url, files=files, data=params, headers=headers, timeout=self.timeout)
            headers["Content-Type"] = "application/octet-stream"  # never parsed as a form by TorchServe
            return self._session().put(url, data=data, headers=headers, timeout=self.timeout)
        except requests.ConnectionError as err:
            raise ConnectionFailed(f"cannot reach TorchServe at {self.inference_url}: {err}") from err

    def predict(self, model: str, data: bytes, params: dict[str, str] | None = None, filename: str = "image") -> Answer:
        """One image -> its answer, after at most `retries` retries of a dead worker's answers
        (0.5, 1, 2, 4, ... s apart) and one key refresh on a 401."""
        refreshed = False
        attempt = 0
        while True:
            key = self.tokens.inference()
            response = self._send(model, data, params or {}, filename)
            if key_refused(response.status_code, response.text):
                if refreshed:
                    raise AuthError(f"TorchServe refused the inference key: {response.text.strip()[:200]}")
                self.tokens.refresh(self.management_url, key)
                refreshed = True
                continue
            attempt += 1
            if retryable(response.status_code, response.content) and attempt <= self.retries:
                wait_before_retry(attempt, self.backoff)
                continue
            content_type = response.headers.get("Content-Type", "application/json").split(";")[0]
            return Answer(response.status_code, response.content, content_type, dict(response.headers), attempt)
