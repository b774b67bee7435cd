"""Monitoring: drift, freshness and training-serving skew checks."""
