"""Monitoring: drift, freshness and training-serving skew checks."""

from monitoring.checks import MonitoringOutcome, run_monitoring

__all__ = ["MonitoringOutcome", "run_monitoring"]
