"""HTTP/1.1 edge behaviour of the proxy's own server (scripts/proxy/http_server.py).

The proxy runs as a real subprocess in front of fake P and D servers (the fakes and the
process wrapper of test_disagg_proxy.py), and the tests talk to it over raw sockets: chunked
request bodies, ``Expect: 100-continue``, keep-alive, pipelining and framing are exactly what
an HTTP client library would hide. Every read has a deadline (socket timeouts of a few
seconds). The one sleep (the slow-client test) only gives a broken proxy time to show itself:
a working one passes however long it lasts.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from test_disagg_proxy import BIG_EVENTS, BIG_PAD, FakeBackend, FakeCluster, ProxyProcess, completion_body, one

TIMEOUT = 5.0


# --------------------------------------------------------------------------- raw HTTP client


@dataclass
class HttpResponse:
    version: str
    status: int
    headers: list[tuple[str, str]]  # as sent, in order
    body: bytes  # decoded from the chunked framing when it was chunked
    chunks: list[bytes] | None = None  # the chunks of a chunked body, None otherwise

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"header {name} sent {len(values)} times: {self.headers}"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class Wire:
    """One client connection to the proxy; reads responses from a buffer kept across calls
    (pipelined responses may arrive in one segment)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False at EOF."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no complete response before the deadline; have {bytes(self.buf)[:500]!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no complete response before the deadline; have {bytes(self.buf)[:500]!r}") from None
        self.buf += data
        return bool(data)

    def _line(self, deadline: float) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if not self._fill(deadline):
                raise AssertionError(f"connection closed mid-response; have {bytes(self.buf)[:500]!r}")
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def _exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise AssertionError(f"connection closed with {len(self.buf)} of {n} body bytes")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def response(self, timeout: float = TIMEOUT, head_only: bool = False) -> HttpResponse:
        """The next full response (an interim 1xx one too): status line, headers, body
        (none with ``head_only``: the answer to a HEAD request)."""
        deadline = time.monotonic() + timeout
        version, status, _reason = self._line(deadline).decode("latin-1").split(" ", 2)
        headers = []
        while line := self._line(deadline):
            name, sep, value = line.decode("latin-1").partition(":")
            assert sep, f"bad header line {line!r}"
            headers.append((name, value.strip()))
        resp = HttpResponse(version, int(status), headers, b"")
        if 100 <= resp.status < 200 or resp.status in (204, 304) or head_only:
            return resp
        if "chunked" in (resp.header("Transfer-Encoding") or "").lower():
            resp.chunks = []
            while True:
                size = int(self._line(deadline).split(b";")[0], 16)
                if size == 0:
                    while self._line(deadline):  # trailers, up to the empty line
                        pass
                    break
                resp.chunks.append(self._exact(size, deadline))
                assert self._exact(2, deadline) == b"\r\n", "chunk data not followed by CRLF"
            resp.body = b"".join(resp.chunks)
        elif (length := resp.header("Content-Length")) is not None:
            resp.body = self._exact(int(length), deadline)
        else:  # delimited by the close
            while self._fill(deadline):
                pass
            resp.body, self.buf = bytes(self.buf), bytearray()
        return resp

    def closed_by_peer(self, timeout: float = TIMEOUT) -> bool:
        """True if the proxy closes the connection (recv returns b"") with nothing more sent;
        False if it is still open at the deadline."""
        assert not self.buf, f"unread bytes left: {bytes(self.buf)[:500]!r}"
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        assert data == b"", f"bytes after the response: {data[:500]!r}"
        return True


def http_request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                 version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def completion(rid: str, version: str = "HTTP/1.1", headers: dict[str, str] | None = None, **extra: Any) -> tuple[dict, bytes]:
    body = completion_body(**{"stream": False, **extra})
    return body, http_request("POST", "/v1/completions", json.dumps(body).encode(), {"X-Request-Id": rid, **(headers or {})}, version)


def new_rid() -> str:
    return f"rid-{uuid.uuid4()}"


