"""One Airflow DAG per client mapping file in include/mappings/ (see clientflow.dag_factory)."""

from clientflow.dag_factory import build_dags

globals().update(build_dags())
