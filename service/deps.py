"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from service.state import ServiceState

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required when AEXAD_API_KEY is set.")


def get_state(request: Request) -> ServiceState:
    """Return the state built by the application's lifespan."""
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def require_api_key(state: StateDep, api_key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """Reject the request unless it carries the configured API key.

    Raises:
        HTTPException: 401 when a key is configured and the header is missing or wrong.
    """
    expected = state.settings.api_key
    if expected is None:
        return
    # compare_digest takes the same time wherever the first difference is.
    if api_key is None or not secrets.compare_digest(api_key.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid API key in the X-API-Key header",
        )


def get_request_id(request: Request) -> str:
    """Return the id the request middleware gave this request."""
    return request.state.request_id


RequestIdDep = Annotated[str, Depends(get_request_id)]
