"""Fixtures for the client extractor: the built binary, throwaway databases, and moto's S3 server.

Every test runs the real binary (dist/client-extractor) against real PostgreSQL, MariaDB and a moto
S3 server on loopback. Databases and buckets get unique names and are dropped afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.extractor import build_binary
from tests.support.net import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# every module of the package (sources/ included) and the spec: a change to any of them rebuilds the binary
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
MARIA_ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def extractor_bin() -> Path:
    return build_binary()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_extractor(extractor_bin: Path, tmp_path: Path) -> Any:
    """Run the binary with a clean environment (no password unless given) and return its output."""

    def run(*args: str, password: str | None = None, env: dict[str, str] | None = None, timeout: float = 180) -> Result:
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TMPDIR": str(tmp_path), **AWS_ENV}
        if password is not None:
            full_env["EXTRACTOR_DB_PASSWORD"] = password
        full_env.update(env or {})
        proc = subprocess.run([str(extractor_bin), *args], env=full_env, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, check=False)
        return Result(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))

    return run


# ---- databases ------------------------------------------------------------------------------------


@pytest.fixture
def pg_db() -> Iterator[str]:
    """A fresh PostgreSQL database (name returned); dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"cfx_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**PG_ADMIN, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(**PG_ADMIN, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def pg_ascii_db() -> Iterator[str]:
    """A fresh SQL_ASCII PostgreSQL database, the one encoding whose text may be any bytes; dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"cfx_ascii_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**PG_ADMIN, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("create database {} encoding 'SQL_ASCII' lc_collate 'C' lc_ctype 'C' template template0")
                     .format(sql.Identifier(name)))
    yield name
    with psycopg.connect(**PG_ADMIN, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def pg_connect(dbname: str, **kwargs: Any) -> Any:
    import psycopg

    return psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=dbname, **kwargs)


@pytest.fixture
def maria_db() -> Iterator[str]:
    """A fresh MariaDB database (name returned); dropped afterwards."""
    import pymysql

    name = f"cfx_{uuid.uuid4().hex[:10]}"
    conn = pymysql.connect(**MARIA_ADMIN, autocommit=True)  # type: ignore[arg-type]
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()
    yield name
    conn = pymysql.connect(**MARIA_ADMIN, autocommit=True)  # type: ignore[arg-type]
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


def maria_connect(dbname: str, **kwargs: Any) -> Any:
    import pymysql

    return pymysql.connect(**MARIA_ADMIN, database=dbname, autocommit=True, charset="utf8mb4", **kwargs)  # type: ignore[arg-type]


# ---- S3 (moto) ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    name = f"landing-{uuid.uuid4().hex[:10]}"
    s3_client(moto_endpoint).create_bucket(Bucket=name)
    return name


# ---- reading a batch back -------------------------------------------------------------------------


def local_batch(root: Path, client: str) -> dict[str, dict[str, Any]]:
    """{table: {"manifest": dict, "data": bytes, "dir": Path}} for every manifest under root/client=..."""
    out: dict[str, dict[str, Any]] = {}
    for manifest_path in sorted((root / f"client={client}").glob("table=*/date=*/run_id=*/manifest.json")):
        manifest = json.loads(manifest_path.read_bytes())
        data = (manifest_path.parent / "data.json").read_bytes()
        out[manifest["table"]] = {"manifest": manifest, "data": data, "dir": manifest_path.parent}
    return out


# ---- a TCP proxy that breaks uploads --------------------------------------------------------------


class FaultProxy:
    """Forwards 127.0.0.1:<port> to an upstream port and cuts every connection once `fail_after`
    request bytes have passed. mode 'dead': stays down afterwards (a network outage);
    mode 'once': forwards normally again (a transient fault that retries must absorb)."""

    def __init__(self, upstream_port: int, fail_after: int, mode: str) -> None:
        self.upstream_port = upstream_port
        self.fail_after = fail_after
        self.mode = mode
        self.sent = 0
        self.tripped = False
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.tripped and self.mode == "dead":
                self._kill(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    @staticmethod
    def _kill(sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            sock.shutdown(socket.SHUT_RDWR)  # wakes the pump thread blocked in recv() on this socket
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _pump(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upload:
                    with self.lock:
                        self.sent += len(data)
                        trip = not self.tripped and self.sent > self.fail_after
                        if trip:
                            self.tripped = True
                            victims = list(self.conns)
                            self.conns.clear()
                    if trip:
                        for sock in victims:
                            self._kill(sock)
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.server.close()
        with self.lock:
            for sock in self.conns:
                self._kill(sock)


# ---- an HTTP proxy that answers with server errors ------------------------------------------------


class ServerErrorProxy:
    """An HTTP proxy in front of the S3 server that injects 5xx answers, counting every request.

    - the first attempt of every PUT and POST (except a manifest.json) gets 503 SlowDown without
      reaching S3: retries must repeat it;
    - the first PUT of each manifest.json reaches S3, but its answer is replaced by 500 InternalError
      (the write landed, the response was lost): the retry meets If-None-Match and must recognise it;
    - with `always` set, every PUT and POST whose path contains it gets 503 SlowDown, forever.
    """

    def __init__(self, upstream_port: int, always: str | None = None) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.upstream_port = upstream_port
        self.always = always
        self.attempts: dict[str, int] = {}
        self.refused: list[str] = []
        self.lost: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def handle_one(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handle(self, req: Any) -> None:
        import http.client

        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        path = urllib.parse.unquote(req.path)  # botocore sends client%3Dx/table%3Dy/...
        key = f"{req.command} {path}"
        writes = req.command in ("PUT", "POST")
        manifest = path.split("?", 1)[0].endswith("/manifest.json")
        with self.lock:
            self.attempts[key] = self.attempts.get(key, 0) + 1
            first = self.attempts[key] == 1
        if writes and ((self.always and self.always in path) or (first and not manifest)):
            self.refused.append(key)
            self._answer(req, 503, "SlowDown")
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in ("expect", "connection", "transfer-encoding")}
        upstream.request(req.command, req.path, body=body, headers=headers)
        resp = upstream.getresponse()
        data = resp.read()
        upstream.close()
        if writes and manifest and first:
            self.lost.append(key)
            self._answer(req, 500, "InternalError")
            return
        req.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                req.send_header(name, value)
        head_length = resp.getheader("Content-Length") or "0"
        req.send_header("Content-Length", head_length if req.command == "HEAD" else str(len(data)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)

    @staticmethod
    def _answer(req: Any, status: int, code: str) -> None:
        body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected</Message></Error>'.encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/xml")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
