"""TorchServe's token authorization from the client's side: the inference key from
key_file.json (or given), and its refresh when it has expired.

TorchServe 0.12 writes key_file.json where it starts: {"inference": {"key": ...,
"expiration time": ...}, "management": {...}, "API": {"key": ...}}. An expired key gets
401; `POST <management>/token?type=inference` with the API key makes TorchServe write a
new inference key into the same file (its answer does not carry it), so a refresh needs
that file (same machine, or a shared volume) and the API key.
"""

import json
import os
import threading
import time
from pathlib import Path

import requests

TOKEN_ENV = "TS_ZOO_TOKEN"  # an inference key given through the environment
READ_RETRY_S = 2.0  # how long a key file being rewritten may stay unreadable


class AuthError(Exception):
    """No usable key: the client stops and says what to do."""


class Tokens:
    def __init__(self, key_file: Path | None = None, token: str | None = None):
        self.key_file = key_file
        self.token = token or os.environ.get(TOKEN_ENV) or None
        self._lock = threading.Lock()
        if self.token is None and (key_file is None or not key_file.is_file()):
            where = key_file or "key_file.json"
            raise AuthError(f"no inference key: {where} does not exist; pass --token or set {TOKEN_ENV}")

    def _file(self) -> dict:
        """The key file's keys. TorchServe rewrites the file in place when a key is refreshed
        (by us, another client, or its expiry), so a read can meet it empty or half written:
        read again for up to READ_RETRY_S before giving up."""
        deadline = time.monotonic() + READ_RETRY_S
        while True:
            try:
                return json.loads(self.key_file.read_text())
            except (OSError, ValueError) as err:
                if time.monotonic() >= deadline:
                    raise AuthError(f"cannot read the keys in {self.key_file}: {err}") from err
                time.sleep(0.05)

    def inference(self) -> str:
        """The key to send: the given one, else the key file's current one."""
        if self.token is not None:
            return self.token
        return self._file()["inference"]["key"]

    def management(self) -> str:
        """The key file's management key (a given inference key comes with none)."""
        if self.key_file is None or not self.key_file.is_file():
            raise AuthError("no management key: key_file.json is needed to list the models")
        return self._file()["management"]["key"]

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.inference()}"}

    def refresh(self, management_url: str, rejected: str, kind: str = "inference") -> None:
        """After a 401 with the `kind` ("inference" or "management") key `rejected`: if the
        key file already holds another key (a refresh by someone else, a restarted server),
        use it; else ask TorchServe for a new one with the API key and read it back from the file."""
        current = self.inference if kind == "inference" else self.management
        with self._lock:
            if self.token is not None and kind == "inference":
                raise AuthError("TorchServe refused the given inference key (--token or $" + TOKEN_ENV + ")")
            if current() != rejected:
                return
            api_key = self._file()["API"]["key"]
            answer = requests.post(
                f"{management_url}/token", params={"type": kind},
                headers={"Authorization": f"Bearer {api_key}"}, timeout=30,
            )  # fmt: skip
            if answer.status_code != 200 or current() == rejected:
                raise AuthError(f"the {kind} key was refused and refreshing it failed ({answer.status_code})")
