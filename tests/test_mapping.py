"""Mapping files are validated once, with errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from clientflow.mapping import ClientMapping, load_all, load_mapping

ROOT = Path(__file__).resolve().parent.parent


def _ehrlogic() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "include" / "mappings" / "ehrlogic.yaml").read_text())


def test_committed_mappings_are_valid_and_sorted() -> None:
    mappings = load_all()
    assert [m.client for m in mappings] == sorted(m.client for m in mappings)
    assert "ehrlogic" in [m.client for m in mappings]


def test_dbt_vars_carry_the_client_names_not_ours() -> None:
    mapping = ClientMapping.model_validate(_ehrlogic())
    entities = mapping.dbt_vars()["entities"]
    assert entities["patients"]["table"] == "dim_patient"  # type: ignore[index]
    assert entities["patients"]["columns"]["date_of_birth"] == {"source": "patient_dob"}  # type: ignore[index]
    assert entities["patients"]["columns"]["sex"]["default"] == "unknown"  # type: ignore[index]
    assert mapping.source_tables == ["dim_provider", "dim_patient", "fact_appointment"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["entities"]["patients"]["columns"].update(shoe_size="shoe"), "no such column"),
        (lambda d: d["entities"]["patients"]["columns"].pop("patient_id"), "key column 'patient_id'"),
        (lambda d: d["entities"].pop("appointments"), "entities not mapped"),
        (lambda d: d.update(client="Bad-Name"), "client"),
        (lambda d: d["entities"]["patients"].update(source_table="x" * 64), "63"),
        (lambda d: d["entities"]["providers"].update(source_table="dim_patient"), "same source table"),
        (lambda d: d.update(surprise=True), "surprise"),
    ],
)
def test_bad_mappings_are_refused_with_a_reason(change: Any, message: str) -> None:
    data = _ehrlogic()
    change(data)
    with pytest.raises((ValidationError, ValueError)) as info:
        ClientMapping.model_validate(data)
    assert message in str(info.value)


def test_file_name_must_match_client(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(_ehrlogic()))
    with pytest.raises(ValueError, match="must match the file name"):
        load_mapping(path)

