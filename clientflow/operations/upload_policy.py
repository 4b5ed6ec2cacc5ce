"""The S3 credentials a client uploads with: put new objects under its own prefix, nothing else.

``clientflow upload-policy CLIENT`` prints the IAM policy of the client's upload user (attach it
to an IAM user or role of the client's own; docs/extractor.md, "Upload credentials"):

- ``s3:PutObject`` on ``client=<client>/table=*/date=*/run_id=*/data.json`` and on the same
  folders' ``manifest.json``, the manifest only as a conditional write (``If-None-Match: *``,
  the ``s3:if-none-match`` condition key): a manifest already in the bucket is never replaced, and
  the extractor always writes manifests that way. A multipart upload of a large data file is
  ``s3:PutObject`` too; ``s3:AbortMultipartUpload`` lets the extractor clean up a failed one.
- nothing to read, list or delete: no ``s3:GetObject``, ``s3:ListBucket``, ``s3:DeleteObject``,
  and nothing outside the client's prefix. The extractor copes: the bucket's existence is not
  checked by listing it, and a manifest it cannot read is one it will not overwrite.

What IAM cannot refuse: boto3's transfer manager sends no ``If-None-Match`` on ``data.json``, so
a data file could be uploaded again before its manifest. A data file replaced after its manifest
fails the pipeline's sha256 check (the batch is refused), and ``clientflow reconcile`` names a
promoted batch whose data changed. Bucket versioning keeps every earlier version.
"""

from __future__ import annotations

from typing import Any

from client_extractor.contract import CLIENT_NAME, DATA_FILE, MANIFEST_FILE


def upload_policy(client: str, bucket: str) -> dict[str, Any]:
    if not CLIENT_NAME.fullmatch(client):
        raise ValueError(f"{client!r} is not a client name (lower-case letters, digits and _; a letter first)")
    folder = f"arn:aws:s3:::{bucket}/client={client}/table=*/date=*/run_id=*/"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "PutDataFiles", "Effect": "Allow", "Action": "s3:PutObject",
             "Resource": folder + DATA_FILE},
            {"Sid": "PutManifestsOnlyIfNew", "Effect": "Allow", "Action": "s3:PutObject",
             "Resource": folder + MANIFEST_FILE,
             "Condition": {"Null": {"s3:if-none-match": "false"}}},
            {"Sid": "AbortOwnMultipartUploads", "Effect": "Allow", "Action": "s3:AbortMultipartUpload",
             "Resource": f"arn:aws:s3:::{bucket}/client={client}/*"},
        ],
    }
