"""The mapping file of one client (``include/mappings/<client>.yaml``), validated once at the edge.

It says which of the client's tables feed which of our entities, how each of our columns is
read from the client's columns, and which cleaning rules apply (``docs/mapping.md`` documents
every rule with an example). No client field name appears anywhere else in the code or the SQL:
the models receive the mapping as dbt vars (:meth:`ClientMapping.dbt_vars`), with every rule
resolved to what the SQL needs.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from client_extractor.contract import CLIENT_NAME
from clientflow.entities import BY_NAME, ENTITY_ORDER, Column, Entity
from clientflow.identifiers import check_identifier
from clientflow.mapping import vocabulary as v

SourceName = Annotated[str, Field(min_length=1, description="A client column, exactly as the client spells it.")]
_STRICT = ConfigDict(extra="forbid", frozen=True)


class PhoneRule(BaseModel):
    """Keep the digits (and a leading +); with ``country_code``, write national numbers in E.164."""

    model_config = _STRICT
    country_code: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,2}$")] | None = Field(
        default=None, description="Prefix +<code> to numbers of exactly `national_digits` digits.")
    national_digits: int = Field(default=10, ge=4, le=14)


class BooleanRule(BaseModel):
    """The client's spellings of true and false (matched case-insensitively, after trim)."""

    model_config = _STRICT
    true: list[str] = Field(min_length=1)
    false: list[str] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _yaml_booleans(cls, data: Any) -> Any:
        # `true:` and `false:` are booleans to YAML: accept them as the field names they look like.
        if isinstance(data, dict):
            return {str(k).lower() if isinstance(k, bool) else k: v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _disjoint(self) -> BooleanRule:
        both = {s.lower() for s in self.true} & {s.lower() for s in self.false}
        if both:
            raise ValueError(f"spellings listed as both true and false: {sorted(both)}")
        return self


class ColumnRules(BaseModel):
    """How one of our columns is read from the client's data. Rules apply in this order: trim,
    empty_as_null, values, default, case, then the type's own (email, phone, formats, scale,
    boolean) and the cast to our column's type."""

    model_config = _STRICT

    source: SourceName | list[SourceName] | None = Field(
        default=None, description="The client column; several are joined with '-' (a composite natural key). "
        "Without one, the column is the constant `default`.")
    required: bool | None = Field(default=None, description="Must hold a value; default: ours is NOT NULL.")
    trim: bool = Field(default=True, description="Strip spaces, tabs and line breaks at both ends.")
    empty_as_null: bool = Field(default=True, description="An empty text is NULL.")
    values: dict[str, str] | None = Field(
        default=None, description="Client value -> ours, matched case-insensitively after trim. "
        "A value not listed is an unmapped value (the row is rejected).")
    default: str | None = Field(default=None, description="Our value when the client's is NULL or empty.")
    case: v.Case | None = Field(default=None, description="lower, upper or title case.")
    email: bool | None = Field(default=None, description="Lower-case an email address.")
    phone: PhoneRule | bool | None = Field(default=None, description="Normalise a phone number.")
    date_formats: list[v.DateFormat] | None = Field(
        default=None, min_length=1, description="Formats a date may come in, tried in order.")
    timestamp_formats: list[v.TimestampFormat] | None = Field(
        default=None, min_length=1, description="Formats a timestamp may come in, tried in order.")
    timezone: str | None = Field(default=None, description="Zone of local timestamps; default: the client's.")
    scale: int | None = Field(default=None, ge=0, le=6, description="Decimals kept (rounded half away from zero).")
    multiplier: float | None = Field(default=None, gt=0, description="Unit change, e.g. 0.01 for cents.")
    boolean: BooleanRule | None = Field(default=None, description="The client's spellings of true/false.")

    @field_validator("source")
    @classmethod
    def _sources_are_identifiers(cls, value: str | list[str] | None) -> str | list[str] | None:
        for name in [value] if isinstance(value, str) else value or []:
            check_identifier(name, "mapped column")
        return value

    @model_validator(mode="after")
    def _source_or_default(self) -> ColumnRules:
        if self.source is None and self.default is None:
            raise ValueError("give a `source` column, or a `default` (a constant) when the client has none")
        return self

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return _check_zone(value)

    @field_validator("values", mode="before")
    @classmethod
    def _numbers_as_text(cls, value: Any) -> Any:
        # `values: {1: "true"}`: a client code YAML read as a number is still the client's text.
        if isinstance(value, dict):
            return {k if isinstance(k, str) else str(k): s if isinstance(s, str) else str(s) for k, s in value.items()}
        return value

    @property
    def sources(self) -> tuple[str, ...]:
        if self.source is None:
            return ()
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)


