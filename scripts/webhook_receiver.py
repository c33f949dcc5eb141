"""A webhook receiver for trying the service out: verifies each delivery and prints it.

    python scripts/webhook_receiver.py --secret whsec_... [--port 8088]

Register ``http://127.0.0.1:8088/hooks`` as an endpoint (``make run`` lets
the worker send to this machine over http) and pass the secret the
registration answered. Each delivery is verified with the ``standardwebhooks``
package, as a receiver in production would, and printed with its webhook-id;
one that does not verify is answered 400.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


def handler_for(secret: str) -> type[BaseHTTPRequestHandler]:
    webhook = Webhook(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                payload = webhook.verify(body, headers)
            except WebhookVerificationError as error:
                print(f"REFUSED {headers.get('webhook-id')}: {error}", flush=True)
                self.send_response(400)
            else:
                print(f"verified {headers['webhook-id']} {payload['type']}: {json.dumps(payload['data'])}", flush=True)
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret", required=True, help="the endpoint's whsec_ secret")
    parser.add_argument("--port", type=int, default=8088)
    arguments = parser.parse_args()
    print(f"Receiving webhooks on http://127.0.0.1:{arguments.port}/hooks (Ctrl-C to stop)", flush=True)
    HTTPServer(("127.0.0.1", arguments.port), handler_for(arguments.secret)).serve_forever()


if __name__ == "__main__":
    main()
