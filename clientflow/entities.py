"""Our platform's entities: the production tables a client's data lands in, declared once.

Everything else that knows our target columns is generated from :data:`ENTITIES` or checked
against it by ``tests/test_entities.py``:

- ``include/sql/production.sql`` (hand-written DDL, applied to production and to the staging
  replica): the test compares its catalog (columns, types, NOT NULL, keys, foreign keys, CHECKs)
  with a table built from this declaration;
- the dbt models ``dbt/models/staging/stg_<entity>.sql``, ``dbt/models/practice/<entity>.sql``,
  their YAML (tests: unique, not_null, accepted_values, relationships) and the raw sources:
  written by ``python -m clientflow.transform.generate`` and refused by the test when stale;
- the mapping's vocabulary (which of our columns a client may map) and the promotion's upsert.

Adding an entity: declare it here, add its DDL to ``production.sql``, run the generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PRACTICE_SCHEMA = "practice"
"""The schema of production's tables, in production and (as dummy production) in the staging database."""
CLIENT_KEY = "client_id"
"""The tenant key: the first column of every production table and of its primary key."""


@dataclass(frozen=True)
class Column:
    """One column of ours that a client's mapping can fill."""

    name: str
    sql_type: str
    """PostgreSQL type as production.sql declares it (``text``, ``date``, ``numeric(10,2)`` ...)."""
    text_kind: Literal["email", "phone"] | None = None
    """A text column whose values have a shape of their own: the mapping's ``email`` or ``phone``
    rule applies by default."""
    required: bool = False
    """NOT NULL in production; a client must map it."""
    accepted: tuple[str, ...] = ()
    """The only values allowed (a CHECK in production, an accepted_values test in dbt)."""
    check: str | None = None
    """Any other CHECK on the column, a SQL condition on the column's name (as in production.sql)."""
    description: str = ""


@dataclass(frozen=True)
class ForeignKey:
    column: str
    parent: str
    """The entity referenced; its key column has the same name (within the same client)."""


@dataclass(frozen=True)
class Entity:
    name: str
    key: str
    """The entity's id column; the primary key is (client_id, key)."""
    columns: tuple[Column, ...]
    description: str
    parents: tuple[ForeignKey, ...] = field(default=())

    @property
    def primary_key(self) -> tuple[str, str]:
        return (CLIENT_KEY, self.key)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no column {name!r}")

    @property
    def production_columns(self) -> tuple[str, ...]:
        """All columns of the production table, in DDL order."""
        return tuple(c.name for c in self.table_columns)

    @property
    def table_columns(self) -> tuple[Column, ...]:
        """The production table's columns in DDL order: tenant key, ours, then the pipeline's."""
        return (TENANT, *self.columns, *PIPELINE_COLUMNS)

    @property
    def business_columns(self) -> tuple[str, ...]:
        """Columns whose change is a real change (everything but lineage metadata)."""
        return (CLIENT_KEY, *self.column_names)


# CLIENT_NAME's rule without its counted repeat, which PostgreSQL's regular expressions run 5 times
# slower on every row (include/sql/production.sql); tests/test_entities.py checks that both accept
# the same names.
TENANT_CHECK = f"{CLIENT_KEY} ~ '^[a-z][a-z0-9_]*$' and length({CLIENT_KEY}) <= 40"
TENANT = Column(CLIENT_KEY, "text", required=True, check=TENANT_CHECK,
                description="Tenant key: the client the row belongs to.")
PIPELINE_COLUMNS = (
    Column("ingestion_id", "text", required=True,
           description="The batch that last wrote the row (pipeline.batches)."),
    Column("source_batch_date", "date",
           description="Date of the batch that wrote the row; promotion keeps the newest."),
    Column("synced_at", "timestamptz", required=True, description="When the row was last written."),
    Column("job_id", "text", required=True, description="The extractor job (manifest) the row came from."),
    Column("source_file", "text", required=True, description="The data.json (s3://...) the row came from."),
    Column("source_row", "bigint", required=True, description="The row's position in that file, from 1."),
    Column("deleted_at", "timestamptz",
           description="Set when a full snapshot no longer held the row (or its parent); NULL while it exists."),
)
"""Ours on every production table, after the entity's own columns: lineage (any value traces back
to its file and row) and the soft delete. When the row reached production is its batch's row in
``practice.promotions`` (by ``ingestion_id``)."""
LINEAGE_COLUMNS = ("job_id", "source_file", "source_row")

