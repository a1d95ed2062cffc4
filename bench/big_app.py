"""An app answering every request with ``--size`` bytes (a keep-alive HTTP/1.1 server,
a thread per connection): the maximum-size answers of bench/memory_budget.py.

    python bench/big_app.py --port 8080 --size 16777216
"""

from __future__ import annotations

import argparse
import hashlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args()
    block = hashlib.sha256(b"hqm").digest()
    body = (block * (args.size // len(block) + 1))[: args.size]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            small = self.path.startswith("/small")
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "1" if small else str(len(body)))
            self.end_headers()
            self.wfile.write(b"s" if small else body)

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 256
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
