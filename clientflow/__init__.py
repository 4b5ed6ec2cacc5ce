"""clientflow: move each client's practice database into our platform.

Stages, one subpackage each, called in order by :mod:`clientflow.pipeline`:
arrival -> integrity -> load (raw) -> transform (dbt) -> validation -> promotion,
with :mod:`clientflow.operations` (ledger, locks, alerts) around them.
"""

__version__ = "0.1.0"
