"""An HTTP proxy on loopback in front of the S3 server that injects faults at the network.

The client under test is the real boto3 client talking to a real S3 server; only the
wire between them misbehaves: a PUT to chosen keys gets 403 AccessDenied, or the whole
proxy goes away after some bytes (the "server" stops mid-upload) and can come back, or
headers vanish on the way: request headers (`If-None-Match`, as a store or gateway that
ignores conditional writes) or response headers (`x-amz-checksum-*`, as a store that keeps
no additional checksums).
`inject()` adds faults on chosen requests (matched on "METHOD /bucket/key?query"), each a given
number of times: the store applies the request but its reply is lost (`drop_reply`), the
connection is reset half-way through the request body (`reset_mid_body`, the store applies
nothing), the store answers 503 SlowDown (`slow_down`), or the request is held back until the
test releases it (`hold`, a slow PUT).
One request per connection (`Connection: close`) keeps the relaying simple.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from dataclasses import dataclass, field

DENIED = b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
DENIED_BODY = b"<Error><Code>AccessDenied</Code><Message>injected by the test proxy</Message></Error>"
# S3's answer to a too-high request rate (S3 API reference, "Error responses": SlowDown, 503).
SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)
SLOW_DOWN_BODY = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
FAULT_KINDS = ("drop_reply", "reset_mid_body", "slow_down", "hold")


@dataclass
class Fault:
    """One kind of fault on the requests whose "METHOD target" matches, `times` times."""

    kind: str
    pattern: re.Pattern[str]
    times: int = 1
    hits: list[str] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)  # a `hold` request is waiting
    release: threading.Event = field(default_factory=threading.Event)  # let held requests go on


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed peer or middlebox would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.deny_puts: re.Pattern[str] | None = None
        self.cut_after_bytes: int | None = None
        # Lower-case names of request headers dropped before the request reaches the server.
        self.strip_request_headers: set[str] = set()
        # Response header lines (matched on the lower-cased line) dropped before the client sees them.
        self.strip_response_headers: re.Pattern[str] | None = None
        self.stripped: list[str] = []
        self.forwarded = 0
        self.denied: list[str] = []
        self.faults: list[Fault] = []
        # (method, target, lower-cased request headers) of every request, as it arrived.
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0

    def inject(self, kind: str, method: str, pattern: str, times: int = 1) -> Fault:
        """Fault the next `times` `method` requests whose target matches `pattern` (a regex)."""
        assert kind in FAULT_KINDS, kind
        fault = Fault(kind, re.compile(rf"^{method} .*{pattern}"), times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def _take_fault(self, method: str, target: str) -> Fault | None:
        request = f"{method} {target}"
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.pattern.search(request):
                    fault.times -= 1
                    fault.hits.append(request)
                    return fault
        return None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Go away: no listener, every connection reset."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            listener.close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    @property
    def running(self) -> bool:
        return self._listener is not None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    return
                self._connections.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            head, body_start = _read_head(client)
            if head is None:
                return
            request_line, headers = _parse(head)
            method, target, _ = request_line.split(" ", 2)
            with self._lock:
                self.requests.append((method, target, headers))
            length = int(headers.get("content-length", "0"))
            expects_continue = headers.get("expect", "").lower() == "100-continue"
            if self.deny_puts is not None and method == "PUT" and self.deny_puts.search(target):
                if not expects_continue:  # with Expect, the client sends no body after a final answer
                    _drain(client, length - len(body_start))
                self.denied.append(target)
                client.sendall(DENIED % (len(DENIED_BODY), DENIED_BODY))
                return
            fault = self._take_fault(method, target)
            if fault is not None and fault.kind == "slow_down":
                if not expects_continue:
                    _drain(client, length - len(body_start))
                client.sendall(SLOW_DOWN % (len(SLOW_DOWN_BODY), SLOW_DOWN_BODY))
                return
            if expects_continue:
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if fault is not None and fault.kind == "hold":
                body_start += _receive(client, length - len(body_start))
                fault.held.set()
                fault.release.wait(timeout=60)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._connections.add(upstream)
            upstream.sendall(self._rewrite(head))
            remaining = length
            chunk = body_start
            sent = 0
            while True:
                if chunk:
                    if fault is not None and fault.kind == "reset_mid_body" and sent + len(chunk) > length // 2:
                        upstream.sendall(chunk[: length // 2 - sent])
                        _reset(upstream)  # the server sees a truncated body and applies nothing
                        _reset(client)
                        return
                    self._count(len(chunk))
                    upstream.sendall(chunk)
                    sent += len(chunk)
                    remaining -= len(chunk)
                if remaining <= 0:
                    break
                chunk = client.recv(min(65536, remaining))
                if not chunk:
                    return
            if fault is not None and fault.kind == "drop_reply":
                while upstream.recv(65536):  # the server applied the request and answered...
                    pass
                _reset(client)  # ...and the answer never reaches the client
                return
            if self.strip_response_headers is not None:
                response_head, rest = _read_head(upstream)
                if response_head is None:
                    return
                client.sendall(self._filter_response(response_head) + rest)
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._connections.discard(sock)
                    sock.close()

    def _rewrite(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        kept = []
        for line in lines:
            name = line.split(":", 1)[0].strip().lower()
            if not line or name in ("connection", "expect"):
                continue
            if ":" in line and name in self.strip_request_headers:
                self.stripped.append(line)
                continue
            kept.append(line)
        return ("\r\n".join(kept) + "\r\nConnection: close\r\n\r\n").encode("latin-1")

    def _filter_response(self, head: bytes) -> bytes:
        assert self.strip_response_headers is not None
        lines = head.decode("latin-1").split("\r\n")
        kept = []
        for line in lines:
            if line and self.strip_response_headers.search(line.lower()):
                self.stripped.append(line)
                continue
            kept.append(line)
        return "\r\n".join(kept).encode("latin-1")

    def _count(self, size: int) -> None:
        with self._lock:
            self.forwarded += size
            cut = self.cut_after_bytes is not None and self.forwarded > self.cut_after_bytes
        if cut:
            self.cut_after_bytes = None
            self.stop()
            raise OSError("proxy stopped by the test")


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def _parse(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _receive(sock: socket.socket, remaining: int) -> bytes:
    data = b""
    while len(data) < remaining:
        chunk = sock.recv(min(65536, remaining - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def _drain(sock: socket.socket, remaining: int) -> None:
    while remaining > 0:
        chunk = sock.recv(min(65536, remaining))
        if not chunk:
            return
        remaining -= len(chunk)
