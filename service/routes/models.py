"""GET /models, GET /models/{class_name} and POST /models/reload."""

from __future__ import annotations

import logging
import math

from fastapi import APIRouter, HTTPException, status

from service.deps import RequestIdDep, StateDep
from service.registry import FailedModel, LoadedModel, StoreSnapshot
from service.schemas import ErrorResponse, ModelInfo, ModelsResponse

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/models", tags=["models"])


def _loaded_info(model: LoadedModel) -> ModelInfo:
    return ModelInfo(
        class_name=model.class_name,
        state="loaded",
        image_size=model.image_size,
        channels=model.channels,
        score_threshold=None if math.isnan(model.score_threshold) else model.score_threshold,
        format_version=model.format_version,
        device=str(model.device),
        sha256=model.sha256,
        loaded_at=model.loaded_at,
        metadata=model.metadata,
    )


def _failed_info(failed: FailedModel) -> ModelInfo:
    return ModelInfo(class_name=failed.class_name, state="failed", error=failed.error, loaded_at=None)


def _models_response(state: StateDep, snapshot: StoreSnapshot) -> ModelsResponse:
    infos = [_loaded_info(model) for model in snapshot.models.values()]
    infos += [_failed_info(failed) for failed in snapshot.failed.values()]
    infos.sort(key=lambda info: info.class_name)
    return ModelsResponse(device=str(state.registry.device), store_scanned_at=snapshot.loaded_at, models=infos)


@router.get("", response_model=ModelsResponse)
async def list_models(state: StateDep) -> ModelsResponse:
    """List every class folder of the model store with its state and metadata."""
    return _models_response(state, state.registry.snapshot)


@router.post("/reload", response_model=ModelsResponse)
async def reload_models(state: StateDep, request_id: RequestIdDep) -> ModelsResponse:
    """Rescan the model store and swap in new or replaced models."""
    logger.info("request %s: model store reload requested", request_id)
    snapshot = await state.reload()
    return _models_response(state, snapshot)


@router.get("/{class_name}", response_model=ModelInfo, responses={404: {"model": ErrorResponse}})
async def get_model(class_name: str, state: StateDep) -> ModelInfo:
    """Show one class's state and metadata."""
    snapshot = state.registry.snapshot
    if class_name in snapshot.models:
        return _loaded_info(snapshot.models[class_name])
    if class_name in snapshot.failed:
        return _failed_info(snapshot.failed[class_name])
    known = sorted([*snapshot.models, *snapshot.failed])
    raise HTTPException(
        status_code=status.HTTP_404_NOT_FOUND,
        detail=f"class {class_name!r} is not in the model store; known classes: {', '.join(known) or 'none'}",
    )