def sse_events(body: bytes) -> list[bytes]:
    assert body.endswith(b"\n\n"), body[-200:]
    return body[:-2].split(b"\n\n")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def backends():
    fakes = [FakeBackend("prefill", "HP0"), FakeBackend("decode", "HD0")]
    cluster = FakeCluster(fakes)
    cluster.start()
    try:
        yield {b.name: b for b in fakes}
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def proxy(backends):
    proc = ProxyProcess([backends["HP0"].port], [backends["HD0"].port])
    try:
        yield proc
    finally:
        proc.stop()


def decoded_as(backends: dict[str, FakeBackend], rid: str, body: dict) -> None:
    """D received exactly the client's JSON plus P's kv_transfer_params."""
    _, rec = one(backends, "decode", rid)
    assert rec.body == {**body, "kv_transfer_params": backends["HP0"].kv_params()}


# --------------------------------------------------------------------------- request bodies


def test_chunked_request_body_is_relayed_exactly(backends, proxy):
    rid = new_rid()
    body = completion_body(stream=False, prompt="chunked " + "é" * 40)
    raw = json.dumps(body, ensure_ascii=False).encode()
    cuts = [0, 7, 50, 51, len(raw) - 3, len(raw)]
    pieces = [raw[a:b] for a, b in zip(cuts, cuts[1:])]
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\nX-Request-Id: {rid}\r\n\r\n"
    ).encode()
    with Wire(proxy.port) as wire:
        wire.send(head)
        for i, piece in enumerate(pieces):
            ext = b";note=x" if i == 1 else b""  # a chunk extension is legal and ignored
            # The size line and the data in separate sends: the server sees partial chunks.
            wire.send(b"%x%b\r\n" % (len(piece), ext))
            wire.send(piece + b"\r\n")
        wire.send(b"0\r\n")
        wire.send(b"\r\n")
        resp = wire.response()
    assert resp.status == 200, resp.body
    assert resp.header("X-Request-Id") == rid
    assert resp.json()["served_by"] == "HD0"
    decoded_as(backends, rid, body)


def test_expect_100_continue_before_the_body(backends, proxy):
    rid = new_rid()
    body = completion_body(stream=False, prompt="expect")
    raw = json.dumps(body).encode()
    head = http_request("POST", "/v1/completions", None, {
        "Content-Type": "application/json", "Content-Length": str(len(raw)), "Expect": "100-continue", "X-Request-Id": rid})
    with Wire(proxy.port) as wire:
        wire.send(head)
        interim = wire.response()
        assert (interim.version, interim.status, interim.headers) == ("HTTP/1.1", 100, [])
        wire.send(raw)
        final = wire.response()
        assert final.status == 200, final.body
        assert final.header("X-Request-Id") == rid
        decoded_as(backends, rid, body)
        # The connection goes on, and a second such request gets its own 100 Continue.
        rid2 = new_rid()
        wire.send(head.replace(rid.encode(), rid2.encode()))
        assert wire.response().status == 100
        wire.send(raw)
        final2 = wire.response()
        assert (final2.status, final2.header("X-Request-Id")) == (200, rid2)


def test_body_over_the_limit_is_413_and_closes(proxy):
    head = http_request("POST", "/v1/completions", None, {"Content-Type": "application/json", "Content-Length": str(300 * 1024 * 1024)})
    with Wire(proxy.port) as wire:
        wire.send(head + b'{"prompt": "')  # the first bytes of a body that never comes in full
        resp = wire.response()
        assert resp.status == 413
        assert "over the limit" in resp.json()["error"]["message"]
        assert resp.header("Connection") == "close"
        assert wire.closed_by_peer()


