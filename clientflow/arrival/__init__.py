"""Arrival: where batches land in the bucket, what their manifests say, when a batch is complete.

The bucket layout and the identifier rules are the extractor's contract
(``client_extractor.contract``), imported here rather than restated.
"""

from clientflow.arrival.batches import (
    ArrivedTable,
    batch_files,
    complete_batches,
    complete_runs,
    read_manifests,
    sensor_check,
)
from clientflow.arrival.manifest import Manifest, parse_manifest

__all__ = ["ArrivedTable", "Manifest", "batch_files", "complete_batches", "complete_runs", "parse_manifest", "read_manifests",
           "sensor_check"]
