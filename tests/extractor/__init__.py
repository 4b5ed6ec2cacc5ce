"""Tests of the client extractor binary (client_extractor/)."""
