"""The wait for a batch: the provider's S3KeySensor, with a deferred check that sees our keys.

In deferrable mode the sensor hands its wait to ``S3KeyTrigger`` (apache-airflow-providers-amazon).
The trigger notices a matching key correctly, but the files it then passes to ``check_fn`` come from
``S3Hook.get_files_async``, which lists with ``Delimiter="/"`` under the prefix before the first
wildcard and never applies the wildcard: for our layout (``client=X/table=*/date=D/run_id=*/*.json``)
that is no key at all. ``check_fn`` would judge an empty list, find no complete batch, and defer
again, until the sensor's timeout: a run that started before its batch was uploaded (the scheduled
run of a client without bucket events, every night) would never see it.

So when the trigger fires, :class:`BatchKeySensor` judges the bucket itself: one synchronous poke,
whose listing is recursive and wildcard-matched (the same check as the sensor's first poke), and
defers again if no run is complete yet.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor


class BatchKeySensor(S3KeySensor):
    """``S3KeySensor`` whose resumption after the trigger re-checks the bucket (see the module)."""

    def execute_complete(self, context: Any, event: dict[str, Any]) -> None:
        if event.get("status") == "running":  # the trigger saw a key; its file list cannot be trusted
            if not self.poke(context):
                self._defer()
            return
        super().execute_complete(context, event)