class Duplicates(BaseModel):
    """Which row wins when a batch holds the same key more than once."""

    model_config = _STRICT
    keep: Literal["last_in_file", "latest"] = Field(
        default="last_in_file", description="last_in_file, or latest by the `by` column.")
    by: SourceName | None = Field(default=None, description="For keep: latest, a client column to order by.")
    by_type: Literal["timestamp", "number", "text"] = Field(
        default="timestamp", description="How the `by` column orders: as a timestamp, a number or text.")

    @model_validator(mode="after")
    def _by_when_latest(self) -> Duplicates:
        if (self.keep == "latest") != (self.by is not None):
            raise ValueError("keep: latest needs `by` (the column to order by), and only it does")
        return self


def _columns_short_form(schema: dict[str, Any]) -> None:
    """In the JSON Schema too, a column may be given as just its source (a name or a list)."""
    columns = schema["properties"]["columns"]
    columns["additionalProperties"] = {"anyOf": [
        columns["additionalProperties"],
        {"type": "string", "description": "Short for {source: <name>}."},
        {"type": "array", "items": {"type": "string"}, "description": "Short for {source: [<names>]}."},
    ]}


class RejectThreshold(BaseModel):
    """How many refused rows a table may have before the whole batch stops instead."""

    model_config = _STRICT
    max_count: int | None = Field(default=None, ge=0, description="At most this many refused rows.")
    max_share: float = Field(default=0.01, ge=0, le=1, description="At most this share of the table's rows.")


class AnomalyThresholds(BaseModel):
    """How far a batch may differ from the client's previous promoted batch before it stops."""

    model_config = _STRICT
    max_row_drop: float = Field(default=0.5, ge=0, le=1, description="A full snapshot may hold at most this share "
                                "fewer rows than the previous one (0.5: half).")
    max_null_rate_increase: float = Field(default=0.2, ge=0, le=1, description="A column's share of NULLs may rise "
                                          "by at most this much (0.2: 20 points), the phantom null.")
    max_reject_share_increase: float = Field(default=0.05, ge=0, le=1, description="The share of refused rows may "
                                             "rise by at most this much.")
    unmapped_values: Literal["fail", "warn"] = Field(
        default="fail", description="A coded column (one with `values`) that held no unmapped value in the "
        "previous batch and now does: stop (fail) or only log (warn).")
    min_rows: int = Field(default=20, ge=1, description="Entities with fewer rows than this in either batch "
                          "are not judged (small counts are noise).")


class SourceTable(BaseModel):
    """One of the client's tables and the entity of ours it feeds."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_columns_short_form)

    entity: str = Field(description="The entity of ours this table feeds.",
                        json_schema_extra={"enum": list(ENTITY_ORDER)})
    mode: Literal["full_snapshot", "incremental"] = Field(
        default="full_snapshot", description="full_snapshot: each batch holds every row; incremental: changed rows.")
    duplicates: Duplicates = Duplicates()
    rejects: RejectThreshold = RejectThreshold()
    columns: dict[str, ColumnRules] = Field(description="Our column -> how it is read.")

    @field_validator("entity")
    @classmethod
    def _ours(cls, value: str) -> str:
        if value not in BY_NAME:
            raise ValueError(f"unknown entity {value!r}; ours are {list(ENTITY_ORDER)}")
        return value

    @field_validator("columns", mode="before")
    @classmethod
    def _short_form(cls, value: object) -> object:
        # `first_name: pt_first_nm` is shorthand for `first_name: {source: pt_first_nm}`.
        if isinstance(value, dict):
            return {k: {"source": s} if isinstance(s, str | list) else s for k, s in value.items()}
        return value

    @property
    def natural_key(self) -> tuple[str, ...]:
        """The client columns that identify a row: the sources of our key column."""
        return self.columns[BY_NAME[self.entity].key].sources


class SchemaPolicy(BaseModel):
    """What to do with schema changes that do not break the mapping (dlt's schema contracts)."""

    model_config = _STRICT

    new_columns: Literal["evolve", "warn", "fail"] = "evolve"
    removed_columns: Literal["evolve", "warn", "fail"] = "warn"
    type_changes: Literal["evolve", "warn", "fail"] = "fail"


class ExtraNotifier(BaseModel):
    """An Airflow notifier from a provider, added to the client's failure alerts without code."""

    model_config = _STRICT
    notifier: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
                          description="Import path of a BaseNotifier subclass, e.g. "
                          "airflow.providers.slack.notifications.slack.SlackNotifier.")
    args: dict[str, Any] = Field(default_factory=dict, description="Its keyword arguments (its templated fields "
                                 "are rendered with the task's context; never put a secret here: use a connection).")


