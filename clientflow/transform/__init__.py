"""Transform: dbt, run by Cosmos task groups (see ``clientflow.dag_factory``), through ``dbt_scrubbed``."""
