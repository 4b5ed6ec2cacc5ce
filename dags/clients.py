"""One Airflow DAG per client mapping file in include/mappings/ (see clientflow.dag_factory)."""

from clientflow.dag_factory import build_client_dag
from clientflow.mapping import load_all

for _mapping in load_all():
    globals()[f"client_{_mapping.client}"] = build_client_dag(_mapping)