class AlertPolicy(BaseModel):
    """Who is told what, when: failure emails, escalation on repeated failures, the watchdog."""

    model_config = _STRICT
    escalate_after: int = Field(default=3, ge=1, description="This many batches failed in a row (no promotion "
                                "between them) escalate, once per incident, to `escalation`.")
    escalation: list[str] = Field(default_factory=list, description="Emails of the second line; empty: the owners.")
    stale_after: timedelta | None = Field(default=None, description="The watchdog alerts when the newest promoted "
                                          "batch is older than this (ISO 8601 duration, e.g. PT30H); default: "
                                          "the schedule's interval plus `grace`.")
    grace: timedelta = Field(default=timedelta(hours=6), description="Added to the schedule's interval for staleness.")
    backlog_after: timedelta = Field(default=timedelta(hours=1), description="A complete batch waiting this long in "
                                     "the bucket, unseen by the ledger, is a backlog alert.")
    failed_after: timedelta = Field(default=timedelta(hours=24), description="A FAILED batch not reprocessed after "
                                    "this long is an alert.")
    incomplete_after: timedelta = Field(default=timedelta(hours=2), description="An upload left incomplete this long "
                                        "(a data file without its manifest, a table missing), with no complete run "
                                        "of its date after it, is an alert.")
    stuck_after: timedelta = Field(default=timedelta(hours=3), description="A batch PENDING or PROCESSING this long "
                                   "(its run died without an outcome, or hangs) is an alert.")
    notifiers: list[ExtraNotifier] = Field(default_factory=list, description="Further notifiers called when a "
                                           "batch fails, after the email (Slack, PagerDuty, ...).")


