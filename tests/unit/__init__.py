"""Unit tests: pipelines and helpers on small generated data."""
