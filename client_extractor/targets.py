"""Outputs: the same layout under a local folder or an S3 prefix. data.json first, manifest.json last.

A Target never overwrites a manifest: the local folder links it into place (which fails if it exists),
S3 writes it with If-None-Match. data.json is written to a temporary file and committed (renamed, or
uploaded with retries) before the manifest, so a manifest always describes a complete data file.
Prefixes handed to a Target are ``contract.run_prefix(...)``: the folder of one table's two files.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, BinaryIO

from client_extractor import PROG, VERSION
from client_extractor.contract import DATA_FILE, MANIFEST_FILE
from client_extractor.errors import OutputError, UsageError
from client_extractor.settings import Settings

PART_SIZE_ENV = "EXTRACTOR_S3_PART_MB"
MAX_ATTEMPTS_ENV = "EXTRACTOR_S3_MAX_ATTEMPTS"


class Target:
    description = ""

    def check(self) -> None:
        raise NotImplementedError

    def manifest_exists(self, prefix: str) -> bool:
        raise NotImplementedError

    def open_data(self, prefix: str) -> tuple[BinaryIO, str]:
        raise NotImplementedError

    def commit_data(self, prefix: str, tmp_path: str, size: int) -> None:
        raise NotImplementedError

    def discard(self, tmp_path: str) -> None:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass

    def put_manifest(self, prefix: str, body: bytes) -> None:
        raise NotImplementedError


class LocalTarget(Target):
    def __init__(self, root: str) -> None:
        self.root = root
        self.description = os.path.abspath(root)

    def check(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {self.root}: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise OutputError(f"output folder {self.root} is not writable")

    def _dir(self, prefix: str) -> str:
        return os.path.join(self.root, *prefix.rstrip("/").split("/"))

    def manifest_exists(self, prefix: str) -> bool:
        return os.path.exists(os.path.join(self._dir(prefix), MANIFEST_FILE))

    def open_data(self, prefix: str) -> tuple[BinaryIO, str]:
        folder = self._dir(prefix)
        try:
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{DATA_FILE}.partial")
            return open(tmp, "wb", buffering=1 << 20), tmp
        except OSError as exc:
            raise OutputError(f"cannot write in {folder}: {exc.strerror}") from None

    def commit_data(self, prefix: str, tmp_path: str, size: int) -> None:
        try:
            os.replace(tmp_path, os.path.join(self._dir(prefix), DATA_FILE))
        except OSError as exc:
            raise OutputError(f"cannot finish {self._dir(prefix)}/{DATA_FILE}: {exc.strerror}") from None

    def put_manifest(self, prefix: str, body: bytes) -> None:
        folder = self._dir(prefix)
        final = os.path.join(folder, MANIFEST_FILE)
        tmp = os.path.join(folder, f".{MANIFEST_FILE}.partial")
        try:
            with open(tmp, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, final)  # fails if it exists: never overwrite a manifest
        except FileExistsError:
            raise OutputError(f"{final} already exists (another run with the same --run-id?); nothing was overwritten") from None
        except OSError as exc:
            raise OutputError(f"cannot write {final}: {exc.strerror}") from None
        finally:
            self.discard(tmp)


def _why(exc: Exception) -> str:
    """The error's class and S3's error code (AccessDenied, InvalidAccessKeyId, ...) if it names one."""
    import re

    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    found = code or next(iter(re.findall(r"An error occurred \((\w+)\)", str(exc))), None)
    hint = {"AccessDenied": "these credentials may not write here", "InvalidAccessKeyId": "unknown access key",
            "SignatureDoesNotMatch": "wrong secret key"}.get(str(found), "")
    return type(exc).__name__ + (f": {found}" if found else "") + (f", {hint}" if hint else "")


class S3Target(Target):
    def __init__(self, url: str, endpoint_url: str | None) -> None:
        rest = url[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError("--output s3:// needs a bucket: s3://bucket[/prefix]")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.description = f"s3://{bucket}/{self.prefix}"
        self.tmp_dir = tempfile.gettempdir()

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config

        attempts = int(os.environ.get(MAX_ATTEMPTS_ENV, "5"))
        config = Config(
            # total_max_attempts counts the first try (max_attempts would count retries only: one more);
            # standard mode: exponential backoff with jitter on network errors, throttling and 5xx
            retries={"total_max_attempts": max(1, attempts), "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            user_agent_extra=f"{PROG}/{VERSION}",
        )
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)

    def check(self) -> None:
        import botocore.exceptions as bx

        try:
            self.s3 = self._client()
            self.s3.head_bucket(Bucket=self.bucket)
        except bx.NoCredentialsError:
            raise OutputError("no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
        except bx.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            if str(code) in {"403", "AccessDenied", "Forbidden"}:
                return  # upload-only credentials (clientflow upload-policy) may not list the bucket; puts will tell
            raise OutputError(f"cannot use bucket {self.bucket!r} ({code}): check the bucket name and that these credentials may write to it") from None
        except (bx.BotoCoreError, ValueError) as exc:
            raise OutputError(f"cannot reach S3{' at ' + self.endpoint_url if self.endpoint_url else ''}: {type(exc).__name__}: {exc}") from None

    def manifest_exists(self, prefix: str) -> bool:
        import botocore.exceptions as bx

        try:
            self.s3.head_object(Bucket=self.bucket, Key=self.prefix + prefix + MANIFEST_FILE)
            return True
        except bx.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NotFound"}:
                return False
            if code in {"403", "AccessDenied"}:
                return False  # may not read; the conditional write still refuses to overwrite
            raise OutputError(f"cannot check s3://{self.bucket}/{self.prefix}{prefix}{MANIFEST_FILE}: {code}") from None
        except bx.BotoCoreError as exc:
            raise OutputError(f"cannot reach S3: {type(exc).__name__}") from None

    def open_data(self, prefix: str) -> tuple[BinaryIO, str]:
        try:
            fd, tmp = tempfile.mkstemp(prefix="client-extractor-", suffix=".json", dir=self.tmp_dir)
            return os.fdopen(fd, "wb", buffering=1 << 20), tmp
        except OSError as exc:
            raise OutputError(f"cannot create a temporary file in {self.tmp_dir} (set TMPDIR to a folder with space): {exc.strerror}") from None

    def commit_data(self, prefix: str, tmp_path: str, size: int) -> None:
        import botocore.exceptions as bx
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig

        part = max(5, int(os.environ.get(PART_SIZE_ENV, "16"))) * 1024 * 1024
        part = max(part, -(-size // 9000))  # S3 allows 10,000 parts
        config = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=4, use_threads=True)
        key = self.prefix + prefix + DATA_FILE
        try:
            self.s3.upload_file(tmp_path, self.bucket, key, ExtraArgs={"ContentType": "application/json"}, Config=config)
        except (S3UploadFailedError, bx.BotoCoreError, bx.ClientError) as exc:
            raise OutputError(f"upload of s3://{self.bucket}/{key} failed after retries ({_why(exc)}); no manifest was written, re-run with the same --run-id and --date to complete the batch") from None

    def put_manifest(self, prefix: str, body: bytes) -> None:
        import botocore.exceptions as bx

        key = self.prefix + prefix + MANIFEST_FILE
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
        except bx.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"PreconditionFailed", "412"}:
                if self._same_manifest(key, body):
                    return  # our own earlier attempt landed before its response was lost
                raise OutputError(f"s3://{self.bucket}/{key} already exists (another run with the same --run-id?); nothing was overwritten; "
                                  "with upload-only credentials a run cannot be resumed: start a new one without --run-id") from None
            raise OutputError(f"writing s3://{self.bucket}/{key} failed ({code}); re-run with the same --run-id and --date") from None
        except bx.BotoCoreError as exc:
            raise OutputError(f"writing s3://{self.bucket}/{key} failed ({type(exc).__name__}); re-run with the same --run-id and --date") from None

    def _same_manifest(self, key: str, body: bytes) -> bool:
        try:
            return bool(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read() == body)
        except Exception:  # noqa: BLE001 - treat as different
            return False


def make_target(settings: Settings) -> Target:
    if settings.output.startswith("s3://"):
        return S3Target(settings.output, settings.endpoint_url)
    if "://" in settings.output:
        raise UsageError("--output must be a local folder or s3://bucket[/prefix]")
    return LocalTarget(settings.output)
