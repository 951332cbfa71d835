"""Serve a built site on 127.0.0.1, on a free port printed first on stdout.

    python serve_site.py SITE_DIR REQUEST_LOG

Every request is appended to `REQUEST_LOG` as a JSON line `[path, status]`. The browser test
runs this in its own process, so serving never waits on the test process's interpreter.
"""

import functools
import json
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Handler(SimpleHTTPRequestHandler):
    log_file = ""
    lock = threading.Lock()

    def log_request(self, code="-", size="-"):
        status = int(code) if str(code).isdigit() else 0
        with self.lock, open(self.log_file, "a", encoding="utf-8") as f:
            f.write(json.dumps([self.path, status]) + "\n")

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the browser drops connections it no longer needs


def main(site: str, log_file: str) -> None:
    Handler.log_file = log_file
    httpd = Server(("127.0.0.1", 0), functools.partial(Handler, directory=site))
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:3])
