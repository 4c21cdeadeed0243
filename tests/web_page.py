"""The page's server (scripts/web/app.py) for a test's TorchServe, started and stopped as
`make serve` and `make stop` do; its token as the page carries it."""

import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from scripts.serve.server import free_ports
from scripts.zoo import REPO


@dataclass(frozen=True)
class Page:
    url: str
    port: int
    pid: int  # the server's process

    def token(self) -> str:
        return page_token(self.url)


def page_token(url: str) -> str:
    """The token the page at `url` carries for its own calls that change something."""
    html = requests.get(f"{url}/", timeout=30).text
    return re.search(r'<meta name="zoo-token" content="([^"]+)">', html).group(1)


@contextmanager
def web_page(torchserve, *options: str):
    """The page's server for `torchserve`, with its keys -> a Page."""
    (port,) = free_ports(1)
    with tempfile.TemporaryDirectory() as logs:
        arguments = ["--port", str(port), "--logs", logs, "--config", str(torchserve.workdir / "config.properties"),
                     "--key-file", str(torchserve.workdir / "key_file.json"), *options]  # fmt: skip
        web = [sys.executable, "-m", "scripts.web.app"]
        subprocess.run([*web, "start", *arguments], cwd=REPO, check=True, capture_output=True, timeout=120)
        try:
            yield Page(f"http://127.0.0.1:{port}", port, int((Path(logs) / "web.pid").read_text()))
        finally:
            subprocess.run([*web, "stop", *arguments], cwd=REPO, check=True, timeout=60)
