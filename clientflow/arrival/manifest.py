"""The extractor's ``manifest.json``, validated before anything trusts it."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clientflow.errors import BadInputError, Where
from clientflow.identifiers import CLIENT_NAME, RUN_ID, check_identifier

Encoding = Literal[
    "integer", "decimal", "float", "string", "bytes_base64", "boolean", "date", "time",
    "timestamp", "timestamptz", "interval", "uuid", "json", "array", "enum",
]


class ManifestColumn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source_type: str
    encoding: str
    nullable: bool = True
    primary_key: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_identifier(value, "column")

    @property
    def base_encoding(self) -> str:
        """``array<integer>`` -> ``array``."""
        return self.encoding.split("<", 1)[0]


class Manifest(BaseModel):
    """What one extractor run wrote for one table (format version 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1]
    job_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    client: str = Field(pattern=CLIENT_NAME.pattern)
    table: str
    schema_: str | None = Field(default=None, alias="schema")
    date: date
    run_id: str = Field(pattern=RUN_ID.pattern)
    extracted_at: datetime
    extractor_version: str
    source_dialect: str
    row_count: int = Field(ge=0)
    byte_size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    data_file: Literal["data.json"] = "data.json"
    columns: list[ManifestColumn] = Field(min_length=1)

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return check_identifier(value, "table")

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
