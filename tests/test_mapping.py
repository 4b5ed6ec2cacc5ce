"""Mapping files are validated once, with errors that name the file, the line and the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from clientflow.cli import mapping_schema
from clientflow.mapping import ClientMapping, MappingError, load_all, load_mapping, parse_mapping

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "include" / "mappings"


def _ehrlogic() -> dict[str, Any]:
    return yaml.safe_load((MAPPINGS / "ehrlogic.yaml").read_text())


def test_committed_mappings_are_valid_and_sorted() -> None:
    mappings = load_all()
    assert [m.client for m in mappings] == sorted(m.client for m in mappings)
    assert {"ehrlogic", "iriscare"} <= {m.client for m in mappings}


def test_every_mapping_file_points_editors_at_the_schema_and_validates_against_it() -> None:
    schema = json.loads((MAPPINGS / "mapping.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in MAPPINGS.glob("*.yaml"):
        assert path.read_text().startswith("# yaml-language-server: $schema=mapping.schema.json\n"), path.name
        jsonschema.validate(json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str)), schema)


def test_published_schema_is_current() -> None:
    assert (MAPPINGS / "mapping.schema.json").read_text() == mapping_schema(), \
        "run `clientflow mapping-schema > include/mappings/mapping.schema.json`"


def test_dbt_vars_carry_the_client_names_and_resolved_rules() -> None:
    mapping = ClientMapping.model_validate(_ehrlogic())
    patients = json.loads(mapping.dbt_vars()["mapping"])["patients"]["tables"][0]
    assert patients["name"] == "dim_patient"
    dob = patients["columns"]["date_of_birth"]
    assert dob["sources"] == ["patient_dob"] and [f["pattern"] for f in dob["formats"]] == ["YYYY-MM-DD", "MM/DD/YYYY"]
    assert patients["columns"]["email"]["email"] is True  # our email column is lower-cased by default
    assert patients["columns"]["sex"]["default"] == "unknown"
    assert patients["columns"]["last_name"]["required"] is True  # NOT NULL in production
    assert mapping.source_tables == ["dim_provider", "dim_patient", "fact_appointment", "fact_procedure"]


def test_yes_and_no_stay_text() -> None:
    text = (MAPPINGS / "ehrlogic.yaml").read_text().replace('boolean: {"true": ["y", "yes"], "false": ["n", "no"]}',
                                                             "boolean: {true: [y, yes, on], false: [n, no, off]}")
    mapping = parse_mapping(text, "ehrlogic.yaml")
    assert mapping.tables["dim_provider"].columns["active"].boolean.true == ["y", "yes", "on"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda d: d["tables"]["dim_patient"]["columns"].update(shoe_size="shoe"),
         "tables.dim_patient.columns.shoe_size", "no such column of our patients"),
        (lambda d: d["tables"]["dim_patient"]["columns"].pop("patient_id"),
         "tables.dim_patient.columns", "key column patients.patient_id"),
        (lambda d: d["tables"]["dim_patient"]["columns"].pop("last_name"),
         "tables.dim_patient.columns", "['last_name'] are required"),
        (lambda d: d["tables"].pop("dim_patient"),
         "tables.fact_appointment.entity", "reference ['patients']"),
        (lambda d: d.update(client="Bad-Name"), "client", "String should match pattern"),
        (lambda d: d["tables"].update({"x" * 64: d["tables"].pop("fact_procedure")}), "tables", "63"),
        (lambda d: d["tables"]["dim_patient"].update(entity="pets"), "tables.dim_patient.entity", "unknown entity"),
        (lambda d: d.update(surprise=True), "surprise", "Extra inputs are not permitted"),
        (lambda d: d.update(timezone="Mars/Olympus"), "timezone", "unknown time zone"),
        (lambda d: d["tables"]["dim_patient"]["columns"]["last_name"].__class__ and
         d["tables"]["dim_patient"]["columns"].update(last_name={"source": "pt_last_nm", "date_formats": ["YYYYMMDD"]}),
         "tables.dim_patient.columns.last_name.date_formats", "does not apply to our text column"),
        (lambda d: d["tables"]["dim_patient"]["columns"].update(
            date_of_birth={"source": "patient_dob", "date_formats": ["MM/DD/YYYY", "DD/MM/YYYY"]}),
         "tables.dim_patient.columns.date_of_birth.date_formats", "look alike"),
        (lambda d: d["tables"]["dim_patient"]["columns"]["sex"]["values"].update(q="queen"),
         "tables.dim_patient.columns.sex.values", "which our sex does not accept"),
        (lambda d: d["tables"]["dim_patient"]["columns"].update(postal_code={"trim": False}),
         "tables.dim_patient.columns.postal_code", "give a `source` column"),
        (lambda d: d["tables"]["dim_patient"].update(duplicates={"keep": "latest"}),
         "tables.dim_patient.duplicates", "keep: latest needs `by`"),
    ],
)
def test_bad_mappings_name_the_file_line_and_field(change: Any, field: str, message: str) -> None:
    data = _ehrlogic()
    change(data)
    text = yaml.safe_dump(data, sort_keys=False)
    with pytest.raises(MappingError) as info:
        parse_mapping(text, "include/mappings/ehrlogic.yaml")
    problem = info.value.problems[0]
    assert (problem.field, message in problem.message) == (field, True), str(info.value)
    assert problem.file == "include/mappings/ehrlogic.yaml" and problem.line >= 1
    # the line is where the field is (or its deepest part the file has)
    key = field.split(".")[-1]
    line = text.splitlines()[problem.line - 1]
    assert key in line or field.split(".")[-2] in line or key == "entity" or problem.line == 1, (problem, line)


def test_a_yaml_syntax_error_names_its_line() -> None:
    text = "client: acme\ntables:\n  a: [unclosed\n"
    with pytest.raises(MappingError) as info:
        parse_mapping(text, "acme.yaml")
    assert info.value.problems[0].line == 4 and "not valid YAML" in str(info.value)


def test_file_name_must_match_client(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(_ehrlogic()))
    with pytest.raises(MappingError, match="must match the file name"):
        load_mapping(path)


def test_a_client_may_omit_entities_nothing_references() -> None:
    data = _ehrlogic()
    del data["tables"]["fact_procedure"], data["tables"]["fact_appointment"]
    mapping = ClientMapping.model_validate(data)
    assert list(mapping.entities) == ["providers", "patients"]
    assert set(json.loads(mapping.dbt_vars()["mapping"])) == {"providers", "patients"}


def test_check_mapping_command(tmp_path: Path) -> None:
    bad = tmp_path / "ehrlogic.yaml"
    bad.write_text((MAPPINGS / "ehrlogic.yaml").read_text().replace("timezone: America/New_York", "timezone: Nowhere"))
    run = [sys.executable, "-m", "clientflow.cli", "check-mapping"]
    good = subprocess.run([*run, str(MAPPINGS / "iriscare.yaml")], capture_output=True, text=True, timeout=120)
    broken = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and "ok: client iriscare" in good.stdout
    assert broken.returncode == 1
    assert "ehrlogic.yaml:8: timezone: unknown time zone 'Nowhere'" in broken.stderr
