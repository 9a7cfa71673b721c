"""A real HTTP proxy on 127.0.0.1 in front of moto that throttles chosen SSM calls.

Test-only. Every request is forwarded to moto unchanged, except a SendCommand whose script
runs a chosen step of a chosen pattern: that one is answered HTTP 400 with the JSON body
AWS sends when SSM throttles (`{"__type": "ThrottlingException", ...}`), so botocore's own
retry path (standard mode, backoff, retry quota) runs for real in the control process.
"""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from fake_ssm_agent import command_target

HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


@dataclass
class Throttle:
    """Answer ThrottlingException to SendCommand for (pattern, step), `times` times (None: always)."""

    pattern: str
    step: str
    times: int | None = None
    answered: int = 0


@dataclass
class SsmFaultProxy:
    upstream: str
    throttles: list[Throttle] = field(default_factory=list)

    def __enter__(self) -> SsmFaultProxy:
        proxy = self
        up = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rule = proxy._throttle_for(self.headers.get("X-Amz-Target", ""), body)
                if rule is not None:
                    data = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("x-amzn-RequestId", "throttled-by-test-proxy")
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._forward("POST", body)

            def do_GET(self) -> None:  # noqa: N802
                self._forward("GET", b"")

            def _forward(self, method: str, body: bytes) -> None:
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    headers["Host"] = up.netloc
                    conn.request(method, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def _throttle_for(self, target: str, body: bytes) -> Throttle | None:
        if target != "AmazonSSM.SendCommand":
            return None
        try:
            script = json.loads(body)["Parameters"]["commands"][0]
            step, pattern, _node = command_target(script)
        except (ValueError, KeyError, IndexError):
            return None
        with self.lock:
            for rule in self.throttles:
                if (rule.pattern, rule.step) == (pattern, step) and (rule.times is None or rule.answered < rule.times):
                    rule.answered += 1
                    return rule
        return None
