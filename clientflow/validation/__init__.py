"""Validation gates between the dummy production schema and production."""

from clientflow.validation.reconcile import EntityCounts, reconcile

__all__ = ["EntityCounts", "reconcile"]
