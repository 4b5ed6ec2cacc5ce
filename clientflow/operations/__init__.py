"""Operations: the job ledger, per-client locks, and failure alerts."""
