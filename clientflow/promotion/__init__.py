"""Promotion: upsert a validated batch from dummy production into production, atomically."""
