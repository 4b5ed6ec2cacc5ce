"""Promotion: copy a validated batch from dummy production into production, atomically; and undo
a failed batch in dummy production."""

from clientflow.promotion.promote import PromotedCounts, promote, was_promoted
from clientflow.promotion.undo import forget_undo, undo_batch, unsettled

__all__ = ["PromotedCounts", "forget_undo", "promote", "undo_batch", "unsettled", "was_promoted"]
