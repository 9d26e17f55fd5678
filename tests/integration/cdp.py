"""Headless Chromium for the tests, driven over the DevTools protocol.

No websocket package is needed: DevTools speaks plain JSON text frames, so a minimal RFC 6455
client over a socket (client frames masked, server frames not, fragmentation, ping) is
enough. Chromium runs in its own process group with its own profile directory, and `stop()`
ends that group only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DevToolsError(RuntimeError):
    pass


class DevTools:
    """One DevTools websocket (a page target): call(method, **params) -> result."""

    def __init__(self, ws_url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(ws_url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        self.buffer = bytearray()
        self.next_id = 0
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise DevToolsError(f"websocket handshake refused: {lines[0]}")
        fields = (line.partition(":") for line in lines[1:])
        headers = {k.strip().lower(): v.strip() for k, _, v in fields}
        expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise DevToolsError("bad Sec-WebSocket-Accept")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        self._send(json.dumps({"id": ident, "method": method, "params": params}).encode())
        while True:
            message = json.loads(self._receive())
            if message.get("id") != ident:
                continue  # an event, which these tests do not need
            if "error" in message:
                raise DevToolsError(f"{method}: {message['error']}")
            result: dict[str, Any] = message.get("result", {})
            return result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serializable)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(b"", opcode=0x8)
        self.sock.close()

    # -- frames ---------------------------------------------------------------------------------

    def _send(self, payload: bytes, opcode: int = 0x1) -> None:
        n = len(payload)
        header = bytearray([0x80 | opcode])
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        repeated = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
            n, "big") if n else b""
        self.sock.sendall(bytes(header) + mask + masked)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise DevToolsError("the browser closed the connection")
        self.buffer += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def _receive(self) -> str:
        parts: list[bytes] = []
        while True:
            b0, b1 = self._take(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._take(2), "big")
            elif n == 127:
                n = int.from_bytes(self._take(8), "big")
            mask = self._take(4) if b1 & 0x80 else b""
            data = self._take(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x8:
                raise DevToolsError("the browser closed the websocket")
            if opcode == 0x9:  # ping
                self._send(data, opcode=0xA)
                continue
            if opcode == 0xA:  # pong
                continue
            parts.append(data)
            if fin:
                return b"".join(parts).decode()


class Chromium:
    """`chromium --headless=new` on a free debugging port, in its own process group."""

    def __init__(self, profile_dir: Path, executable: str = "chromium") -> None:
        self.port = free_port()
        self.profile_dir = profile_dir
        self.log_path = profile_dir.parent / "chromium.log"
        self.executable = executable
        self.process: subprocess.Popen[bytes] | None = None
        self.tabs: list[DevTools] = []

    def start(self, timeout: float = 60.0) -> Chromium:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.executable, "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                 "--disable-extensions", "--disable-background-networking",
                 f"--user-data-dir={self.profile_dir}",
                 f"--remote-debugging-port={self.port}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._json("/json/version")
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise DevToolsError(
                        f"chromium did not start: {self.log_path.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)

    def page(self) -> DevTools:
        """A connection to the first page target (the about:blank it opened)."""
        targets = self._json("/json/list")
        page = next(t for t in targets if t.get("type") == "page")
        tab = DevTools(page["webSocketDebuggerUrl"])
        self.tabs.append(tab)
        return tab

    def _json(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        for tab in self.tabs:
            tab.close()
        if self.process is None or self.process.poll() is not None:
            return
        stop_group(self.process)

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def stop_group(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group a child leads (started with start_new_session), then
    SIGKILL it if it outlives `grace`."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
    process.wait(timeout=grace)
