"""A client's upload credentials (``clientflow upload-policy``): new objects under its own prefix.

The policy document is checked as written; then moto's server, with its IAM enforcement on
(``INITIAL_NO_AUTH_ACTION_COUNT``: the set-up's requests are free, every later one is checked
against the caller's IAM policies), holds an upload user with exactly that policy. Moto enforces
actions and resources; it ignores the ``s3:if-none-match`` condition (it evaluates only
``StringEquals``), so that part is checked on the document, and the manifest that is never
overwritten by moto's own ``If-None-Match`` handling.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from clientflow import cli
from clientflow.operations import upload_keys
from clientflow.operations.upload_policy import upload_policy

from .conftest import VENV_BIN, free_port, pg_connect, wait_port

BUCKET, CLIENT = "landing-iam", "ehrlogic"
SETUP_REQUESTS = 7  # create the bucket; the admin and the uploader: user, policy, access key


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return list(policy["Statement"])


def test_the_policy_only_puts_under_the_client_s_prefix() -> None:
    policy = upload_policy(CLIENT, BUCKET)
    actions = {s["Action"] for s in _statements(policy)}
    assert actions == {"s3:PutObject", "s3:AbortMultipartUpload"}
    assert all(s["Effect"] == "Allow" for s in _statements(policy))
    assert all(s["Resource"].startswith(f"arn:aws:s3:::{BUCKET}/client={CLIENT}/") for s in _statements(policy))
    puts = {s["Resource"].rsplit("/", 1)[1]: s for s in _statements(policy) if s["Action"] == "s3:PutObject"}
    assert set(puts) == {"data.json", "manifest.json"}
    assert puts["manifest.json"]["Condition"] == {"Null": {"s3:if-none-match": "false"}}  # only as a new object
    assert "Condition" not in puts["data.json"]


def test_the_command_prints_it_and_refuses_a_bad_client_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["upload-policy", CLIENT, "--bucket", BUCKET]) == 0
    assert json.loads(capsys.readouterr().out) == upload_policy(CLIENT, BUCKET)
    assert cli.main(["upload-policy", "Ehr/*", "--bucket", BUCKET]) == 2
    assert "is not a client name" in capsys.readouterr().err


def _client(endpoint: str, keys: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=keys["id"],
                        aws_secret_access_key=keys["secret"])


@pytest.fixture
def iam_s3() -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    """moto's server with IAM enforced: (endpoint, the admin's keys, the uploader's keys)."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS)}
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        anyone = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup", "region_name": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, **anyone).create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", endpoint_url=endpoint, **anyone)
        keys = {}
        for user, document in (("admin", {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]}), ("uploader", upload_policy(CLIENT, BUCKET))):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(document))
            made = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = {"id": made["AccessKeyId"], "secret": made["SecretAccessKey"]}
        _client(endpoint, keys["admin"]).list_objects_v2(Bucket=BUCKET)  # enforced from here on, and the admin may
        yield endpoint, keys["admin"], keys["uploader"]
    finally:
        proc.terminate()
        proc.wait(10)


def _denied(call: Any, **kwargs: Any) -> None:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    assert caught.value.response["Error"]["Code"] in {"AccessDenied", "403"}, caught.value.response


def test_the_upload_user_can_put_and_nothing_else(iam_s3: tuple[str, dict[str, str], dict[str, str]]) -> None:
    endpoint, admin, uploader = iam_s3
    s3 = _client(endpoint, uploader)
    folder = f"client={CLIENT}/table=t/date=20261201/run_id=r1/"
    s3.put_object(Bucket=BUCKET, Key=folder + "data.json", Body=b"[]")
    s3.put_object(Bucket=BUCKET, Key=folder + "manifest.json", Body=b"{}", IfNoneMatch="*")
    _denied(s3.get_object, Bucket=BUCKET, Key=folder + "data.json")
    _denied(s3.list_objects_v2, Bucket=BUCKET)
    _denied(s3.delete_object, Bucket=BUCKET, Key=folder + "data.json")
    _denied(s3.put_object, Bucket=BUCKET, Key="client=iriscare/table=t/date=20261201/run_id=r1/data.json", Body=b"[]")
    _denied(s3.put_object, Bucket=BUCKET, Key=f"client={CLIENT}/notes.txt", Body=b"x")
    with pytest.raises(ClientError) as caught:  # never overwritten, whoever asks
        s3.put_object(Bucket=BUCKET, Key=folder + "manifest.json", Body=b"{ }", IfNoneMatch="*")
    assert caught.value.response["Error"]["Code"] in {"PreconditionFailed", "412"}
    kept = _client(endpoint, admin).get_object(Bucket=BUCKET, Key=folder + "manifest.json")["Body"].read()
    assert kept == b"{}"


