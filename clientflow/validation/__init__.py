"""Validation gates between the dummy production schema and production."""
