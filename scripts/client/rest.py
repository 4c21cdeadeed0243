"""The zoo's models over TorchServe's REST inference API: one image per call, the
per-request parameters as form fields (TorchServe drops query strings on /predictions),
the token from key_file.json refreshed when it expires (only when TorchServe's frontend
itself refused it: scripts/ts_api.py), "no worker" answers retried with backoff, and a
"Worker died." answer retried once: a second one says that this request is likely what
kills workers, and sending it again would kill the next. Thread-safe: one HTTP session
per thread."""

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from scripts.client.auth import AuthError, Tokens
from scripts.ts_api import frontend_error, key_refused, read_properties, worker_died

DIED, UNAVAILABLE = "worker died", "no worker"  # the frontend's answers worth sending again


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


def retry_reason(status: int, body: bytes) -> str | None:
    """DIED: the frontend's "Worker died." (the batch's worker died under it); UNAVAILABLE:
    its 503 (no worker yet, or a full queue); None for everything else -- a handler's answer
    whatever it says, a 4xx."""
    if worker_died(status, body):
        return DIED
    if status == 503 and frontend_error(status, body) is not None:
        return UNAVAILABLE
    return None


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
        """One image -> its answer, after at most `retries` retries (0.5, 1, 2, 4, ... s apart)
        of which at most one after "Worker died.", and one key refresh on TorchServe's refusal."""
        refreshed = False
        attempt = died = 0
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
            reason = retry_reason(response.status_code, response.content)
            died += reason == DIED
            if reason is not None and attempt <= self.retries and died <= 1:
                wait_before_retry(attempt, self.backoff)
                continue
            content_type = response.headers.get("Content-Type", "application/json").split(";")[0]
            return Answer(response.status_code, response.content, content_type, dict(response.headers), attempt)
