"""The watchdog Airflow DAG (clientflow.operations.watchdog): thin, like every DAG file here."""

from clientflow.dag_factory import watchdog_dags

globals().update(watchdog_dags())
