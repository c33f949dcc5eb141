"""A webhook receiver on loopback, for the benchmark and the fault run: the HTTP part, without the judging.

Each POST's body and headers (names in lower case, as Standard Webhooks'
verifier reads them) go to ``answer``, which returns the status to send; the
answer has no body. A body cut off before its ``Content-Length`` (the sender
killed half-way) is no request, and is not answered. Threaded, and HTTP/1.1 so that connections stay open as
the worker's client keeps them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackReceiver:
    def __init__(self, answer: Callable[[bytes, dict[str, str]], int]) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender went away half-way (a worker killed): no request to answer
                    self.close_connection = True
                    return
                self.send_response(answer(body, {name.lower(): value for name, value in self.headers.items()}))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    def start(self) -> LoopbackReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
