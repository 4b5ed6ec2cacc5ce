"""The extractor's ``manifest.json``, validated before anything trusts it.

The patterns and field names are the extractor's contract (``client_extractor.contract``); this
model adds the types and bounds, and its JSON Schema is published as ``docs/manifest.schema.json``
(``clientflow manifest-schema`` prints it; a test keeps the published copy current).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from client_extractor import contract
from clientflow.errors import BadInputError, Where
from clientflow.identifiers import check_identifier

_ENCODING = re.compile(r"^(?:array<)*(?:" + "|".join(e for e in contract.ENCODINGS if e != "array") + r")>*$")


class ManifestColumn(BaseModel):
    """One column of the table, as the source database declared it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The column's name, exactly as the source spells it.")
    source_type: str = Field(description="The source database's type name (e.g. 'character varying').")
    encoding: Annotated[str, Field(pattern=_ENCODING.pattern)] = Field(
        description="How data.json writes the values: one of the encodings, or array<E> (see docs/extractor.md).")
    nullable: bool = True
    primary_key: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_identifier(value, "column")

    @field_validator("encoding")
    @classmethod
    def _balanced(cls, value: str) -> str:
        if value.count("<") != value.count(">"):
            raise ValueError("array<...> brackets do not match")
        return value

    @property
    def base_encoding(self) -> str:
        """``array<integer>`` -> ``array``."""
        return self.encoding.split("<", 1)[0]


class Extraction(BaseModel):
    """How the extractor chose the rows (``client_extractor.incremental``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["full", "incremental"] = Field(
        default="full", description="full: every row of the table (a full snapshot); incremental: the rows "
        "whose cursor column lies in [low_mark, high_mark].")
    cursor_column: str | None = Field(default=None, description="The column the marks are values of.")
    low_mark: str | None = Field(default=None, description="Where an incremental run started (inclusive): the "
                                 "previous run's high mark, as the source writes the value as text.")
    high_mark: str | None = Field(default=None, description="The cursor's largest value when the run began "
                                  "(where the next run starts); null when no row had one.")

    @field_validator("cursor_column")
    @classmethod
    def _cursor(cls, value: str | None) -> str | None:
        return None if value is None else check_identifier(value, "column")


FULL_SNAPSHOT = Extraction()


class Manifest(BaseModel):
    """What one extractor run wrote for one table (format version 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="clientflow manifest.json")

    format_version: Literal[1] = Field(description="Manifest format; this pipeline reads version 1.")
    job_id: str = Field(pattern=contract.JOB_ID.pattern,
                        description="Hash of client, table, date and the data's sha256.")
    client: str = Field(pattern=contract.CLIENT_NAME.pattern)
    table: str = Field(description="The source table's name, exactly as the source spells it.")
    schema_: str | None = Field(default=None, alias="schema", description="The source schema.")
    date: dt.date = Field(description="The batch date (YYYY-MM-DD).")
    run_id: str = Field(pattern=contract.RUN_ID.pattern, description="The extractor run's id.")
    extracted_at: dt.datetime
    extractor_version: str
    source_dialect: str = Field(description="postgresql, mysql or sqlite.")
    extraction: Extraction = Field(default=FULL_SNAPSHOT, description="Full snapshot or incremental, and the "
                                   "cursor's marks; a manifest without it is a full snapshot.")
    row_count: int = Field(ge=0, description="Rows in data.json.")
    byte_size: int = Field(ge=0, description="Bytes of data.json.")
    sha256: str = Field(pattern=contract.SHA256.pattern, description="sha256 of data.json's bytes.")
    data_file: Literal["data.json"] = contract.DATA_FILE
    columns: list[ManifestColumn] = Field(min_length=1)

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return check_identifier(value, "table")

    @model_validator(mode="after")
    def _cursor_is_a_column(self) -> Manifest:
        cursor = self.extraction.cursor_column
        if self.extraction.mode == "incremental" and (cursor is None or self.extraction.low_mark is None):
            raise ValueError("extraction: an incremental manifest names its cursor_column and low_mark")
        if cursor is not None and cursor not in {c.name for c in self.columns}:
            raise ValueError("extraction.cursor_column is not one of the manifest's columns")
        return self

    @property
    def full_snapshot(self) -> bool:
        """The file holds every row of the table (it may stand for deletes of the rows it lacks)."""
        return self.extraction.mode == "full"

    def fingerprint(self) -> str:
        """A stable hash of the column names, types and encodings (for the schema registry)."""
        text = "\n".join(f"{c.name}\t{c.source_type}\t{c.encoding}" for c in self.columns)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_manifest(raw: bytes, where: Where) -> Manifest:
    """Parse and validate; the error lists the fields at fault, never their values."""
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(document)'}: {err['msg']}"
            for err in exc.errors(include_input=False)
        )
        raise BadInputError(f"manifest.json is not a valid manifest: {problems}", where) from None


def json_schema() -> str:
    """The manifest's JSON Schema, as published in docs/manifest.schema.json."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$id": "https://clientflow.example/schemas/manifest.schema.json",
              **Manifest.model_json_schema(by_alias=True)}
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
