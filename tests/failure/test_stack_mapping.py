"""Failure simulations of a client's data against its mapping, on the running local stack: a mapped
column renamed at the source, and values the mapping cannot read. Each batch stops with production
unchanged and one email that names the cause; the engineer fixes the mapping file, the DAG picks it
up, the same batch is run again and promoted, and ``clientflow reconcile`` finds nothing lost or
duplicated. (Runs after tests/failure/test_stack_faults.py: its batches are of older dates.)
"""

from __future__ import annotations

import pytest

from tests.failure.stack import (
    SMALL,
    SOURCES,
    _batches,
    _day,
    _edit_mapping,
    _extract,
    _failure_mails,
    _fingerprint,
    _production,
    _quietly,
    _raw_batches,
    _reconciled,
    _settled,
    _source,
    _task_states,
    _trigger,
    _wait_state,
)
from tests.support.mail import body_of

pytestmark = pytest.mark.failure


def test_a_mapped_column_renamed_at_the_source_stops_before_dbt_and_runs_once_the_mapping_follows() -> None:
    day = _day(5)
    before = _fingerprint(SMALL)
    _source(SMALL, "alter table dim_patient rename column pt_email to pt_email_address")
    with _quietly():
        _extract(SMALL, day, "renamed")
        run = _trigger(SMALL, day, "renamed")
        _wait_state(SMALL, day, "FAILED")
        _settled(SMALL)
    assert _fingerprint(SMALL) == before  # production unchanged
    dbt = _task_states(SMALL, run, "transform.")
    assert dbt and not {s for s in dbt.values() if s in ("success", "failed", "running")}, dbt  # stopped before dbt
    mails = _failure_mails(SMALL, day)
    assert len(mails) == 1, [m["Subject"] for m in mails]
    assert "pt_email" in body_of(mails[0]) and "dim_patient" in body_of(mails[0])

    _edit_mapping(SMALL, "email: pt_email\n", "email: pt_email_address\n")
    with _quietly():
        _trigger(SMALL, day, "renamed")  # the same batch again, now that the mapping follows the source
        _wait_state(SMALL, day, "SUCCESS")
        _settled(SMALL)
    assert [s for _r, s in _batches(SMALL, day)] == ["SUCCESS"]
    emails = _production(SMALL, "select count(email) from practice.patients where client_id = %s")
    assert emails[0][0] > 0  # the renamed column's values arrived under our column
    assert len(_failure_mails(SMALL, day)) == 1
    _reconciled(SMALL)


def test_values_the_mapping_cannot_read_stop_the_batch_and_its_rerun_after_the_fix_promotes() -> None:
    """Half the patients' birth dates arrive as DD.MM.YYYY, a format the mapping does not list: the
    staging model refuses them (rejects, by row and rule), the rejects gate stops the batch before
    promotion, the raw batches kept from earlier runs stay, production is unchanged."""
    day = _day(4)
    _source(SMALL, "update dim_patient set patient_dob = to_char(patient_dob::date, 'DD.MM.YYYY') "
                   "where pt_id % 2 = 0 and patient_dob is not null")
    before, raw_before = _fingerprint(SMALL), _raw_batches(SMALL, "dim_patient")
    with _quietly():
        _extract(SMALL, day, "dotted")
        _trigger(SMALL, day, "dotted")
        _wait_state(SMALL, day, "FAILED")
        _settled(SMALL)
    assert _fingerprint(SMALL) == before
    raw_after = _raw_batches(SMALL, "dim_patient")
    assert {k: v for k, v in raw_after.items() if k in raw_before} == raw_before  # earlier raw batches intact
    mails = _failure_mails(SMALL, day)
    assert len(mails) == 1, [m["Subject"] for m in mails]
    assert "rejects" in body_of(mails[0])

    _edit_mapping(SMALL, 'date_formats: ["YYYY-MM-DD", "MM/DD/YYYY"]', 'date_formats: ["YYYY-MM-DD", "MM/DD/YYYY", "DD.MM.YYYY"]')
    with _quietly():
        _trigger(SMALL, day, "dotted")
        _wait_state(SMALL, day, "SUCCESS")
        _settled(SMALL)
    born = _production(SMALL, "select count(date_of_birth) from practice.patients where client_id = %s")
    assert born[0][0] >= SOURCES[SMALL][1] // 2  # the dotted dates were read this time
    _reconciled(SMALL)
