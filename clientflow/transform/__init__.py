"""Transform: dbt, run by Cosmos task groups (``clientflow.transform.dbt_group``) through
``dbt_scrubbed``; ``generate`` writes the dbt files that follow from our entities.

Nothing is imported here: ``dbt_scrubbed`` runs as a script and ``generate`` needs no Cosmos.
"""
