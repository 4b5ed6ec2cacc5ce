"""A small TCP proxy between the stack and its S3 endpoint that can make S3 answer 503.

The failure suite starts the stack with its ``clientflow_s3`` connection pointed at this proxy, which
forwards every byte to moto. Inside :meth:`S3Proxy.unavailable`, a connection whose first request
names the bucket (an S3 call: path-style addressing, ``/<bucket>...``) is answered
``503 Slow Down`` as S3 does under load, and the S3 connections already open are cut, so keep-alive
connections fail too. Other traffic (the triggerer's SQS polls) keeps flowing: the outage is S3's.
Nothing is mocked: the tasks' real boto clients meet a real socket that refuses them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
         b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>")
_SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
              b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class S3Proxy:
    """Listens on ``127.0.0.1:port`` and forwards to ``127.0.0.1:upstream``; a daemon thread each way."""

    def __init__(self, port: int, upstream: int, bucket: str) -> None:
        self.port, self.upstream, self.prefix = port, upstream, f"/{bucket}".encode()
        self.refused = 0
        self._failing = threading.Event()
        self._open: set[socket.socket] = set()
        self._guard = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        threading.Thread(target=self._accept, name="s3-proxy", daemon=True).start()

    @contextmanager
    def unavailable(self) -> Iterator[None]:
        """S3 answers 503 (and drops its open connections) until the block ends."""
        self._failing.set()
        with self._guard:
            for sock in list(self._open):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        try:
            yield
        finally:
            self._failing.clear()

    def close(self) -> None:
        with suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            first = client.recv(65536)
            target = first.split(b" ", 2)[1] if first.count(b" ") >= 2 else b""
            is_s3 = target.startswith(self.prefix)
            if is_s3 and self._failing.is_set():
                self.refused += 1
                with suppress(OSError):
                    client.sendall(_SLOW_DOWN)
                return
            with socket.create_connection(("127.0.0.1", self.upstream)) as upstream:
                if is_s3:
                    with self._guard:
                        self._open.add(client)
                try:
                    upstream.sendall(first)
                    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                    back.start()
                    _pipe(client, upstream)
                    back.join(30)
                finally:
                    with self._guard:
                        self._open.discard(client)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
