"""The rating page's HTTP side: a Starlette app served by uvicorn (`kzoo.cli.rate.server` holds
the state behind it, `RateApp`, and the API it answers).

What keeps it safe to leave running:

- a token (`token`): when set, every request must carry it, as `?token=` (the printed URL; the
  answer then sets a cookie, so the page's own requests carry it), the cookie, or an
  `Authorization: Bearer` header; else 401. `kzoo rate` sets one for any `--host` that is not
  a loopback address.
- on a loopback address, a Host header that names it (a DNS-rebinding page names its own
  host); a judgement must be `application/json` (a cross-site form cannot send that without a
  CORS preflight, which is never allowed): else 403.
- a request body of at most `MAX_BODY` bytes (413), read within `BODY_TIMEOUT_S` (408); a body
  that is not UTF-8 JSON, or nests too deeply, is a 400; every error is a JSON
  `{"error": ...}`, the malformed requests uvicorn refuses itself included (`_Protocol`).
- uvicorn's limits (`kzoo.serve.http`, shared with `kzoo serve`): idle keep-alive
  connections closed after `KEEP_ALIVE_S`, a connection that
  sends no complete request head in `HEAD_TIMEOUT_S` closed, at most `MAX_CONNECTIONS`
  connections (503 past that), a listen backlog of `BACKLOG`.
- `X-Frame-Options: DENY` and a Content-Security-Policy with `frame-ancestors 'none'`: no other
  site can frame the page.

Example:
```python
server = RateServer("127.0.0.1", 0, app)   # bound now: a port in use is a ValueError
server.serve_forever()                      # until Ctrl-C, or server.shutdown() from a thread
```
"""

from __future__ import annotations

import secrets
import sys
from importlib import resources
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kzoo.cli.rate.sources import JudgementError
from kzoo.serve import http
from kzoo.serve.http import BACKLOG, KEEP_ALIVE_S, MAX_CONNECTIONS, is_loopback  # noqa: F401

MAX_BODY = 1 << 20  # a correction is text a person typed: 1 MiB is far more than one needs
BODY_TIMEOUT_S = 30.0
HEAD_TIMEOUT_S = 30.0
STATIC = {"/": ("page.html", "text/html"), "/rate.js": ("rate.js", "text/javascript"),
          "/rate.css": ("rate.css", "text/css")}
HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page's URL may hold the token
    "Cache-Control": "no-store",
}
_Refused = http.Refused  # the shared server pieces live in kzoo.serve.http


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_json(request: Request) -> dict:
    """The body as a JSON object within `MAX_BODY` and `BODY_TIMEOUT_S` (read at call time,
    so tests can lower them); `_Refused` 413 / 408 / 400 otherwise."""
    return await http.read_json(request, MAX_BODY, BODY_TIMEOUT_S)


def build_app(rate_app, host: str, port: int, token: str | None = None) -> Starlette:
    """The Starlette app serving `rate_app` (a `RateApp`) bound at `host`:`port`.

    Args:
        rate_app: RateApp or a zero-argument callable returning it (set after binding).
        host: str. the address bound (on a loopback one the Host header is checked).
        port: int. the port bound (the Host header names it; the cookie is named after it).
        token: str or None. required on every request when set.
    """
    app_of = rate_app if callable(rate_app) else (lambda: rate_app)
    cookie = f"kzoo-rate-token-{port}"  # one per port: cookies do not tell ports apart
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}

    async def page(request: Request) -> Response:
        name, content_type = STATIC[request.url.path]
        body = resources.files("kzoo.cli.rate").joinpath(name).read_bytes()
        response = Response(body, media_type=content_type + "; charset=utf-8")
        if token and request.query_params.get("token") == token:
            response.set_cookie(cookie, token, httponly=True, samesite="strict")
        return response

    async def next_unit(request: Request) -> Response:
        query = {k: v[-1] for k, v in parse_qs(request.url.query).items()}
        payload = await run_in_threadpool(app_of().next_payload, query.get("client", ""),
                                          query.get("mode", "pairs"))
        return JSONResponse(payload)

    async def judge(request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise _Refused(403, "not from this page (a judgement is application/json)")
        body = await _read_json(request)
        return JSONResponse(await run_in_threadpool(app_of().judge, body))

    def guarded(endpoint):
        """`endpoint` behind the host and token checks, its refusals as JSON errors."""
        async def handle(request: Request) -> Response:
            try:
                if is_loopback(host) and request.headers.get("host") not in hosts:
                    raise _Refused(403, "not from this page (Host names another site)")
                if token and not _has_token(request, token, cookie):
                    raise _Refused(401, "this kzoo rate needs its token: open the URL it "
                                   "printed (.../?token=...)")
                return await endpoint(request)
            except _Refused as refused:
                return _error(refused.status, str(refused))
            except JudgementError as error:
                return _error(400, str(error))
            except Exception as error:  # noqa: BLE001  a bug: one line here, JSON there
                print(f"kzoo rate: {request.method} {request.url.path}: "
                      f"{type(error).__name__}: {error}", file=sys.stderr)
                return _error(500, f"internal error ({type(error).__name__})")
        return handle

    async def http_error(request: Request, error: HTTPException) -> Response:
        message = {404: f"no such path {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}
        return _error(error.status_code, message.get(error.status_code, str(error.detail)))

    routes = [Route(path, guarded(page), methods=["GET"]) for path in STATIC]
    routes += [Route("/api/next", guarded(next_unit), methods=["GET"]),
               Route("/api/judge", guarded(judge), methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return http.with_headers(app, HEADERS)


def _has_token(request: Request, token: str, cookie: str) -> bool:
    auth = request.headers.get("authorization", "")
    given = [request.query_params.get("token"), request.cookies.get(cookie),
             auth[7:] if auth.lower().startswith("bearer ") else None]
    return any(g is not None and secrets.compare_digest(g.encode(), token.encode())
               for g in given)


class _Protocol(http.JSONErrorProtocol):
    """The shared protocol (`kzoo.serve.http.JSONErrorProtocol`) with the page's error body,
    headers and head timeout (`HEAD_TIMEOUT_S`, read at each connection)."""

    def head_timeout_s(self) -> float:
        return HEAD_TIMEOUT_S

    def extra_headers(self) -> dict:
        return HEADERS


class RateServer:
    """A bound socket and the uvicorn server that will serve the page on it.

    Bound at once (before the store is opened, so a port in use leaves no file behind);
    `serve_forever` runs uvicorn until Ctrl-C or `shutdown()`.

    Args:
        host: str. the address to bind.
        port: int. the port (0: any free one).
        app: RateApp or None. set later with `kzoo.cli.rate.server.attach`.
        token: str or None. required on every request when set.

    Raises:
        ValueError: one line when the port is in use, out of range, or the host cannot be bound.
    """

    def __init__(self, host: str, port: int, app=None, token: str | None = None):
        self.app, self.token = app, token
        self.socket = http.bind(host, port, what="kzoo rate")
        self.server_address = self.socket.getsockname()[:2]
        asgi = build_app(lambda: self.app, self.server_address[0], self.server_address[1],
                         self.token)
        self._server = http.UvicornServer(self.socket, asgi, _Protocol)

    def serve_forever(self) -> None:
        """Serve until `shutdown()` (from another thread) or Ctrl-C (KeyboardInterrupt)."""
        self._server.serve_forever()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Make `serve_forever` (running in another thread) return, and wait until it has
        (it finishes the requests under way first, 2 s at most)."""
        self._server.shutdown(timeout)

    def server_close(self) -> None:
        self.socket.close()
