"""Every rule of the mapping vocabulary (docs/mapping.md) does what the documentation says, in the
real staging models on real PostgreSQL, and every value it cannot read is refused with its reason.

One test client, one row per example; the staging tables (stg_<client>.stg_<entity>) are read
back value by value (the batch itself is not promoted: its refused rows are past the threshold).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from clientflow import pipeline
from tests.support.practice import Practice, mapping_for
from tests.support.transform import transform

DAY = date(2026, 10, 1)
CLIENT = "vocab"

PATIENT_COLUMNS: dict[str, Any] = {
    "patient_id": {"source": ["loc", "pt_no"]},
    "first_name": {"source": "first", "case": "title"},
    "last_name": "last",
    "date_of_birth": {"source": "dob", "date_formats": ["YYYY-MM-DD", "MM/DD/YYYY", "YYYYMMDD"]},
    "sex": {"source": "sex", "values": {"f": "female", "m": "male"}, "default": "unknown"},
    "email": "mail",
    "phone": {"source": "tel", "phone": {"country_code": "1"}},
    "created_at": {"source": "created", "timestamp_formats": ["iso_with_offset", "iso_local",
                                                              "MM/DD/YYYY HH12:MI AM", "epoch_seconds"]},
}
PROVIDER_COLUMNS: dict[str, Any] = {
    "provider_id": "prov_id", "last_name": "prov_last",
    "specialty": {"default": "other"},
    "active": {"source": "flag", "boolean": {"true": ["y", "yes"], "false": ["n", "no"]}},
}
APPOINTMENT_COLUMNS: dict[str, Any] = {
    "appointment_id": "appt_id", "patient_id": ["loc", "pt_no"], "provider_id": "prov_id",
    "starts_at": {"source": "start", "timezone": "America/Chicago"}, "duration_minutes": "len",
    "status": {"default": "completed"}, "fee": {"source": "cents", "multiplier": 0.01},
}

# Appointments (a model of their own types them: typed_appointments) whose key comes more than once:
# (appt_id, len, changed), in file order. `duplicates: keep latest by changed`: the latest wins, and
# among equals the last in the file. len says which row is which.
DUPLICATE_VISITS = [
    ("A4", "10", "2025-03-02T00:00:00Z"), ("A4", "20", "2025-03-01T00:00:00Z"),  # the first is the latest
    ("A5", "10", "2025-03-01T00:00:00Z"), ("A5", "20", "2025-03-01T00:00:00Z"),  # equal: the last in the file
    ("A6", "10", "2025-03-01T00:00:00Z"), ("A6", "20", None), ("A6", "30", "2025-03-03T00:00:00Z"),  # no date: last
]
KEPT_VISITS = {"A4": (10, [1, 2]), "A5": (20, [1, 2]), "A6": (30, [1, 2, 3])}  # kept len, occurrences by len

# (loc, pt_no, the patient's values) -> what we expect (None: the value is refused, with a reason)
PATIENTS = [
    ({"first": "  aNA-MARÍA \t", "last": "Diaz", "dob": "1980-3-5", "sex": " F ", "mail": "Ana.Diaz@Mail.Example",
      "tel": "312-555-0101", "created": "2025-03-13T08:20:00-05:00"},
     {"first_name": "Ana-María", "date_of_birth": date(1980, 3, 5), "sex": "female", "email": "ana.diaz@mail.example",
      "phone": "+13125550101", "created_at": datetime(2025, 3, 13, 13, 20, tzinfo=UTC)}),
    ({"first": "", "last": "Eze", "dob": "03/05/1980", "sex": None, "mail": None, "tel": "+1 630 555 0101",
      "created": "2025-03-13 08:20"},
     {"first_name": None, "date_of_birth": date(1980, 3, 5), "sex": "unknown", "phone": "+16305550101",
      "created_at": datetime(2025, 3, 13, 12, 20, tzinfo=UTC)}),  # iso_local in the client's zone (New York, EDT)
    ({"first": "Kim", "last": "Lee", "dob": "19800305", "sex": "m", "mail": None, "tel": "(312) 555 0101",
      "created": "3/13/2025 12:05 AM"},
     {"date_of_birth": date(1980, 3, 5), "sex": "male", "phone": "+13125550101",
      "created_at": datetime(2025, 3, 13, 4, 5, tzinfo=UTC)}),
    ({"first": "Bo", "last": "Ng", "dob": "1980-02-30", "sex": "q", "mail": None, "tel": None, "created": "1741854000"},
     {"date_of_birth__error": "date_format", "sex__error": "unmapped_value",
      "created_at": datetime(2025, 3, 13, 8, 20, tzinfo=UTC)}),
    ({"first": "Al", "last": "  ", "dob": "02/30/1980", "sex": "f", "mail": "x", "tel": "12", "created": "2025-03-13T25:00:00"},
     {"last_name__error": "missing", "date_of_birth__error": "date_format", "email__error": "check",
      "phone__error": "check", "created_at__error": "timestamp_format"}),
]


def _tables() -> dict[str, list[dict[str, Any]]]:
    providers = [{"prov_id": "D1", "prov_last": "Ray", "flag": "Yes"}, {"prov_id": "D2", "prov_last": "Oz", "flag": "maybe"}]
    people = [{"loc": "L1", "pt_no": str(i), **values} for i, (values, _) in enumerate(PATIENTS)]
    visits = [
        {"appt_id": "A1", "loc": "L1", "pt_no": "0", "prov_id": "D1", "start": "2025-03-13T08:20:00", "len": "30.0",
         "cents": "4625"},
        {"appt_id": "A2", "loc": "L1", "pt_no": "1", "prov_id": "D1", "start": "2025-03-13T08:20:00", "len": "3000000000",
         "cents": "12.5e2"},
        {"appt_id": "A3", "loc": "L1", "pt_no": "2", "prov_id": "D1", "start": "2025-03-13T08:20:00", "len": "thirty",
         "cents": "NaN"},
        # Numbers PostgreSQL's numeric input cannot read ("value overflows numeric format", which
        # failed the whole model), then numbers of 31 and 40 digits: too large for the column.
        {"appt_id": "N1", "loc": "L1", "pt_no": "2", "prov_id": "D1", "start": "2025-03-13T08:20:00",
         "len": "1." + "0" * 20_000, "cents": "." + "1" * 20_000},
        {"appt_id": "N2", "loc": "L1", "pt_no": "2", "prov_id": "D1", "start": "2025-03-13T08:20:00",
         "len": "1" + "0" * 30, "cents": "9" * 40},
    ]
    visits = [{**v, "changed": None} for v in visits] + [
        {"appt_id": appt_id, "loc": "L1", "pt_no": "0", "prov_id": "D1", "start": "2025-03-13T08:20:00", "len": length,
         "cents": "100", "changed": changed} for appt_id, length, changed in DUPLICATE_VISITS]
    return {"clinician": providers, "person": people, "visit": visits}


@pytest.fixture(scope="module")
def staged(settings: Any) -> dict[str, dict[str, dict[str, Any]]]:
    mapping = mapping_for(CLIENT, tables={
        "clinician": {"entity": "providers", "columns": PROVIDER_COLUMNS},
        "person": {"entity": "patients", "columns": PATIENT_COLUMNS},
        "visit": {"entity": "appointments", "columns": APPOINTMENT_COLUMNS,
                  "duplicates": {"keep": "latest", "by": "changed", "by_type": "timestamp"}},
    }, timezone="America/New_York")
    found = Practice(settings, CLIENT).write(DAY, "r1", _tables(), mapping=mapping)
    batch = pipeline.ingest(settings, mapping, found, airflow_run_id="vocab")
    try:
        transform(settings, mapping, batch)
    finally:
        pipeline.mark_failed(settings, batch, "vocabulary test", airflow_run_id="vocab")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    with psycopg.connect(settings.staging.conninfo()) as conn:
        for entity, key in (("patients", "patient_id"), ("providers", "provider_id"), ("appointments", "appointment_id")):
            cur = conn.execute(f"select * from stg_{CLIENT}.stg_{entity}")  # noqa: S608 - our names
            names = [d.name for d in cur.description or []]
            out[entity] = {row[names.index(key)]: dict(zip(names, row, strict=True)) for row in cur
                           if row[names.index("occurrence")] == 1}
        out["duplicates"] = {f"{appt_id}/{length}": {"occurrence": occurrence, "has_error": has_error}
                             for appt_id, length, occurrence, has_error in conn.execute(
            f"select appointment_id, duration_minutes, occurrence, has_error from stg_{CLIENT}.stg_appointments "  # noqa: S608
            "where appointment_id = any(%s)", (list(KEPT_VISITS),))}
    return out


@pytest.mark.parametrize("number", range(len(PATIENTS)))
def test_each_patient_example(staged: Any, number: int) -> None:
    row = staged["patients"][f"L1-{number}"]  # the composite natural key, joined with '-'
    for column, want in PATIENTS[number][1].items():
        assert row[column] == want, column
        if column.endswith("__error") and want not in ("check", "not_accepted"):
            assert row[column.removesuffix("__error")] is None  # what cannot be read is never half-read
    errors = {k for k, v in row.items() if k.endswith("__error") and v is not None}
    assert errors == {k for k in PATIENTS[number][1] if k.endswith("__error")}
    assert row["has_error"] is bool(errors)


def test_booleans_constants_numbers_and_zones(staged: Any) -> None:
    providers, visits = staged["providers"], staged["appointments"]
    assert (providers["D1"]["active"], providers["D1"]["specialty"]) == (True, "other")
    assert providers["D2"]["active__error"] == "not_boolean"
    assert (visits["A1"]["duration_minutes"], visits["A1"]["fee"]) == (30, Decimal("46.25"))
    assert visits["A1"]["starts_at"] == datetime(2025, 3, 13, 13, 20, tzinfo=UTC)  # the column's own zone
    assert (visits["A2"]["duration_minutes__error"], visits["A2"]["fee"]) == ("out_of_range", Decimal("12.50"))
    assert (visits["A3"]["duration_minutes__error"], visits["A3"]["fee__error"]) == ("not_integer", "not_number")
    assert (visits["N1"]["duration_minutes__error"], visits["N1"]["fee__error"]) == ("not_integer", "not_number")
    assert (visits["N2"]["duration_minutes__error"], visits["N2"]["fee__error"]) == ("out_of_range", "out_of_range")


def test_the_latest_duplicate_of_a_typed_entity_is_kept(staged: Any) -> None:
    """Appointments are typed in typed_appointments and ranked in stg_appointments among the rows
    that share their key only: each key keeps one row (occurrence 1), the latest by `changed`,
    then the last in the file; the others are numbered after it, and none is refused."""
    duplicates = staged["duplicates"]
    assert len(duplicates) == len(DUPLICATE_VISITS)
    for appt_id, (kept, lengths) in KEPT_VISITS.items():
        assert staged["appointments"][appt_id]["duration_minutes"] == kept
        occurrences = sorted(duplicates[f"{appt_id}/{length}"]["occurrence"] for length in (10, 20, 30)
                             if f"{appt_id}/{length}" in duplicates)
        assert occurrences == lengths, appt_id
        assert duplicates[f"{appt_id}/{kept}"]["occurrence"] == 1
    assert not any(row["has_error"] for row in duplicates.values())
