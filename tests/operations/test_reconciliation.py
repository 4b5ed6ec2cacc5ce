"""The reconciliation's reading of the bucket (moto's S3 server): a table whose name needs quoting in
a key (the contract quotes it) is read where the extractor wrote it. tests/e2e/test_reconcile.py
runs the whole command through real batches."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from typing import Any

from clientflow.operations import reconciliation
from tests.support.batches import manifest_for, put_table
from tests.support.practice import mapping_for

DAY = date(2026, 9, 14)


def test_a_table_name_with_a_space_is_read_from_its_quoted_key(settings: Any) -> None:
    mapping = mapping_for("recon_quoted")
    rows = [{"visit_id": "V1"}, {"visit_id": "V2"}]
    body = json.dumps(rows).encode()
    columns = [{"name": "visit_id", "source_type": "text", "encoding": "string", "nullable": True,
                "primary_key": False}]
    manifest = manifest_for(mapping.client, "Patient Visits", DAY, "r1", body, len(rows), columns)
    put_table(settings.s3.client(), settings.s3.bucket, mapping.client, "Patient Visits", DAY, "r1", body, manifest)

    stored = reconciliation._bucket(settings, mapping, DAY, verify_data=True)

    found = stored[(DAY, "r1")]
    assert found.manifests["Patient Visits"][:2] == (2, hashlib.sha256(body).hexdigest())
    assert found.data_sha["Patient Visits"] == hashlib.sha256(body).hexdigest()
