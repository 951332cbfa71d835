"""The HTTP pieces `kzoo serve` and `kzoo rate` share: Starlette on uvicorn, made safe to leave
running. Imports no TensorFlow (`kzoo rate --candidates` needs none).

- `read_json`: a request body as a JSON object within a size and a time limit; `Refused`
  (status, message) for what is wrong with it (413, 408, 400).
- `is_loopback`: whether an address is only reachable from this machine.
- `with_headers`: every answer of an ASGI app gets extra headers (404s and 401s included).
- `JSONErrorProtocol`: uvicorn's HTTP/1.1 protocol, answering the malformed requests uvicorn
  refuses itself (bad Content-Length, broken head) with a JSON body like the app's, and closing
  a connection that sends no complete request head within `head_timeout_s()`.
- `bind` and `UvicornServer`: a listening socket (a port in use is one ValueError line) and the
  uvicorn server on it, with keep-alive, connection-count and backlog limits.

Example:
```python
from starlette.applications import Starlette
from kzoo.serve.http import UvicornServer, bind
server = UvicornServer(bind("127.0.0.1", 0), Starlette())
server.serve_forever()   # until Ctrl-C / SIGTERM, or server.shutdown() from another thread
```
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 30.0
KEEP_ALIVE_S = 5
MAX_CONNECTIONS = 256
BACKLOG = 512  # the kernel caps it at net.core.somaxconn (4096 on current Linux)


class Refused(Exception):
    """A request answered with HTTP `status` and `message` (the app words the body).

    Args:
        status: int. the HTTP status.
        message: str. one line for the client.
        param: str or None. the request field at fault (OpenAI's error `param`).
        code: str or None. a machine-readable reason (OpenAI's error `code`).
        headers: dict or None. extra answer headers (e.g. Retry-After).
    """

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def read_json(request, max_body: int, timeout_s: float) -> dict:
    """The body of a Starlette `request` as a JSON object, read within the limits.

    Args:
        request: starlette.requests.Request.
        max_body: int. the most bytes accepted.
        timeout_s: float. seconds the whole body may take to arrive.

    Raises:
        Refused: 413 too large, 408 too slow, 400 not a UTF-8 JSON object.
    """
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():  # uvicorn refuses these first; others may not
        raise Refused(400, f"Content-Length {length!r}: not a number of bytes")
    if length is not None and int(length) > max_body:
        raise Refused(413, f"the body is {int(length)} bytes; at most {max_body} are accepted")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:  # a chunked body has no Content-Length to check first
                raise Refused(413, f"the body is over {max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        data = await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        raise Refused(408, f"the body did not arrive within {timeout_s:g} s") from None
    try:
        body = json.loads(data.decode("utf-8")) if data.strip() else {}
    except UnicodeDecodeError:
        raise Refused(400, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise Refused(400, f"the body is not JSON ({error.msg} at character {error.pos})") \
            from None
    except RecursionError:
        raise Refused(400, "the body nests too deeply") from None
    if not isinstance(body, dict):
        raise Refused(400, "the request body must be a JSON object")
    return body


def with_headers(app, headers: dict):
    """`app` (ASGI) with `headers` added to every HTTP answer."""
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await app(scope, receive, send_with_headers)
    return asgi


class JSONErrorProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with two changes: a request uvicorn refuses itself is
    answered with `error_body(message)` as JSON (plus `extra_headers()`), and a connection that
    sends no complete request head within `head_timeout_s()` is closed (uvicorn times out only
    idle keep-alive connections: half-sent heads would be held forever). Subclasses override
    the three methods."""

    def head_timeout_s(self) -> float:
        return HEAD_TIMEOUT_S

    def error_body(self, message: str) -> dict:
        return {"error": message}

    def extra_headers(self) -> dict:
        return {}

    def connection_made(self, transport):
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.head_timeout_s(), self._head_too_slow)

    def _head_too_slow(self):
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc):
        self._head_timer.cancel()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        import h11

        body = json.dumps(self.error_body(f"malformed HTTP request ({msg.rstrip('.')})"))
        body = body.encode()
        headers = [(b"content-type", b"application/json; charset=utf-8"),
                   (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
                   *((k.lower().encode(), v.encode()) for k, v in self.extra_headers().items())]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def bind(host: str, port: int, what: str = "kzoo") -> socket.socket:
    """A listening TCP socket at `host`:`port` (0: any free port), with a `BACKLOG` queue.

    Raises:
        ValueError: one line when the port is in use, out of range, or the host cannot be bound.
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except (OSError, OverflowError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({reason}); is "
                         f"another {what} running? pick another --port") from None


class UvicornServer:
    """uvicorn serving `app` on an already bound `sock`.

    Args:
        sock: socket.socket. from `bind`.
        app: ASGI app.
        protocol: type. the HTTP protocol class (`JSONErrorProtocol` or a subclass).
        graceful_s: float. how long a shutdown waits for requests under way.
        max_connections: int. connections served at once (503 past that).
    """

    def __init__(self, sock, app, protocol=JSONErrorProtocol, graceful_s: float = 2.0,
                 max_connections: int = MAX_CONNECTIONS):
        import uvicorn

        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        config = uvicorn.Config(app, http=protocol, lifespan="off", log_config=None,
                                log_level="error", access_log=False, server_header=False,
                                timeout_keep_alive=KEEP_ALIVE_S, backlog=BACKLOG,
                                limit_concurrency=max_connections,
                                timeout_graceful_shutdown=graceful_s)
        self._server = uvicorn.Server(config)  # made now: a shutdown() before serving is kept
        self._serving, self._stopped = False, threading.Event()

    def serve_forever(self) -> None:
        """Serve until `shutdown()` (from another thread), Ctrl-C or SIGTERM (main thread)."""
        self._serving = True
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Make `serve_forever` (running in another thread) return, and wait until it has."""
        self._server.should_exit = True
        if self._serving:
            self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()
