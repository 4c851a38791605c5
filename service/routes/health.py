"""GET /healthz, GET /readyz and GET /metrics, open even when an API key is set."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.deps import StateDep
from service.schemas import ErrorResponse, HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """Report that the process serves HTTP."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ErrorResponse}})
async def readyz(state: StateDep) -> ReadyResponse:
    """Report whether at least one model is loaded."""
    snapshot = state.registry.snapshot
    if not snapshot.models:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"no model is loaded from the model store ({len(snapshot.failed)} failed)",
        )
    return ReadyResponse(status="ready", models_loaded=len(snapshot.models), models_failed=len(snapshot.failed))


@router.get(
    "/metrics",
    response_model=None,
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def prometheus_metrics() -> Response:
    """Export the metrics in the Prometheus text format."""
    return Response(content=generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
