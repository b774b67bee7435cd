"""Batch jobs: synthetic data, validation, windowed aggregates, training sets and model training."""
