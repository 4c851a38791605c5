"""Response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class Timings(BaseModel):
    """Durations of the steps of one explanation request, in milliseconds."""

    queue_ms: float = Field(description="Wait in the class's batcher before the model call started.")
    model_ms: float = Field(description="Duration of the model call, shared by the whole batch.")
    total_ms: float = Field(description="From receiving the request to finishing the response body.")


class ExplainResponse(BaseModel):
    """Explanation of one uploaded image."""

    request_id: str
    class_name: str = Field(serialization_alias="class", description="Product class whose model explained the image.")
    score: float = Field(description="Anomaly score ‖e · G_k̂(e)‖₂.")
    is_anomalous: bool | None = Field(
        description="Whether the score exceeds the threshold; null when the model has no calibrated threshold."
    )
    threshold: float | None = Field(
        description=(
            "Score threshold stored with the model; null for models trained without normal images "
            "(anomalies-only scenario), which have nothing to calibrate it on."
        )
    )
    a: float = Field(description="Mask threshold multiplier used: mask = heatmap > μ + a·σ.")
    filter_size: int = Field(description="Automatic Gaussian filter size k̂, in pixels at the network input size.")
    width: int = Field(description="Image width in pixels after the EXIF orientation is applied.")
    height: int = Field(description="Image height in pixels after the EXIF orientation is applied.")
    batch_size: int = Field(description="Images explained together with this one in one model call.")
    timings: Timings
    heatmap: str = Field(description="Base64 PNG, width x height, the heatmap coloured with the JET colour map.")
    mask: str = Field(description="Base64 PNG, width x height, gray, 255 where the mask is set.")


class ModelInfo(BaseModel):
    """State of one class folder in the model store."""

    class_name: str = Field(serialization_alias="class")
    state: Literal["loaded", "failed"]
    error: str | None = Field(default=None, description="Why the class failed to load.")
    image_size: int | None = None
    channels: int | None = None
    score_threshold: float | None = None
    format_version: int | None = None
    device: str | None = None
    sha256: str | None = Field(default=None, description="SHA-256 of model.pt.")
    loaded_at: datetime | None = None
    metadata: dict[str, Any] | None = Field(default=None, description="The class's model.json.")


class ModelsResponse(BaseModel):
    """Every class folder of the model store."""

    device: str
    store_scanned_at: datetime
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    """Liveness of the process."""

    status: Literal["ok"]


class ReadyResponse(BaseModel):
    """Readiness: at least one model serves."""

    status: Literal["ready"]
    models_loaded: int
    models_failed: int


class ErrorResponse(BaseModel):
    """Body of every error response."""

    detail: Any
    request_id: str
