"""POST /explain/{class_name}: heatmap, mask and score of an uploaded image."""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, HTTPException, Query, Request, Response, UploadFile, status

from service import imaging, metrics
from service.batching import Explanation, ModelCallError
from service.deps import RequestIdDep, StateDep
from service.imaging import DecodedImage, ImageTooLargeError, InvalidImageError
from service.schemas import ErrorResponse, ExplainResponse, Timings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["explain"])

_ERROR_RESPONSES = {
    404: {"model": ErrorResponse, "description": "The class is not loaded."},
    413: {"model": ErrorResponse, "description": "The body or the image exceeds a limit."},
    422: {"model": ErrorResponse, "description": "The upload is not a supported image, or a parameter is invalid."},
    500: {"model": ErrorResponse, "description": "The model failed; the request id is in the service log."},
}


def unknown_class_error(class_name: str, known: list[str]) -> HTTPException:
    """Build the 404 for a class that is not loaded, listing the loaded ones."""
    listed = ", ".join(sorted(known)) if known else "none"
    return HTTPException(
        status_code=status.HTTP_404_NOT_FOUND,
        detail=f"class {class_name!r} is not loaded; loaded classes: {listed}",
    )


@router.post(
    "/explain/{class_name}",
    response_model=ExplainResponse,
    responses={200: {"content": {"image/png": {}}}, **_ERROR_RESPONSES},
)
async def explain(
    class_name: str,
    request: Request,
    state: StateDep,
    request_id: RequestIdDep,
    file: Annotated[UploadFile, File(description="PNG, JPEG, BMP, TIFF or WebP image.")],
    a: Annotated[float, Query(gt=0, allow_inf_nan=False, description="Mask threshold multiplier.")] = 1.0,
    format: Annotated[Literal["json", "png"], Query(description="JSON body or one PNG picture.")] = "json",
    output: Annotated[
        Literal["heatmap", "mask", "overlay"], Query(description="Picture returned when format is png.")
    ] = "overlay",
) -> ExplainResponse | Response:
    """Explain an uploaded image with the model of one product class."""
    snapshot = state.registry.snapshot
    if class_name not in snapshot.models:
        raise unknown_class_error(class_name, list(snapshot.models))

    data = await file.read()
    metrics.UPLOAD_BYTES.labels(class_name).observe(len(data))
    limit = state.settings.max_upload_bytes
    if len(data) > limit:
        raise HTTPException(
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"the upload has {len(data)} bytes, more than the limit of {limit} bytes",
        )

    try:
        image = await asyncio.to_thread(imaging.decode_image, data, max_pixels=state.settings.max_pixels)
    except InvalidImageError as error:
        raise HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(error)) from error
    except ImageTooLargeError as error:
        raise HTTPException(status_code=status.HTTP_413_CONTENT_TOO_LARGE, detail=str(error)) from error
    del data

    # Look the model up again after the awaits above, and queue without
    # awaiting in between, so a reload that just finished is respected.
    model = state.registry.snapshot.models.get(class_name)
    if model is None:
        raise unknown_class_error(class_name, list(state.registry.snapshot.models))
    try:
        explanation = await state.batchers.get(model).explain(image.tensor, a)
    except ModelCallError as error:
        # The exception handler logs the 500 itself, so this line adds the cause.
        logger.error("request %s: model %s failed: %s", request_id, class_name, error)
        raise HTTPException(
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
            detail="the model failed to explain the image; the request id is in the service log",
        ) from error

    threshold = None if math.isnan(model.score_threshold) else model.score_threshold
    if format == "png":
        picture = await asyncio.to_thread(_render_png, image, explanation, output)
        return Response(
            content=picture, media_type="image/png", headers=_summary_headers(explanation, threshold is not None)
        )

    heatmap_png, mask_png = await asyncio.to_thread(_render_maps, explanation)
    total_ms = (time.perf_counter() - request.state.started) * 1000.0
    return ExplainResponse(
        request_id=request_id,
        class_name=class_name,
        score=explanation.score,
        is_anomalous=None if threshold is None else explanation.is_anomalous,
        threshold=threshold,
        a=a,
        filter_size=explanation.filter_size,
        width=image.width,
        height=image.height,
        batch_size=explanation.batch_size,
        timings=Timings(
            queue_ms=explanation.queue_seconds * 1000.0,
            model_ms=explanation.model_seconds * 1000.0,
            total_ms=total_ms,
        ),
        heatmap=base64.b64encode(heatmap_png).decode("ascii"),
        mask=base64.b64encode(mask_png).decode("ascii"),
    )


def _render_maps(explanation: Explanation) -> tuple[bytes, bytes]:
    heatmap = imaging.encode_png(imaging.heatmap_to_rgb(explanation.heatmap))
    mask = imaging.encode_png(imaging.mask_to_gray(explanation.mask))
    return heatmap, mask


def _render_png(image: DecodedImage, explanation: Explanation, output: str) -> bytes:
    if output == "heatmap":
        pixels = imaging.heatmap_to_rgb(explanation.heatmap)
    elif output == "mask":
        pixels = imaging.mask_to_gray(explanation.mask)
    else:
        pixels = imaging.overlay_to_rgb(image.preview, explanation.heatmap, explanation.mask)
    return imaging.encode_png(pixels)


def _summary_headers(explanation: Explanation, calibrated: bool) -> dict[str, str]:
    """Carry the numbers of the JSON body on a PNG response."""
    if not calibrated:
        verdict = "unknown"
    else:
        verdict = "true" if explanation.is_anomalous else "false"
    return {
        "X-Anomaly-Score": f"{explanation.score:.9g}",
        "X-Is-Anomalous": verdict,
        "X-Filter-Size": str(explanation.filter_size),
    }