def test_the_extractor_runs_on_upload_only_credentials(iam_s3: tuple[str, dict[str, str], dict[str, str]],
                                                      pg_db: str, run_extractor: Any) -> None:
    endpoint, admin, uploader = iam_s3
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute("create table dim_patient (pt_id int primary key, pt_last text)")
        conn.execute("insert into dim_patient values (1, 'A'), (2, 'B')")
    args = ["--source", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "--client", CLIENT, "--output",
            f"s3://{BUCKET}", "--endpoint-url", endpoint, "--date", "2026-12-01", "--run-id", "r1"]
    creds = {"AWS_ACCESS_KEY_ID": uploader["id"], "AWS_SECRET_ACCESS_KEY": uploader["secret"]}
    first = run_extractor(*args, env=creds)
    assert first.returncode == 0, first.stderr
    listed = _client(endpoint, admin).list_objects_v2(Bucket=BUCKET)["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        f"client={CLIENT}/table=dim_patient/date=20261201/run_id=r1/{f}" for f in ("data.json", "manifest.json")]
    again = run_extractor(*args, env=creds)  # the same run id again: its manifest stays as it was
    assert again.returncode != 0
    assert "already exists" in again.stderr and "nothing was overwritten" in again.stderr


# Onboarding and rotation: ``clientflow upload-key`` makes the upload user and swaps its keys.


def test_a_key_rotation_never_leaves_the_client_without_credentials(
        iam_s3: tuple[str, dict[str, str], dict[str, str]], tmp_path: Path) -> None:
    endpoint, admin, _uploader = iam_s3
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=admin["id"],
                       aws_secret_access_key=admin["secret"])
    old_id, old_secret = upload_keys.create_key(iam, CLIENT, BUCKET)
    assert iam.get_user_policy(UserName="clientflow-upload-ehrlogic", PolicyName="clientflow-upload")[
        "PolicyDocument"] == upload_policy(CLIENT, BUCKET)
    folder = f"client={CLIENT}/table=t/date=20261202/run_id=r1/"
    old = _client(endpoint, {"id": old_id, "secret": old_secret})
    old.put_object(Bucket=BUCKET, Key=folder + "data.json", Body=b"[]")
    _denied(old.get_object, Bucket=BUCKET, Key=folder + "data.json")  # the user holds the upload policy only

    new_id, new_secret = upload_keys.create_key(iam, CLIENT, BUCKET)
    with pytest.raises(upload_keys.KeyActionRefused, match="already holds 2 keys"):
        upload_keys.create_key(iam, CLIENT, BUCKET)
    upload_keys.retire_key(iam, CLIENT, old_id)
    assert [k.key_id for k in upload_keys.list_keys(iam, CLIENT)] == [new_id]
    with pytest.raises(ClientError) as caught:
        old.put_object(Bucket=BUCKET, Key=folder + "manifest.json", Body=b"{}")
    assert caught.value.response["Error"]["Code"] in {"InvalidAccessKeyId", "AccessDenied", "403"}
    _client(endpoint, {"id": new_id, "secret": new_secret}).put_object(Bucket=BUCKET, Key=folder + "manifest.json",
                                                                      Body=b"{}", IfNoneMatch="*")
    with pytest.raises(upload_keys.KeyActionRefused, match="only upload key"):
        upload_keys.retire_key(iam, CLIENT, new_id)
    with pytest.raises(upload_keys.KeyActionRefused, match="has no key"):
        upload_keys.retire_key(iam, CLIENT, old_id)
    upload_keys.retire_key(iam, CLIENT, new_id, offboard=True)
    assert upload_keys.list_keys(iam, CLIENT) == []

    written = tmp_path / "ehrlogic.env"
    upload_keys.write_credentials(written, CLIENT, "AKIDEXAMPLE", "s3cr3t")
    assert written.stat().st_mode & 0o777 == 0o600
    assert "AWS_SECRET_ACCESS_KEY=s3cr3t" in written.read_text()
    with pytest.raises(FileExistsError):
        upload_keys.write_credentials(written, CLIENT, "AKIDOTHER", "other")
