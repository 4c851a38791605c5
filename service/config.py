"""Service settings, read once from `AEXAD_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings of one service process.

    Every field is read from the environment variable of the same name in
    upper case with the `AEXAD_` prefix, for example `AEXAD_MODEL_STORE`.
    """

    model_config = SettingsConfigDict(env_prefix="AEXAD_", extra="ignore")

    model_store: Path = Field(
        default=Path("model_store"),
        description="Folder with one `<class>/model.pt` and `<class>/model.json` per product class.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Device for the models; `auto` takes CUDA when it is available, else the CPU.",
    )
    max_upload_bytes: int = Field(
        default=20 * 1024 * 1024,
        gt=0,
        description="Largest request body accepted on /explain, in bytes.",
    )
    # The maps are computed and encoded at the upload's size, about 20 bytes of
    # working memory a pixel, so 4096 x 4096 keeps one request near 350 MB.
    max_pixels: int = Field(
        default=4096 * 4096,
        gt=0,
        description="Largest width times height accepted, checked from the image header.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, /explain and /models require this value in the X-API-Key header.",
    )
    batch_window_ms: float = Field(
        default=2.0,
        ge=0,
        description="How long a class's batcher waits for more requests after the first, in milliseconds.",
    )
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most images one model call explains. Unset means 8 on CUDA and 1 on the CPU, where "
            "batched calls gave no more images per second than single ones (docs/benchmarks.md)."
        ),
    )
    inference_workers: int = Field(
        default=1,
        ge=1,
        description=(
            "Threads that run model loading and model calls. Keep 1 on a CPU: one thread already uses every "
            "core, and a second thread running torch operators made every call about twice as slow."
        ),
    )
    energy_tracking: bool = Field(
        default=True,
        description="Run one CodeCarbon tracker for the energy and emissions metrics.",
    )
    energy_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="Seconds between two CodeCarbon power measurements.",
    )
    codecarbon_country: str = Field(
        default="USA",
        pattern=r"^[A-Z]{3}$",
        description=(
            "ISO 3166-1 alpha-3 code of the country whose electricity mix sets the "
            "carbon intensity; set it to where the service runs."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        description="Level of the service's own log records.",
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_means_none(cls, value: object) -> object:
        # An empty AEXAD_API_KEY= line would otherwise accept an empty header.
        return None if value == "" else value
