"""Validation gates between the dummy production schema and production (``gates.run``)."""

from clientflow.validation.gates import GateReport, run
from clientflow.validation.reconcile import EntityCounts

__all__ = ["EntityCounts", "GateReport", "run"]