_NONEMPTY = "{} <> ''"

ENTITIES: tuple[Entity, ...] = (
    Entity(
        name="providers",
        key="provider_id",
        description="Clinicians of each client practice.",
        columns=(
            Column("provider_id", "text", required=True, check=_NONEMPTY.format("provider_id"),
                   description="The client's provider id, as text."),
            Column("first_name", "text"),
            Column("last_name", "text", required=True, check=_NONEMPTY.format("last_name")),
            Column("specialty", "text", required=True,
                   accepted=("general_dentistry", "orthodontics", "hygiene", "optometry",
                             "ophthalmology", "other")),
            Column("npi", "text", check="npi ~ '^[0-9]+$' and length(npi) = 10",
                   description="National Provider Identifier: ten digits."),
            Column("email", "text", text_kind="email",
                   check="email = lower(email) and email like '%_@_%'"),
            Column("active", "boolean", required=True),
        ),
    ),
    Entity(
        name="patients",
        key="patient_id",
        description="Patients of each client practice.",
        columns=(
            Column("patient_id", "text", required=True, check=_NONEMPTY.format("patient_id")),
            Column("first_name", "text"),
            Column("last_name", "text", required=True, check=_NONEMPTY.format("last_name")),
            Column("date_of_birth", "date",
                   check="date_of_birth between date '1890-01-01' and date '2100-01-01'"),
            Column("sex", "text", required=True, accepted=("female", "male", "other", "unknown")),
            Column("email", "text", text_kind="email",
                   check="email = lower(email) and email like '%_@_%'"),
            Column("phone", "text", text_kind="phone",
                   check="phone ~ '^\\+?[0-9]+$' and length(ltrim(phone, '+')) between 7 and 15",
                   description="Digits with an optional leading +."),
            Column("postal_code", "text"),
            Column("created_at", "timestamptz"),
        ),
    ),
    Entity(
        name="appointments",
        key="appointment_id",
        description="Appointments, each referencing a patient and a provider of the same client.",
        columns=(
            Column("appointment_id", "text", required=True, check=_NONEMPTY.format("appointment_id")),
            Column("patient_id", "text", required=True),
            Column("provider_id", "text", required=True),
            Column("starts_at", "timestamptz", required=True),
            Column("duration_minutes", "integer", required=True,
                   check="duration_minutes between 5 and 480"),
            Column("status", "text", required=True,
                   accepted=("scheduled", "completed", "cancelled", "no_show")),
            Column("reason", "text"),
            Column("fee", "numeric(10, 2)", check="fee >= 0"),
        ),
        parents=(ForeignKey("patient_id", "patients"), ForeignKey("provider_id", "providers")),
    ),
    Entity(
        name="procedures",
        key="procedure_id",
        description="Procedures performed at an appointment: a CDT (dental) or CPT (medical, eye care) code.",
        columns=(
            Column("procedure_id", "text", required=True, check=_NONEMPTY.format("procedure_id")),
            Column("appointment_id", "text", required=True),
            Column("code_system", "text", required=True, accepted=("cdt", "cpt"),
                   description="cdt: ADA dental codes (D0120); cpt: AMA codes (92004)."),
            Column("code", "text", required=True,
                   check="(code_system = 'cdt' and code ~ '^D[0-9]{4}$') or "
                         "(code_system = 'cpt' and code ~ '^[0-9]{4}[0-9A-Z]$')",
                   description="The procedure code in its code system."),
            Column("tooth", "text", check="tooth ~ '^([1-9]|[12][0-9]|3[0-2]|[A-T])$'",
                   description="Universal tooth number (1-32, A-T for primary teeth), for dental procedures."),
            Column("eye", "text", accepted=("right", "left", "both"),
                   description="The eye treated, for eye-care procedures."),
            Column("fee", "numeric(10, 2)", check="fee >= 0"),
        ),
        parents=(ForeignKey("appointment_id", "appointments"),),
    ),
)
"""In foreign-key order: parents before the entities that reference them."""

BY_NAME: dict[str, Entity] = {e.name: e for e in ENTITIES}
ENTITY_ORDER: tuple[str, ...] = tuple(e.name for e in ENTITIES)


def entity(name: str) -> Entity:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown entity {name!r}; ours are {list(ENTITY_ORDER)}") from None
