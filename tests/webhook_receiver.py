"""A local HTTP server that receives rollout webhooks and can be told to fail (issue 16 item 4 tests).

Each path is one webhook (``/load-test``, ``/notify``, ...). ``fail(path, times)`` makes the next ``times`` calls
to it answer 500 (``times=None``: every call), ``hang(path, seconds)`` makes them answer only after a delay;
``calls`` records every JSON body received, per path.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    def __init__(self) -> None:
        self.calls: dict[str, list[dict]] = defaultdict(list)
        self._fail: dict[str, int | None] = {}
        self._hang: dict[str, float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                receiver.calls[self.path].append(body)
                if self.path in receiver._hang:
                    time.sleep(receiver._hang[self.path])
                status = 200
                if self.path in receiver._fail:
                    left = receiver._fail[self.path]
                    status = 500
                    if left is not None:
                        receiver._fail[self.path] = left - 1
                        if left - 1 <= 0:
                            del receiver._fail[self.path]
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def fail(self, path: str, times: int | None = None) -> None:
        self._fail[path] = times

    def hang(self, path: str, seconds: float) -> None:
        self._hang[path] = seconds

    def heal(self) -> None:
        self._fail.clear()
        self._hang.clear()

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
