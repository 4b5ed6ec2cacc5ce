"""The password never appears in stdout, stderr, the manifest or the data, whatever happens."""

from __future__ import annotations

import os
import pty
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import MARIA_ADMIN, free_port, local_batch, maria_connect


@pytest.fixture
def maria_user(maria_db: str) -> Iterator[tuple[str, str, str]]:
    """(database, user, password) for a MariaDB user that may read the database."""
    import pymysql

    user, password = f"u_{uuid.uuid4().hex[:8]}", f"Pw-{uuid.uuid4().hex}"
    conn = pymysql.connect(**MARIA_ADMIN, autocommit=True)  # type: ignore[arg-type]
    with conn.cursor() as cur:
        for host in ("%", "localhost", "127.0.0.1"):
            cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))
            cur.execute(f"GRANT SELECT ON `{maria_db}`.* TO %s@%s", (user, host))
    data = maria_connect(maria_db)
    with data.cursor() as cur:
        cur.execute("CREATE TABLE patients (id INT PRIMARY KEY, first_name VARCHAR(20))")
        cur.execute("INSERT INTO patients VALUES (1, 'Ana'), (2, 'Bruno')")
    data.close()
    yield maria_db, user, password
    with conn.cursor() as cur:
        for host in ("%", "localhost", "127.0.0.1"):
            cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
    conn.close()


def _assert_absent(secret: str, *texts: str | bytes) -> None:
    for text in texts:
        raw = text.encode() if isinstance(text, str) else text
        assert secret.encode() not in raw


def test_wrong_password_from_env_and_url_is_never_printed(maria_user: tuple[str, str, str], run_extractor: Any, tmp_path: Path) -> None:
    db, user, _ = maria_user
    wrong = f"Wrong-{uuid.uuid4().hex}"
    res = run_extractor("--source", f"mysql://{user}@127.0.0.1:3306/{db}", "--client", "c", "--output", str(tmp_path / "o"),
                        password=wrong)
    assert res.returncode == 3
    assert f"cannot connect to 127.0.0.1:3306/{db} as user '{user}'" in res.stderr and "Access denied" in res.stderr
    assert "EXTRACTOR_DB_PASSWORD" in res.stderr  # says what to do
    _assert_absent(wrong, res.stdout, res.stderr)

    res = run_extractor("--source", f"mysql://{user}:{wrong}@127.0.0.1:3306/{db}", "--client", "c", "--output", str(tmp_path / "o"))
    assert res.returncode == 3
    _assert_absent(wrong, res.stdout, res.stderr)
    res = run_extractor("--source", f"mysql://{user}:{wrong}@127.0.0.1:notaport/{db}", "--client", "c", "--output", str(tmp_path / "o"))
    assert res.returncode == 2
    _assert_absent(wrong, res.stdout, res.stderr)


def test_right_password_from_env_url_and_config(maria_user: tuple[str, str, str], run_extractor: Any, tmp_path: Path) -> None:
    db, user, password = maria_user
    out = tmp_path / "o"
    res = run_extractor("--source", f"mysql://{user}@127.0.0.1:3306/{db}", "--client", "viaenv", "--output", str(out), password=password)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # quiet when stderr is not a terminal
    res2 = run_extractor("--source", f"mysql://{user}:{password}@127.0.0.1:3306/{db}", "--client", "viaurl", "--output", str(out))
    assert res2.returncode == 0, res2.stderr
    config = tmp_path / "extract.toml"
    config.write_text(f'source = "mysql://{user}@127.0.0.1:3306/{db}"\nclient = "viaconfig"\npassword = "{password}"\noutput = "{out}"\n')
    config.chmod(0o600)
    res3 = run_extractor("--config", str(config))
    assert res3.returncode == 0, res3.stderr
    for client in ("viaenv", "viaurl", "viaconfig"):
        entry = local_batch(out, client)["patients"]
        assert entry["manifest"]["row_count"] == 2
        _assert_absent(password, entry["data"], (entry["dir"] / "manifest.json").read_bytes())
    _assert_absent(password, res.stdout, res2.stdout, res2.stderr, res3.stdout, res3.stderr)

    config.chmod(0o644)
    res4 = run_extractor("--config", str(config), "--client", "loose")
    assert res4.returncode == 0 and "chmod 600" in res4.stderr
    _assert_absent(password, res4.stdout, res4.stderr)


