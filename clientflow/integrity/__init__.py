"""Integrity: the schema registry and drift detection (checksums are verified while loading)."""
