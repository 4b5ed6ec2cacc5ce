"""Encryption in transit: PostgreSQL with ``sslmode=verify-full`` and Redis with ``rediss://``, each
against a local server whose certificate a self-signed CA of the test issued for ``localhost``.

The servers are real: a PostgreSQL cluster of the test's own (``initdb``; its ``pg_hba.conf``
accepts ``hostssl`` only) and a ``redis-server`` with only its TLS port open. The settings come
from connection fields and extras the way the Airflow connections carry them. A certificate from
another CA, or a host name the certificate does not name, is refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clientflow.config import PostgresSettings, RedisSettings
from clientflow.operations import locks
from tests.support.extractor import ROOT
from tests.support.net import free_port, wait_port


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(directory: Path, name: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key, now = _key(), dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return _write(directory / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)), cert, key


@pytest.fixture(scope="module")
def tls_dir() -> Iterator[Path]:
    """Certificates: a CA, the server's (for localhost only, signed by it), and another CA."""
    base = ROOT / ".cache"
    base.mkdir(exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="tls-", dir=base))
    directory.chmod(0o755)  # the postgres user reads it when the tests run as root
    ca_file, ca_cert, ca_key = _ca(directory, "test-ca")
    _ca(directory, "other-ca")
    key, now = _key(), dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(directory / "server.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write(directory / "server.key", _pem_key(key), 0o600)
    assert ca_file.exists()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _pg_bin(name: str) -> str:
    """A PostgreSQL server program: on the PATH, or where Debian's packages put it (the newest)."""
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                                                   key=lambda p: int(p.parts[-3]), reverse=True)), None)
    if found is None:
        pytest.fail(f"{name} not found (PostgreSQL's server package provides it)")
    return str(found)


def _as_postgres() -> list[str]:
    """initdb and the server refuse to run as root: as root, run them as the postgres user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def tls_postgres(tls_dir: Path) -> Iterator[int]:
    data, port = tls_dir / "pgdata", free_port()
    data.mkdir(mode=0o700)
    if os.geteuid() == 0:
        for path in (tls_dir, data, tls_dir / "server.key", tls_dir / "server.crt"):
            shutil.chown(path, "postgres", "postgres")
    subprocess.run([*_as_postgres(), _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{tls_dir}'\n"
                   f"ssl = on\nssl_cert_file = '{tls_dir / 'server.crt'}'\nssl_key_file = '{tls_dir / 'server.key'}'\n")
    (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n", encoding="utf-8")
    subprocess.run([*_as_postgres(), _pg_bin("pg_ctl"), "-D", str(data), "-l", str(tls_dir / "pg.log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield port
    finally:
        subprocess.run([*_as_postgres(), _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)


def _pg(port: int, host: str, ca: Path, mode: str = "verify-full") -> PostgresSettings:
    return PostgresSettings.from_connection(host, port, "postgres", "postgres", None,
                                            {"sslmode": mode, "sslrootcert": str(ca)})


def test_postgres_verify_full_with_the_ca(tls_postgres: int, tls_dir: Path) -> None:
    settings = _pg(tls_postgres, "localhost", tls_dir / "test-ca.crt")
    with psycopg.connect(settings.conninfo()) as conn:
        row = conn.execute("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
    assert row is not None and row[0] is True and row[1].startswith("TLS"), row


def test_postgres_refuses_plain_text_another_ca_and_another_host_name(tls_postgres: int, tls_dir: Path) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption|SSL off|pg_hba.conf"):
        psycopg.connect(_pg(tls_postgres, "localhost", tls_dir / "test-ca.crt", "disable").conninfo()).close()
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(_pg(tls_postgres, "localhost", tls_dir / "other-ca.crt").conninfo()).close()
    with pytest.raises(psycopg.OperationalError, match="does not match host name|server certificate"):
        psycopg.connect(_pg(tls_postgres, "127.0.0.1", tls_dir / "test-ca.crt").conninfo()).close()


@pytest.fixture(scope="module")
def tls_redis(tls_dir: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(tls_dir / "server.crt"), "--tls-key-file", str(tls_dir / "server.key"),
                             "--tls-ca-cert-file", str(tls_dir / "test-ca.crt"), "--tls-auth-clients", "no",
                             "--save", "", "--appendonly", "no", "--dir", str(tls_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _redis(port: int, host: str, ca: Path) -> RedisSettings:
    return RedisSettings.from_connection(host, port, None, {"ssl": True, "ssl_ca_certs": str(ca), "db": 0})


def test_redis_over_tls_takes_a_client_lock(tls_redis: int, tls_dir: Path) -> None:
    settings = _redis(tls_redis, "localhost", tls_dir / "test-ca.crt")
    assert settings.url.get_secret_value().startswith("rediss://localhost:")
    client = locks._client(settings)
    assert client.ping() is True
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"


def test_redis_refuses_another_ca_and_another_host_name(tls_redis: int, tls_dir: Path) -> None:
    for settings in (_redis(tls_redis, "localhost", tls_dir / "other-ca.crt"),
                     _redis(tls_redis, "127.0.0.1", tls_dir / "test-ca.crt")):
        with pytest.raises(redis.ConnectionError, match="certificate verify failed|match"):
            locks._client(settings).ping()


def test_without_the_ssl_extra_the_settings_stay_plain() -> None:
    plain = RedisSettings.from_connection("127.0.0.1", 6379, "s3cret", {"db": 3})
    assert plain.url.get_secret_value() == "redis://:s3cret@127.0.0.1:6379/3" and plain.ssl_ca_certs is None
    assert "s3cret" not in repr(plain) and "ssl_ca_certs" not in plain.client_options()
    pg = PostgresSettings.from_connection(None, None, "db", "u", "pw", None)
    assert "sslmode" not in pg.conninfo() and "pw" not in repr(pg)
    assert ipaddress.ip_address(pg.host).is_loopback
