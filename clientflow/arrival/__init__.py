"""Arrival: where batches land in the bucket, what their manifests say, when a batch is complete."""
