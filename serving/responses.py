"""Error bodies shared by the app's handlers and routers, and the error responses they document."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from serving.logs import request_id_var
from serving.schemas import DetailResponse, ErrorResponse


def error_response(status: int, error: str, detail: list[str], headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    """`{"error", "detail", "request_id"}` with the given status (the body of every API error)."""
    return JSONResponse(status_code=status, headers=headers, content={
        "error": error, "detail": detail, "request_id": request_id_var.get()})


ERRORS = {401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
          413: {"model": ErrorResponse, "description": "Body or batch too large."},
          422: {"model": ErrorResponse, "description": "Invalid request; every problem named."},
          503: {"model": ErrorResponse, "description": "Online store unavailable; retry later."}}

MONITORING_ERRORS = {
    404: {"model": DetailResponse, "description": "No monitoring report yet."},
    422: {"model": ErrorResponse, "description": "Invalid query; every problem named."},
    503: {"model": DetailResponse, "description": "The feature store cannot be read."}}
