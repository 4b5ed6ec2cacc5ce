"""Promotion: upsert a validated batch from dummy production into production, atomically."""

from clientflow.promotion.promote import PromotedCounts, promote

__all__ = ["PromotedCounts", "promote"]
