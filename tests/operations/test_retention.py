"""Raw tables as a queue: batches accumulate, a failed transformation keeps every earlier raw batch,
and promoted batches are pruned only beyond raw_retention_batches. Real PostgreSQL, S3 and dbt."""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg
import pytest

from clientflow.errors import ValidationFailed
from tests.support.practice import (
    Practice,
    ingestion_id,
    mapping_for,
    production_rows,
    raw_counts,
    run_batch,
    tables,
)


def test_raw_batches_are_kept_until_newer_ones_are_promoted(settings: Any) -> None:
    mapping = mapping_for("queue")  # raw_retention_batches: 2
    practice = Practice(settings, mapping.client)
    one = run_batch(settings, mapping, practice.write(date(2026, 7, 1), "r1", tables(3, "one")))
    two = run_batch(settings, mapping, practice.write(date(2026, 7, 2), "r2", tables(3, "two")))
    assert raw_counts(settings, mapping.client, "person") == {one.ingestion_id: 3, two.ingestion_id: 3}

    # A batch the validation stops (an unparseable date of birth in 1 of 4 rows: past the 1% threshold).
    broken = tables(4, "three")
    broken["person"][1]["patient_dob"] = "not a date"
    found = practice.write(date(2026, 7, 3), "r3", broken)
    with pytest.raises(ValidationFailed, match="gate rejects"):
        run_batch(settings, mapping, found)
    three = ingestion_id(mapping.client, date(2026, 7, 3), broken)
    assert raw_counts(settings, mapping.client, "person") == {
        one.ingestion_id: 3, two.ingestion_id: 3, three: 4}
    assert production_rows(settings, mapping.client, "patients", "last_name")["P0"] == ("Name0-two",)
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert conn.execute("select state from pipeline.batches where ingestion_id = %s",
                            (three,)).fetchone() == ("FAILED",)

    # A newer batch is promoted: only then does the oldest promoted batch leave the raw tables.
    four = run_batch(settings, mapping, practice.write(date(2026, 7, 4), "r4", tables(3, "four")))
    assert raw_counts(settings, mapping.client, "person") == {
        two.ingestion_id: 3, three: 4, four.ingestion_id: 3}
    assert raw_counts(settings, mapping.client, "visit").keys() == {two.ingestion_id, three, four.ingestion_id}
