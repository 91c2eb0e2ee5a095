"""Cut connections, for resumable uploads: `FlakyLink`, a TCP proxy that cuts its connections (a
real flaky link between a client and a live service, no mock of either side: every `cut_every`
bytes sent towards the server, the connection that carries them is closed half way through what
it was sending, the bytes up to the cut delivered first); `cut_patch`, a tus PATCH whose
connection is dropped mid-body."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlparse


class FlakyLink:
    def __init__(self, upstream: str, cut_every: int, pause: float = 0.0) -> None:
        """`pause`: seconds waited after each piece forwarded towards the server (a slow
        link: a test can act while an upload is surely in flight)."""
        parsed = urlparse(upstream)
        self.pause = pause
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.cut_every = cut_every
        self.cuts = 0
        self._sent = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        """Client to server, counted; past the mark, the rest is dropped with both sockets."""
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                with self._lock:
                    room = self.cut_every - self._sent
                    cut = len(data) >= room
                    self._sent = 0 if cut else self._sent + len(data)
                    if cut:
                        self.cuts += 1
                server.sendall(data[:room] if cut else data)
                if cut:
                    break
                if self.pause:
                    time.sleep(self.pause)
        except OSError:
            pass
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @staticmethod
    def _down(server: socket.socket, client: socket.socket) -> None:
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._server.close()


@contextlib.contextmanager
def flaky_link(upstream: str, cut_every: int, pause: float = 0.0) -> Iterator[FlakyLink]:
    link = FlakyLink(upstream, cut_every, pause)
    try:
        yield link
    finally:
        link.close()


def cut_patch(url: str, key: str | None, offset: int, body: bytes, announced: int,
              checksum: str | None = None) -> None:  # fmt: skip
    """A PATCH that announces `announced` bytes, sends `body` (fewer) and drops the
    connection."""
    parsed = urlparse(url)
    headers = [
        f"PATCH {parsed.path} HTTP/1.1",
        f"Host: {parsed.netloc}",
        f"Authorization: Bearer {key}",
        "Tus-Resumable: 1.0.0",
        f"Upload-Offset: {offset}",
        "Content-Type: application/offset+octet-stream",
        f"Content-Length: {announced}",
    ]
    if checksum:
        headers.append(f"Upload-Checksum: {checksum}")
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        time.sleep(0.2)
        sock.shutdown(socket.SHUT_RDWR)
