"""Upload to S3 (moto's server): layout, multipart, retries, and a fault in the middle of an upload."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .conftest import FaultProxy, ServerErrorProxy, pg_connect, s3_client

ROWS = 30_000  # about 12 MB of JSON: three 5 MiB parts


def _tables(dbname: str) -> None:
    with pg_connect(dbname, autocommit=True) as conn:
        conn.execute("create table a_small (id int primary key, note text)")
        conn.execute("insert into a_small values (1, 'first'), (2, 'second')")
        conn.execute("create table big (id int primary key, payload text, amount numeric(12,2))")
        conn.execute(f"insert into big select i, repeat(md5(i::text), 12), i / 100.0 from generate_series(1, {ROWS}) i")


def _objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    s3 = s3_client(endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _check_complete(objects: dict[str, bytes], prefix: str, table: str, rows: int) -> dict[str, Any]:
    manifest = json.loads(objects[prefix + f"table={table}/date=20261122/run_id=r1/manifest.json"])
    data = objects[prefix + f"table={table}/date=20261122/run_id=r1/data.json"]
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["byte_size"] == len(data) and manifest["row_count"] == rows == len(json.loads(data))
    return manifest


def test_upload_layout_and_multipart(pg_db: str, bucket: str, moto_endpoint: str, run_extractor: Any) -> None:
    _tables(pg_db)
    res = run_extractor("--source", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "--client", "ehrlogic",
                        "--output", f"s3://{bucket}/landing/zone/", "--endpoint-url", moto_endpoint,
                        "--date", "2026-11-22", "--run-id", "r1", env={"EXTRACTOR_S3_PART_MB": "5"})
    assert res.returncode == 0, res.stderr
    objects = _objects(moto_endpoint, bucket)
    prefix = "landing/zone/client=ehrlogic/"
    assert sorted(objects) == sorted(prefix + f"table={t}/date=20261122/run_id=r1/{f}"
                                     for t in ("a_small", "big") for f in ("data.json", "manifest.json"))
    _check_complete(objects, prefix, "a_small", 2)
    _check_complete(objects, prefix, "big", ROWS)
    head = s3_client(moto_endpoint).head_object(Bucket=bucket, Key=prefix + "table=big/date=20261122/run_id=r1/data.json")
    assert head["ETag"].strip('"').endswith("-3")  # uploaded in three parts
    assert "s3://" in res.stdout and "2 table(s) extracted" in res.stdout


def test_fault_mid_upload_leaves_no_manifest_and_rerun_completes(pg_db: str, bucket: str, moto_endpoint: str, run_extractor: Any) -> None:
    _tables(pg_db)
    src = f"postgresql://postgres@127.0.0.1:5432/{pg_db}"
    args = ["--source", src, "--client", "ehrlogic", "--output", f"s3://{bucket}", "--date", "2026-11-22", "--run-id", "r1"]
    env = {"EXTRACTOR_S3_PART_MB": "5", "EXTRACTOR_S3_MAX_ATTEMPTS": "2"}
    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]), fail_after=7 * 1024 * 1024, mode="dead")
    try:
        res = run_extractor(*args, "--endpoint-url", proxy.endpoint, env=env)
    finally:
        proxy.close()
    assert proxy.tripped
    assert res.returncode == 5, res.stderr
    assert "re-run with --run-id r1 --date 2026-11-22" in res.stderr and "big" in res.stderr
    objects = _objects(moto_endpoint, bucket)
    prefix = "client=ehrlogic/"
    assert not any(k.startswith(prefix + "table=big/") and k.endswith("manifest.json") for k in objects)
    _check_complete(objects, prefix, "a_small", 2)  # finished before the fault
    first_small = objects[prefix + "table=a_small/date=20261122/run_id=r1/manifest.json"]

    res = run_extractor(*args, "--endpoint-url", moto_endpoint, env=env)
    assert res.returncode == 0, res.stderr
    assert "already complete" in res.stdout
    objects = _objects(moto_endpoint, bucket)
    _check_complete(objects, prefix, "big", ROWS)
    assert objects[prefix + "table=a_small/date=20261122/run_id=r1/manifest.json"] == first_small  # not rewritten


def _extract_through(proxy: Any, pg_db: str, bucket: str, run_extractor: Any) -> Any:
    """Run r1 of the test tables to S3 through ``proxy`` (a fault injector in front of moto)."""
    _tables(pg_db)
    try:
        return run_extractor("--source", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "--client", "ehrlogic",
                             "--output", f"s3://{bucket}", "--endpoint-url", proxy.endpoint, "--date", "2026-11-22",
                             "--run-id", "r1", env={"EXTRACTOR_S3_PART_MB": "5"})
    finally:
        proxy.close()


def test_transient_fault_is_absorbed_by_retries(pg_db: str, bucket: str, moto_endpoint: str, run_extractor: Any) -> None:
    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]), fail_after=6 * 1024 * 1024, mode="once")
    res = _extract_through(proxy, pg_db, bucket, run_extractor)
    assert proxy.tripped
    assert res.returncode == 0, res.stderr
    objects = _objects(moto_endpoint, bucket)
    _check_complete(objects, "client=ehrlogic/", "big", ROWS)


def test_missing_bucket_and_credentials_fail_before_reading(pg_db: str, moto_endpoint: str, run_extractor: Any) -> None:
    src = f"postgresql://postgres@127.0.0.1:5432/{pg_db}"
    res = run_extractor("--source", src, "--client", "c", "--output", "s3://no-such-bucket-here", "--endpoint-url", moto_endpoint)
    assert res.returncode == 5 and "no-such-bucket-here" in res.stderr
    res = run_extractor("--source", src, "--client", "c", "--output", "s3://x", "--endpoint-url", moto_endpoint,
                        env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                             "AWS_CONFIG_FILE": "/nonexistent"})
    assert res.returncode == 5 and "credentials" in res.stderr


def test_server_errors_are_retried_and_a_lost_manifest_answer_is_recognised(pg_db: str, bucket: str, moto_endpoint: str,
                                                                            run_extractor: Any) -> None:
    """Every write is refused once with 503 and each manifest's answer is lost (500 after it landed):
    the batch still completes, with every file intact and nothing written twice."""
    proxy = ServerErrorProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    res = _extract_through(proxy, pg_db, bucket, run_extractor)
    assert res.returncode == 0, res.stderr
    refused = sorted(proxy.refused)
    assert sum("partNumber=" in k for k in refused) == 3, refused  # each part of the big table, once
    assert any(k.startswith("POST ") and k.endswith("?uploads") for k in refused), refused  # CreateMultipartUpload
    assert any(k.startswith("PUT ") and "table=a_small" in k and k.endswith("/data.json") for k in refused), refused
    assert len(proxy.lost) == 2, proxy.lost  # both manifests landed, their answers were lost
    assert all(proxy.attempts[k] == 2 for k in proxy.lost)
    objects = _objects(moto_endpoint, bucket)
    _check_complete(objects, "client=ehrlogic/", "a_small", 2)
    _check_complete(objects, "client=ehrlogic/", "big", ROWS)


def test_server_errors_that_persist_fail_after_five_attempts_without_a_manifest(pg_db: str, bucket: str, moto_endpoint: str,
                                                                               run_extractor: Any) -> None:
    proxy = ServerErrorProxy(int(moto_endpoint.rsplit(":", 1)[1]), always="table=big/")
    res = _extract_through(proxy, pg_db, bucket, run_extractor)
    assert res.returncode == 5, res.stderr
    assert "failed after retries" in res.stderr and "re-run with --run-id r1 --date 2026-11-22" in res.stderr
    big = {k: n for k, n in proxy.attempts.items() if "table=big/" in k and k.startswith(("PUT ", "POST "))}
    assert big and max(big.values()) == 5, big  # the default: five attempts, then give up
    objects = _objects(moto_endpoint, bucket)
    assert not any(k.startswith("client=ehrlogic/table=big/") for k in objects), sorted(objects)
    _check_complete(objects, "client=ehrlogic/", "a_small", 2)
