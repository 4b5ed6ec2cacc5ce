"""The client extractor: a single-file tool that clients run against their own database."""
