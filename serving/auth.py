"""Optional API-key authentication for the predict and push routes (constant-time comparison)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

API_KEY_HEADER = "X-API-Key"

_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                               description="One of the keys in FEASTKIT_API_KEYS.")
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`, same keys.")


class Unauthorized(Exception):
    """The request carries no API key, or a key that is not configured."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_matches(candidate: str, keys: list[bytes]) -> bool:
    """True when candidate equals one of keys; compares against every key in constant time."""
    given = candidate.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched


async def require_api_key(
    request: Request,
    header_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Dependency: pass when auth is off (no keys configured) or a configured key is presented."""
    keys: list[bytes] = request.app.state.api_keys
    if not keys:
        return
    candidate = header_key or (bearer.credentials if bearer else None)
    if not candidate:
        raise Unauthorized(f"missing API key: send it in the {API_KEY_HEADER} header "
                           "or as `Authorization: Bearer <key>`")
    if not key_matches(candidate, keys):
        raise Unauthorized("API key not recognised: use one of the keys configured in "
                           "FEASTKIT_API_KEYS")