class FakePostgres:
    """Speaks just enough of the PostgreSQL protocol to ask for a cleartext password and reject it."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.port = self.server.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                try:
                    self._session(conn)
                except OSError:
                    pass

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise OSError("closed")
            buf += chunk
        return buf

    def _session(self, conn: socket.socket) -> None:
        while True:
            (length,) = struct.unpack("!I", self._read(conn, 4))
            body = self._read(conn, length - 4)
            if struct.unpack("!I", body[:4])[0] in (80877103, 80877104):  # SSLRequest / GSSENCRequest
                conn.sendall(b"N")
                continue
            break
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        kind = self._read(conn, 1)
        (length,) = struct.unpack("!I", self._read(conn, 4))
        payload = self._read(conn, length - 4)
        if kind == b"p":
            self.received.append(payload.rstrip(b"\0"))
        fields = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"clinic_reader\"\0\0"
        conn.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)

    def close(self) -> None:
        self.server.close()


def test_postgres_auth_failure_names_the_target_not_the_password(run_extractor: Any, tmp_path: Path) -> None:
    fake = FakePostgres()
    secret = f"Pg-{uuid.uuid4().hex}"
    try:
        res = run_extractor("--source", f"postgresql://clinic_reader@127.0.0.1:{fake.port}/ehr?sslmode=disable", "--client", "c",
                            "--output", str(tmp_path / "o"), password=secret)
        res_url = run_extractor("--source", f"postgresql://clinic_reader:{secret}@127.0.0.1:{fake.port}/ehr?sslmode=disable",
                                "--client", "c", "--output", str(tmp_path / "o"))
    finally:
        fake.close()
    assert fake.received == [secret.encode(), secret.encode()]  # the password really was used
    for r in (res, res_url):
        assert r.returncode == 3
        assert f"cannot connect to 127.0.0.1:{fake.port}/ehr as user 'clinic_reader'" in r.stderr
        assert "password authentication failed" in r.stderr
        _assert_absent(secret, r.stdout, r.stderr)
    assert not (tmp_path / "o" / "client=c").exists()


def test_prompt_on_a_terminal_does_not_echo(maria_user: tuple[str, str, str], extractor_bin: Path, tmp_path: Path) -> None:
    db, user, password = maria_user
    out = tmp_path / "o"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TERM": "dumb"}
    pid, fd = pty.fork()
    if pid == 0:  # child: a real terminal is its stdin, stdout and stderr
        os.execve(str(extractor_bin), [str(extractor_bin), "--source", f"mysql://{user}@127.0.0.1:3306/{db}",
                                        "--client", "tty", "--output", str(out)], env)
    seen = b""
    deadline = time.monotonic() + 60
    sent = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if not sent and b"Password for" in seen:
            os.write(fd, password.encode() + b"\n")
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert sent, seen
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert f"Password for {user}@127.0.0.1:3306/{db}".encode() in seen
    assert password.encode() not in seen  # no echo
    assert b"patients: 2 rows" in seen  # the progress line shows on a terminal
    assert local_batch(out, "tty")["patients"]["manifest"]["row_count"] == 2


def test_mistyped_options_never_echo_the_password(run_extractor: Any, tmp_path: Path) -> None:
    """argparse quotes what it cannot parse; a typo next to a URL with a password must not print it."""
    secret = f"Typo-{uuid.uuid4().hex}"
    out = str(tmp_path / "o")
    cases = [
        (["--sorce", f"postgresql://u:{secret}@127.0.0.1/db", "--client", "c", "--output", out], "unrecognized arguments: --sorce"),
        (["--password", secret, "--source", "sqlite:///x.db", "--client", "c", "--output", out], "EXTRACTOR_DB_PASSWORD"),
        ([f"--password={secret}", "--source", "sqlite:///x.db", "--client", "c", "--output", out], "EXTRACTOR_DB_PASSWORD"),
        ([f"--s=postgresql://u:{secret}@127.0.0.1/db", "--client", "c", "--output", out], "ambiguous option: --s could match"),
        (["--source", "sqlite:///x.db", "--client", "c", "--output", out, secret], "unrecognized arguments"),
    ]
    for args, needle in cases:
        res = run_extractor(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert needle in res.stderr, res.stderr
        _assert_absent(secret, res.stdout, res.stderr)

    # libpq's ?password= form is taken as the URL's password: used, and never printed
    res = run_extractor("--source", f"postgresql://u@127.0.0.1:{free_port()}/db?password={secret}", "--client", "c", "--output", out)
    assert res.returncode == 3, res.stderr
    assert "cannot connect to 127.0.0.1:" in res.stderr
    _assert_absent(secret, res.stdout, res.stderr)
    fake = FakePostgres()
    try:
        res = run_extractor("--source", f"postgresql://clinic_reader@127.0.0.1:{fake.port}/ehr?sslmode=disable&password={secret}",
                            "--client", "c", "--output", out)
    finally:
        fake.close()
    assert fake.received == [secret.encode()]
    assert res.returncode == 3 and "password authentication failed" in res.stderr
    _assert_absent(secret, res.stdout, res.stderr)
