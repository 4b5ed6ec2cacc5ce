"""A client's mapping file (``include/mappings/<client>.yaml``), validated once at the edge.

The mapping says which client table feeds each of our entities and which client column feeds
each of our columns. No client field name appears anywhere else in the code or the SQL.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from client_extractor.contract import CLIENT_NAME
from clientflow.entities import BY_NAME, ENTITY_ORDER
from clientflow.identifiers import check_identifier

MAPPINGS_DIR = Path(__file__).resolve().parent.parent / "include" / "mappings"


class ColumnSource(BaseModel):
    """Where one of our columns comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="The client's column name, exactly as the client spells it.")
    values: dict[str, str] | None = Field(
        default=None,
        description="Client value -> our value, matched after trim and lower-case. "
        "Unlisted values become NULL, which the model's tests then catch.",
    )
    default: str | None = Field(
        default=None, description="Our value when the client's is NULL or blank."
    )

    @field_validator("source")
    @classmethod
    def _source_is_identifier(cls, value: str) -> str:
        return check_identifier(value, "mapped column")


class EntityMapping(BaseModel):
    """One of our entities and the client table that feeds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_table: str = Field(description="The client's table name, exactly as spelled.")
    columns: dict[str, ColumnSource] = Field(description="Our column -> client column.")

    @field_validator("source_table")
    @classmethod
    def _table_is_identifier(cls, value: str) -> str:
        return check_identifier(value, "source table")

    @field_validator("columns", mode="before")
    @classmethod
    def _short_form(cls, value: object) -> object:
        # `first_name: pt_first_nm` is shorthand for `first_name: {source: pt_first_nm}`.
        if isinstance(value, dict):
            return {k: {"source": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


class SchemaPolicy(BaseModel):
    """What to do with schema changes that do not break the mapping (dlt's schema contracts)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    new_columns: Literal["evolve", "warn", "fail"] = "evolve"
    removed_columns: Literal["evolve", "warn", "fail"] = "warn"
    type_changes: Literal["evolve", "warn", "fail"] = "fail"


class ClientMapping(BaseModel):
    """The whole mapping file of one client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client: Annotated[str, Field(pattern=CLIENT_NAME.pattern)]
    display_name: str
    owners: list[str] = Field(description="Emails alerted when a batch fails.", min_length=1)
    timezone: str = Field(
        default="UTC", description="Zone of the client's timestamps that carry no offset."
    )
    start_date: date = Field(description="First batch date the DAG schedules.")
    schedule: str | None = Field(default="@daily", description="Airflow schedule of arrivals.")
    raw_retention_batches: int = Field(
        default=2, ge=1, description="Promoted batches kept in the raw tables, newest first."
    )
    schema_policy: SchemaPolicy = SchemaPolicy()
    entities: dict[str, EntityMapping]

    @model_validator(mode="after")
    def _entities_fit_our_schema(self) -> ClientMapping:
        for name, spec in self.entities.items():
            ours = BY_NAME.get(name)
            if ours is None:
                raise ValueError(f"unknown entity {name!r}; ours are {sorted(BY_NAME)}")
            unknown = set(spec.columns) - set(ours.column_names)
            if unknown:
                raise ValueError(f"{name}: no such column(s) of ours: {sorted(unknown)}")
            if ours.key not in spec.columns:
                raise ValueError(f"{name}: the key column {ours.key!r} must be mapped")
        missing = [e for e in ENTITY_ORDER if e not in self.entities]
        if missing:
            raise ValueError(f"entities not mapped: {missing}")
        tables = [spec.source_table for spec in self.entities.values()]
        if len(set(tables)) != len(tables):
            raise ValueError("two entities read the same source table")
        return self

    @property
    def source_tables(self) -> list[str]:
        """Client tables a batch must contain, in load order."""
        return [self.entities[e].source_table for e in ENTITY_ORDER]

    def entity_for_table(self, table: str) -> str:
        for entity, spec in self.entities.items():
            if spec.source_table == table:
                return entity
        raise KeyError(table)

    def dbt_vars(self) -> dict[str, object]:
        """The mapping as dbt vars: generic models read these instead of field names."""
        return {
            "client": self.client,
            "client_timezone": self.timezone,
            "entities": {
                entity: {
                    "table": spec.source_table,
                    "columns": {
                        ours: col.model_dump(exclude_none=True) for ours, col in spec.columns.items()
                    },
                }
                for entity, spec in self.entities.items()
            },
        }


def load_mapping(path: Path) -> ClientMapping:
    with path.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    mapping = ClientMapping.model_validate(data)
    if mapping.client != path.stem:
        raise ValueError(f"{path.name}: client {mapping.client!r} must match the file name")
    return mapping


def load_all(directory: Path = MAPPINGS_DIR) -> list[ClientMapping]:
    """Every mapping, sorted by client, so generated DAGs are deterministic."""
    return [load_mapping(path) for path in sorted(directory.glob("*.yaml"))]
