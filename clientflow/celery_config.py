"""The Celery workers' configuration (``scripts/stack.sh up-celery``): Airflow's default, and the
same preload as the local stack's executor (:mod:`clientflow.executor`).

A Celery worker runs each task in a process forked from its pool, and the pool is forked from the
worker's main process, so what the main process imports before it starts the pool is in every
task's process, as with the ``PreloadingLocalExecutor``: the task's DAG parse then imports only
clientflow's own modules. The preload runs on Celery's ``import_modules`` signal, which the worker
sends in its main process before it starts the pool, where Airflow's own preload runs too (and
freezes the garbage collector's objects after it, so the pool's forks share them).

``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=clientflow.celery_config.CELERY_CONFIG`` selects it.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import import_modules

from clientflow.executor import preload

CELERY_CONFIG: dict[str, Any] = dict(DEFAULT_CELERY_CONFIG)
"""Airflow's Celery configuration unchanged: this module exists for the signal below."""


@import_modules.connect
def _preload(**_: Any) -> None:
    preload()
