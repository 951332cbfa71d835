"""Helpers of the `kzoo serve` tests: a server on 127.0.0.1 in a thread, one raw POST."""

import http.client
import json
import threading


class Served:
    """A running server: `url`, `port`, its `engine`, and `stop()`."""

    def __init__(self, engine, tokenizer, **settings):
        from kzoo.serve import app as app_lib
        from kzoo.serve import http as http_lib
        from kzoo.serve.cli import chat_renderer

        sock = http_lib.bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.engine = engine
        self.settings = app_lib.Settings(model_name="gpt-nano", port=self.port, **settings)
        asgi = app_lib.build_app(engine, tokenizer, chat_renderer(tokenizer), self.settings)
        self.server = http_lib.UvicornServer(sock, asgi, app_lib.Protocol)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def post(port, path, body, headers=None, raw=None):
    """(status, headers dict, parsed JSON or text) of one POST on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json",
                                                   **(headers or {})})
    response = conn.getresponse()
    text = response.read().decode("utf-8")
    conn.close()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = text
    return response.status, dict(response.getheaders()), parsed
