"""The failure suite's S3 proxy (tests/failure/proxy.py) against a real moto server: it forwards S3 and
SQS, and while S3 is unavailable it answers S3 calls 503 Slow Down (boto raises it as S3 would) and
cuts the S3 connections already open, while SQS calls still go through."""

from __future__ import annotations

import os
import socket
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.failure.proxy import S3Proxy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _client(service: str, port: int) -> Any:
    return boto3.client(service, endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="k", aws_secret_access_key="s",
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}))


def test_s3_answers_503_only_while_unavailable_and_sqs_goes_on(s3_server: str) -> None:
    bucket = f"proxy-{os.getpid()}"
    upstream = int(s3_server.rsplit(":", 1)[1])
    proxy = S3Proxy(_free_port(), upstream, bucket)
    try:
        s3, sqs = _client("s3", proxy.port), _client("sqs", proxy.port)
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="k", Body=b"kept")  # this connection stays open (keep-alive)
        with proxy.unavailable():
            with pytest.raises(ClientError) as refused:
                s3.get_object(Bucket=bucket, Key="k")
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert refused.value.response["Error"]["Code"] == "SlowDown"
            url = sqs.create_queue(QueueName=f"proxy-{os.getpid()}")["QueueUrl"]  # SQS is not S3: it answers
            assert url in sqs.list_queues()["QueueUrls"]
        assert proxy.refused >= 1
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"kept"  # back once the block ends
    finally:
        proxy.close()