def test_chunked_body_over_the_limit_is_413_and_closes(proxy):
    head = http_request("POST", "/v1/completions", None, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    with Wire(proxy.port) as wire:
        wire.send(head + b"%x\r\n" % (300 * 1024 * 1024) + b'{"prompt": "')
        resp = wire.response()
        assert resp.status == 413
        assert resp.header("Connection") == "close"
        assert wire.closed_by_peer()


# --------------------------------------------------------------------------- routing


def test_unknown_path_is_404_json_and_the_connection_stays(proxy):
    with Wire(proxy.port) as wire:
        wire.send(http_request("GET", "/v1/nothing-here?x=1"))
        resp = wire.response()
        assert resp.status == 404
        assert resp.header("Content-Type") == "application/json"
        assert "/v1/nothing-here" in resp.json()["error"]["message"]
        assert resp.header("Connection") is None
        wire.send(http_request("GET", "/metrics"))
        assert wire.response().status == 200


@pytest.mark.parametrize(("method", "path", "allow"), [("GET", "/v1/completions", "POST"), ("PUT", "/v1/chat/completions", "POST"),
                                                        ("POST", "/metrics", "GET")])
def test_wrong_method_is_405_with_allow(proxy, method, path, allow):
    with Wire(proxy.port) as wire:
        wire.send(http_request(method, path, b"{}" if method != "GET" else None))
        resp = wire.response()
        assert resp.status == 405
        assert resp.header("Allow") == allow
        assert resp.header("Content-Type") == "application/json"
        assert method in resp.json()["error"]["message"]


# --------------------------------------------------------------------------- connection handling


def test_keep_alive_two_requests_on_one_socket(backends, proxy):
    rids = [new_rid(), new_rid()]
    with Wire(proxy.port) as wire:
        for rid in rids:
            body, raw = completion(rid, prompt=rid)
            wire.send(raw)
            resp = wire.response()
            assert (resp.status, resp.header("X-Request-Id")) == (200, rid)
            assert resp.header("Connection") is None
            decoded_as(backends, rid, body)
        assert not wire.closed_by_peer(timeout=0.3)  # still open for a third


def test_connection_close_from_the_client_closes_after_the_answer(proxy):
    rid = new_rid()
    with Wire(proxy.port) as wire:
        wire.send(completion(rid, headers={"Connection": "close"})[1])
        resp = wire.response()
        assert (resp.status, resp.header("X-Request-Id")) == (200, rid)
        assert resp.header("Connection") == "close"
        assert wire.closed_by_peer()


def test_connection_close_on_a_streamed_answer(proxy):
    rid = new_rid()
    with Wire(proxy.port) as wire:
        wire.send(completion(rid, headers={"Connection": "close"}, stream=True)[1])
        resp = wire.response()
        assert (resp.status, resp.header("Connection")) == (200, "close")
        assert sse_events(resp.body)[-1] == b"data: [DONE]"
        assert wire.closed_by_peer()


def test_http_1_0_request_is_closed_after_the_answer(backends, proxy):
    rid = new_rid()
    with Wire(proxy.port) as wire:
        body, raw = completion(rid, version="HTTP/1.0")
        wire.send(raw)
        resp = wire.response()
        assert (resp.status, resp.header("X-Request-Id")) == (200, rid)
        assert resp.json()["served_by"] == "HD0"
        assert wire.closed_by_peer()
    decoded_as(backends, rid, body)


def test_http_1_0_streamed_answer_is_not_chunked(proxy):
    """RFC 9112 6.1: a server MUST NOT send Transfer-Encoding to an HTTP/1.0 request; the body
    of an answer of unknown length is delimited by the close instead."""
    rid = new_rid()
    with Wire(proxy.port) as wire:
        wire.send(completion(rid, version="HTTP/1.0", stream=True)[1])
        resp = wire.response()
        assert resp.status == 200
        assert resp.header("Transfer-Encoding") is None
        assert sse_events(resp.body)[-1] == b"data: [DONE]"


def test_head_answers_like_get_without_a_body(proxy):
    """HEAD /metrics: GET's status and Content-Length, no body bytes (a kept-alive client would
    read them as the next answer), and the connection goes on."""
    with Wire(proxy.port) as wire:
        wire.send(http_request("HEAD", "/metrics") + http_request("GET", "/metrics"))
        head = wire.response(head_only=True)
        get = wire.response()
        assert head.status == get.status == 200
        assert int(head.header("Content-Length")) > 0 and get.body.startswith(b"# ")
        assert not wire.closed_by_peer(timeout=0.3)


def test_pipelined_requests_are_answered_in_order(backends, proxy):
    slow, fast = new_rid(), new_rid()
    slow_body, slow_raw = completion(slow, stream=True, prompt="SLOW")  # D takes ~0.4 s over it
    fast_body, fast_raw = completion(fast)
    with Wire(proxy.port) as wire:
        wire.send(slow_raw + fast_raw + http_request("GET", "/metrics"))
        first, second, third = wire.response(), wire.response(), wire.response()
        assert (first.status, first.header("X-Request-Id")) == (200, slow)
        assert sse_events(first.body)[-1] == b"data: [DONE]"
        assert (second.status, second.header("X-Request-Id")) == (200, fast)
        assert second.json()["served_by"] == "HD0"
        assert third.status == 200 and b"disagg_proxy" in third.body
    decoded_as(backends, slow, slow_body)
    decoded_as(backends, fast, fast_body)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/2.0\r\n\r\n",
        b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["request-line", "version", "header-line", "content-length", "chunk-size"],
)
def test_malformed_request_is_400_and_closes(proxy, raw):
    with Wire(proxy.port) as wire:
        wire.send(raw)
        resp = wire.response()
        assert resp.status == 400
        assert resp.json()["error"]["type"] == "invalid_request_error"
        assert resp.header("Connection") == "close"
        assert wire.closed_by_peer()


