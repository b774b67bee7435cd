"""Read-only monitoring endpoints: the latest drift report and live feature-view freshness."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query

from feastkit.errors import FeastkitError
from feastkit.settings import Settings


def monitoring_router(settings: Settings) -> APIRouter:
    """GET /v1/monitoring/drift/latest and GET /v1/monitoring/freshness, for this deployment."""
    router = APIRouter(prefix="/v1/monitoring", tags=["monitoring"])
    lock = threading.Lock()
    opened: dict[str, Any] = {}

    def store() -> Any:
        with lock:
            if "store" not in opened:
                from feastkit.store import open_store

                opened["store"] = open_store(settings)
            return opened["store"]

    @router.get("/drift/latest", summary="The latest monitoring report (JSON, schema in docs/monitoring.md)")
    def drift_latest() -> dict[str, Any]:
        from monitoring.report import LATEST_JSON

        path = settings.reports_dir / LATEST_JSON
        if not path.is_file():
            raise HTTPException(404, detail=f"no monitoring report in {settings.reports_dir} yet — "
                                            "run `feastkit drift` (or the drift_check DAG) first")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise HTTPException(500, detail=f"report {path} cannot be read ({type(exc).__name__}) — "
                                            "run `feastkit drift` again") from None
        document["report_html"] = str(path.with_name(LATEST_JSON.replace(".json", ".html")))
        return document

    @router.get("/freshness", summary="Age of each feature view's materialized data vs its SLA")
    def freshness(as_of: datetime | None = Query(  # noqa: B008  (FastAPI's declaration style)
            None, description="Judge at this time (ISO 8601; default now, UTC).")) -> dict[str, Any]:
        from monitoring.freshness import check_freshness

        moment = as_of or datetime.now(UTC)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            results = check_freshness(store(), moment)
        except FeastkitError as exc:
            raise HTTPException(503, detail=exc.message) from None
        views = [r.to_dict() for r in results]
        return {"as_of": moment.isoformat(), "ok": not any(r.stale for r in results),
                "stale": [r.view for r in results if r.stale], "views": views}

    return router
