"""Promotion: copy a validated batch from dummy production into production, atomically; and undo
a failed batch in dummy production."""

from clientflow.promotion.promote import PromotedCounts, promote, was_promoted
from clientflow.promotion.undo import undo_batch

__all__ = ["PromotedCounts", "promote", "undo_batch", "was_promoted"]
