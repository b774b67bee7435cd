"""Moved to serving/routers/monitoring.py (kept importable for existing callers)."""

from serving.routers.monitoring import FreshnessCheck, monitoring_router

__all__ = ["FreshnessCheck", "monitoring_router"]