def test_malformed_request_after_a_good_one_on_the_same_socket(proxy):
    rid = new_rid()
    with Wire(proxy.port) as wire:
        wire.send(completion(rid)[1] + b"GARBAGE\r\n\r\n")
        good, bad = wire.response(), wire.response()
        assert (good.status, good.header("X-Request-Id"), good.header("Connection")) == (200, rid, None)
        assert (bad.status, bad.header("Connection")) == (400, "close")
        assert wire.closed_by_peer()


# --------------------------------------------------------------------------- response framing


def test_json_answer_has_content_length(proxy):
    rid = new_rid()
    with Wire(proxy.port) as wire:
        wire.send(completion(rid)[1])
        resp = wire.response()
    assert resp.status == 200
    assert resp.header("Transfer-Encoding") is None
    assert int(resp.header("Content-Length")) == len(resp.body) > 0
    assert resp.header("Content-Type").startswith("application/json")
    assert resp.json() == {"id": "cmpl-d", "served_by": "HD0", "text": "hi"}


def test_sse_answer_is_chunked_and_ends_with_done(proxy):
    rid = new_rid()
    with Wire(proxy.port) as wire:
        wire.send(completion(rid, stream=True)[1])
        resp = wire.response()
        assert resp.status == 200
        assert resp.header("Transfer-Encoding") == "chunked"
        assert resp.header("Content-Length") is None
        assert resp.header("Content-Type").startswith("text/event-stream")
        assert resp.chunks and all(resp.chunks)  # no empty chunk before the last one
        events = sse_events(resp.body)
        assert events == [f'data: {{"i": {i}, "served_by": "HD0"}}'.encode() for i in range(5)] + [b"data: [DONE]"]
        # keep-alive after a chunked answer: the terminating chunk was complete
        wire.send(http_request("GET", "/metrics"))
        assert wire.response().status == 200


def test_a_slow_client_holds_the_decode_stream_back(backends, proxy):
    """Back-pressure: while the client reads nothing, the proxy stops reading D (D stalls long
    before its 64 MiB are out) instead of buffering the stream; then every byte arrives, in order."""
    big = f"big-{uuid.uuid4()}"
    _, raw = completion(new_rid(), stream=True, prompt=f"BIG:{big}")
    hd0 = backends["HD0"]
    with Wire(proxy.port) as wire:
        wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        wire.send(raw)
        deadline = time.monotonic() + 10
        while hd0.big.get(big, 0) < 8 and time.monotonic() < deadline:  # D has started
            time.sleep(0.01)
        stalled_at = hd0.big.get(big, 0)
        assert stalled_at >= 8, "D never started streaming"
        # Every buffer between D and us together holds well under 64 MiB: a proxy that kept
        # reading D would let it finish within milliseconds. Give it a full second.
        time.sleep(1.0)
        assert hd0.big[big] < BIG_EVENTS, "D finished while the client read nothing: the proxy buffered the stream"
        resp = wire.response(timeout=60)
    events = sse_events(resp.body)
    assert events[-1] == b"data: [DONE]" and len(events) == BIG_EVENTS + 1
    assert [json.loads(e[len(b"data: "):])["i"] for e in events[:-1]] == list(range(BIG_EVENTS))
    assert all(len(json.loads(e[len(b"data: "):])["pad"]) == BIG_PAD for e in events[:3])
    assert hd0.big[big] == BIG_EVENTS
