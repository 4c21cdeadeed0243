"""scripts/web/access.py: which requests the page's server answers. The page itself and
programs on this machine: yes; another website through its visitor's browser (a form, a
simple fetch, DNS rebinding, an embedding): never."""

import pytest

from scripts.web.access import allowed_hosts, refusal

PORT = 8090
HOSTS = allowed_hosts("127.0.0.1", PORT)
TOKEN = "page-token"
PAGE = {"host": "127.0.0.1:8090"}
SAME_ORIGIN = {**PAGE, "origin": "http://127.0.0.1:8090", "sec-fetch-site": "same-origin"}


def check(method: str, path: str, headers: dict) -> str | None:
    return refusal(method, path, headers, HOSTS, TOKEN)


def test_the_hosts_are_the_loopback_names_with_the_port():
    assert HOSTS == {"127.0.0.1:8090", "localhost:8090", "[::1]:8090"}
    assert allowed_hosts("::1", 80) == {"[::1]:80", "localhost:80", "[::1]", "localhost"}


def test_the_page_and_local_programs_are_answered():
    assert check("GET", "/", PAGE) is None
    assert check("GET", "/api/models", {"host": "localhost:8090"}) is None  # curl
    assert check("GET", "/api/models", {**SAME_ORIGIN}) is None
    assert check("GET", "/api/models", {**PAGE, "sec-fetch-site": "none"}) is None  # typed into the address bar
    assert check("POST", "/api/predictions/m", {**SAME_ORIGIN, "x-zoo-token": TOKEN}) is None
    assert check("DELETE", "/api/videos/k", {**SAME_ORIGIN, "x-zoo-token": TOKEN}) is None
    assert check("POST", "/api/videos", {**PAGE, "x-zoo-token": TOKEN}) is None  # a local program with the token
    link = {**PAGE, "sec-fetch-site": "cross-site", "sec-fetch-dest": "document", "sec-fetch-mode": "navigate"}
    assert check("GET", "/", link) is None  # a link to the page, opened


@pytest.mark.parametrize(
    "host", ["evil.example:8090", "127.0.0.1:8091", "127.0.0.1", "", "127.0.0.1:8090.evil.example"]
)
def test_dns_rebinding_and_other_names_are_refused(host):
    for method, path in (("GET", "/"), ("GET", "/api/models"), ("GET", "/static/app.js")):
        assert "answers requests for" in check(method, path, {"host": host})


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "http://127.0.0.1:9000"},  # another port: another origin (the same site)
        {"origin": "null"},  # a sandboxed frame, a file://
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
    ],
)
def test_api_calls_from_another_origin_are_refused_even_with_the_token(headers):
    for method in ("GET", "POST", "DELETE"):
        assert check(method, "/api/predictions/m", {**PAGE, **headers, "x-zoo-token": TOKEN}) is not None


def test_calls_that_change_something_need_the_token():
    for headers in (SAME_ORIGIN, PAGE):
        assert "needs the page's token" in check("POST", "/api/predictions/m", headers)
        assert "needs the page's token" in check("POST", "/api/videos", {**headers, "x-zoo-token": "guess"})
        assert "needs the page's token" in check("DELETE", "/api/videos/k", {**headers, "x-zoo-token": ""})
    # a simple cross-site form post: text/plain, no custom header, an Origin
    form = {**PAGE, "origin": "http://evil.example", "sec-fetch-site": "cross-site", "content-type": "text/plain"}
    assert check("POST", "/api/videos", form) is not None


def test_the_page_s_files_are_not_embedded_elsewhere():
    embedded = {**PAGE, "sec-fetch-site": "cross-site", "sec-fetch-dest": "script"}
    assert check("GET", "/static/app.js", embedded) is not None
    assert check("GET", "/", {**PAGE, "sec-fetch-site": "cross-site", "sec-fetch-dest": "iframe"}) is not None
    assert check("POST", "/", {**PAGE, "x-zoo-token": TOKEN}) == "only GET here"
