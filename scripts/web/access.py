"""Who may use the page's server: the page itself, and programs on this machine -- never
another website through its visitor's browser.

The server holds TorchServe's keys, so whatever reaches its API runs with them. A
browser lets any website send requests to http://127.0.0.1:8090: a form or a "simple"
fetch (text/plain, no preflight) from another origin, or -- by DNS rebinding -- a name
the attacker controls that now resolves to 127.0.0.1, which makes the attacker's page
same-origin with whatever answers there. So every request must say it is for this server
and from this page:

- `Host` must name this server: a loopback name and its port (DNS rebinding sends the
  attacker's name);
- an API call a browser sends cross-origin says so, in `Origin` (a form post or a fetch
  from another origin) or `Sec-Fetch-Site` (anything but `same-origin`, or `none` for an
  address typed by the user): refused;
- a call that changes state (a prediction, a video job, a cancellation) carries the
  page's token in `X-Zoo-Token`: a header no cross-origin request can carry without a
  preflight, which is never granted (no CORS headers, ever), and a value only the page
  itself (served with it, readable by this origin only) knows.

Programs on this machine (curl, the tests) send neither `Origin` nor `Sec-Fetch-*`: like
the client, they may read key_file.json anyway. Every answer also forbids framing, MIME
sniffing, cross-origin embedding and anything the page does not load from itself (CSP).
"""

import secrets
from collections.abc import Iterable, Mapping

from starlette.responses import JSONResponse

TOKEN_HEADER = "x-zoo-token"
# The headers `refusal` reads: given twice, the request is refused rather than one picked.
CHECKED_HEADERS = frozenset({"host", "origin", "sec-fetch-site", "sec-fetch-dest", TOKEN_HEADER})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SAFE_METHODS = ("GET", "HEAD")
# Where a request comes from, in a browser's own words (Fetch Metadata): these only.
SAME_ORIGIN_SITES = ("same-origin", "none")
SECURITY_HEADERS = (
    ("content-security-policy", "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
     "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("cross-origin-resource-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    ("referrer-policy", "no-referrer"),
)  # fmt: skip


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The `Host` values that name a server listening on loopback address `host`:`port`."""
    bracketed = f"[{host}]" if ":" in host else host
    names = {bracketed, *LOOPBACK_NAMES} if host != "::1" else {"[::1]", "localhost"}
    return frozenset({f"{name}:{port}" for name in names} | (names if port == 80 else set()))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def refusal(method: str, path: str, headers: Mapping[str, str], hosts: Iterable[str], token: str) -> str | None:
    """Why a request must be refused (see the module's docstring), or None. `headers`:
    lower-case names."""
    host = headers.get("host", "")
    if host not in hosts:
        return f"this server answers requests for {sorted(hosts)[0]} only"
    origin = headers.get("origin")
    site = headers.get("sec-fetch-site")
    if path.startswith("/api/"):
        if origin is not None and origin != f"http://{host}":
            return "a request from another origin"
        if site is not None and site not in SAME_ORIGIN_SITES:
            return f"a request from another site ({site[:20]})"
        if method not in SAFE_METHODS and site == "none":
            return "a request from another site (none)"
    elif method not in SAFE_METHODS:
        return "only GET here"
    elif site is not None and site not in SAME_ORIGIN_SITES and headers.get("sec-fetch-dest") != "document":
        return "the page's files are for the page itself"  # embedded elsewhere: no; opened by a link: yes
    if method not in SAFE_METHODS and not secrets.compare_digest(
        headers.get(TOKEN_HEADER, "").encode(), token.encode()
    ):
        return "this call needs the page's token (X-Zoo-Token); use the page"
    return None


class SameOriginOnly:
    """ASGI middleware: `refusal`'s 403, else the app's answer, each with SECURITY_HEADERS."""

    def __init__(self, app, hosts: Iterable[str], token: str):
        self.app, self.hosts, self.token = app, frozenset(hosts), token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def secured(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n.encode(), v.encode()) for n, v in SECURITY_HEADERS if n.encode() not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        headers = {}
        for name, value in scope["headers"]:
            name = name.decode("latin-1").lower()
            if name in headers and name in CHECKED_HEADERS:
                return await forbidden("a repeated header")(scope, receive, secured)
            headers[name] = value.decode("latin-1")
        reason = refusal(scope["method"], scope["path"], headers, self.hosts, self.token)
        if reason is not None:
            return await forbidden(reason)(scope, receive, secured)
        await self.app(scope, receive, secured)


def forbidden(reason: str) -> JSONResponse:
    return JSONResponse({"error": "forbidden", "detail": reason, "status": 403}, status_code=403)
