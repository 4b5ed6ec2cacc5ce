"""Our platform's entities: the production tables a client's data lands in.

This is the one place Python knows the target columns; ``include/sql/production.sql`` defines
them for PostgreSQL and ``tests/test_entities.py`` checks that both agree.
"""

from __future__ import annotations

from typing import Literal

EntityName = Literal["providers", "patients", "appointments"]

# Load order respects foreign keys: appointments reference patients and providers.
ENTITY_ORDER: tuple[EntityName, ...] = ("providers", "patients", "appointments")

PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "providers": ("client_id", "provider_id"),
    "patients": ("client_id", "patient_id"),
    "appointments": ("client_id", "appointment_id"),
}

# Columns a mapping may fill, per entity (client_id, ingestion_id, source_batch_date and synced_at are ours).
MAPPABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "providers": ("provider_id", "first_name", "last_name", "specialty", "npi", "email", "active"),
    "patients": (
        "patient_id", "first_name", "last_name", "date_of_birth", "sex", "email", "phone",
        "postal_code", "created_at",
    ),
    "appointments": (
        "appointment_id", "patient_id", "provider_id", "starts_at", "duration_minutes", "status",
        "reason", "fee",
    ),
}

# source_batch_date: the date of the batch that last wrote the row (newer or equal date wins).
PIPELINE_COLUMNS = ("client_id", "ingestion_id", "source_batch_date", "synced_at")


def production_columns(entity: str) -> tuple[str, ...]:
    """All columns of the production table, in DDL order."""
    return ("client_id", *MAPPABLE_COLUMNS[entity], "ingestion_id", "source_batch_date", "synced_at")


def business_columns(entity: str) -> tuple[str, ...]:
    """Columns whose change is a real change (everything but lineage metadata)."""
    return ("client_id", *MAPPABLE_COLUMNS[entity])