class ClientMapping(BaseModel):
    """The whole mapping file of one client."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="clientflow client mapping")

    client: Annotated[str, Field(pattern=CLIENT_NAME.pattern, description="Matches the file name.")]
    display_name: str
    owners: list[str] = Field(description="Emails alerted when a batch fails.", min_length=1)
    timezone: str = Field(default="UTC", description="Zone of the client's timestamps that carry no offset.")
    start_date: date = Field(description="First batch date the DAG schedules.")
    schedule: str | None = Field(default="@daily", description="Airflow schedule of arrivals (cron or preset).")
    raw_retention_batches: int = Field(default=2, ge=1, description="Promoted batches kept in raw, newest first.")
    sweep_days: int = Field(default=14, ge=1, le=366, description="How many days back every run looks in the bucket "
                            "for complete batches the ledger has never seen (a lost bucket event, a batch nobody "
                            "triggered) and starts a run for the oldest.")
    schema_policy: SchemaPolicy = SchemaPolicy()
    anomalies: AnomalyThresholds = AnomalyThresholds()
    alerts: AlertPolicy = AlertPolicy()
    tables: dict[str, SourceTable] = Field(min_length=1, description="The client's tables, by their exact names.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_zone(value) or "UTC"

    @field_validator("tables")
    @classmethod
    def _table_names(cls, value: dict[str, SourceTable]) -> dict[str, SourceTable]:
        for name in value:
            check_identifier(name, "source table")
        return value

    @model_validator(mode="after")
    def _fits_our_schema(self) -> ClientMapping:
        for table, spec in self.tables.items():
            _check_table(table, spec, BY_NAME[spec.entity])
        mapped = self.entities
        for name, tables in mapped.items():
            missing = [fk.parent for fk in BY_NAME[name].parents if fk.parent not in mapped]
            if missing:
                raise MappingFieldError(("tables", tables[0], "entity"),
                                        f"our {name} reference {missing}, which no table feeds: map them too")
        return self

    @property
    def entities(self) -> dict[str, list[str]]:
        """Our entities this client feeds, in foreign-key order, each with its tables."""
        found: dict[str, list[str]] = {}
        for name in ENTITY_ORDER:
            tables = [t for t, spec in self.tables.items() if spec.entity == name]
            if tables:
                found[name] = tables
        return found

    @property
    def source_tables(self) -> list[str]:
        """Client tables a batch must contain, in load order (parents first)."""
        return [t for tables in self.entities.values() for t in tables]

    def entity_for_table(self, table: str) -> str:
        return self.tables[table].entity

    def sweep_since(self, today: date) -> date:
        """The first batch date of the sweep's window: what the sweep, the watchdog and offboarding
        look for in the bucket."""
        return today - timedelta(days=self.sweep_days)

    def full_snapshot(self, entity: str) -> bool:
        """Whether a batch holds every row of the entity (every table feeding it is a full snapshot)."""
        return all(self.tables[t].mode == "full_snapshot" for t in self.entities[entity])

    def dbt_vars(self) -> dict[str, Any]:
        """The mapping as dbt vars, every rule resolved (formats as regex + pattern).

        The tables travel as one JSON text (``mapping``, read by the models with ``fromjson``):
        Airflow walks every nested value of an operator's arguments when it builds a DAG, and a
        client's whole mapping in each dbt task made parsing 200 clients several seconds slower.
        """
        from clientflow.mapping.resolve import mapping_json

        return {"client": self.client, "client_timezone": self.timezone, "mapping": mapping_json(self)}


def _check_zone(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as America/New_York)") from None
    return value


class MappingFieldError(ValueError):
    """A rule that spans fields, broken at ``loc`` (the path of keys in the mapping file)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _check_table(table: str, spec: SourceTable, ours: Entity) -> None:
    at = ("tables", table, "columns")
    unknown = sorted(set(spec.columns) - set(ours.column_names))
    if unknown:
        raise MappingFieldError((*at, unknown[0]), f"no such column of our {ours.name}: {unknown}; ours are "
                                f"{list(ours.column_names)}")
    if ours.key not in spec.columns:
        raise MappingFieldError(at, f"our key column {ours.name}.{ours.key} must be mapped")
    missing = [c.name for c in ours.columns if c.required and c.name not in spec.columns]
    if missing:
        raise MappingFieldError(at, f"our {ours.name} column(s) {missing} are required (NOT NULL): map them, "
                                "with a `default` if the client has no such column")
    if not spec.natural_key:
        raise MappingFieldError((*at, ours.key), f"our key column {ours.name}.{ours.key} needs a `source`")
    for name, rules in spec.columns.items():
        _check_rules((*at, name), rules, ours.column(name))


_RULES_BY_TYPE = {
    "email": ("text",), "phone": ("text",), "case": ("text",), "values": ("text", "boolean"),
    "date_formats": ("date",), "timestamp_formats": ("timestamptz",), "timezone": ("timestamptz",),
    "scale": ("numeric",), "multiplier": ("numeric", "integer"), "boolean": ("boolean",),
}


def _check_rules(at: tuple[str, ...], rules: ColumnRules, column: Column) -> None:
    base = column.sql_type.split("(")[0]
    for rule, types in _RULES_BY_TYPE.items():
        if getattr(rules, rule) not in (None, False) and base not in types:
            raise MappingFieldError((*at, rule), f"rule {rule!r} does not apply to our {column.sql_type} "
                                    f"column {column.name}")
    if len(rules.sources) > 1 and base != "text":
        raise MappingFieldError((*at, "source"), "several source columns can only be joined into a text column")
    for field, table in (("date_formats", v.DATE_FORMATS), ("timestamp_formats", v.TIMESTAMP_FORMATS)):
        names = getattr(rules, field) or []
        regexes = [table[n].regex for n in names]
        if len(set(regexes)) != len(regexes):
            raise MappingFieldError((*at, field), f"{names} holds formats that look alike (e.g. MM/DD/YYYY and "
                                    "DD/MM/YYYY): only the first would ever apply")
    if column.accepted and rules.values:
        wrong = sorted(set(rules.values.values()) - set(column.accepted))
        if wrong:
            raise MappingFieldError((*at, "values"), f"maps to {wrong}, which our {column.name} does not accept "
                                    f"({list(column.accepted)})")
    if column.accepted and rules.default is not None and rules.default not in column.accepted:
        raise MappingFieldError((*at, "default"), f"{rules.default!r} is not a value our {column.name} accepts "
                                f"({list(column.accepted)})")
