"""Settings read from AEXAD_* environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["AEXAD_MODEL_STORE", "AEXAD_API_KEY", "AEXAD_DEVICE"]:
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.model_store == Path("model_store")
    assert settings.device == "auto"
    assert settings.api_key is None
    assert settings.max_upload_bytes == 20 * 1024 * 1024
    assert settings.max_pixels == 4096 * 4096
    assert settings.codecarbon_country == "USA"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEXAD_MODEL_STORE", "/srv/models")
    monkeypatch.setenv("AEXAD_DEVICE", "cpu")
    monkeypatch.setenv("AEXAD_API_KEY", "k")
    monkeypatch.setenv("AEXAD_BATCH_WINDOW_MS", "0")
    monkeypatch.setenv("AEXAD_ENERGY_TRACKING", "false")
    settings = Settings()
    assert settings.model_store == Path("/srv/models")
    assert settings.device == "cpu"
    assert settings.api_key.get_secret_value() == "k"
    assert settings.batch_window_ms == 0
    assert settings.energy_tracking is False


def test_settings_empty_api_key_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEXAD_API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("AEXAD_DEVICE", "tpu"), ("AEXAD_CODECARBON_COUNTRY", "de"), ("AEXAD_MAX_BATCH_SIZE", "0")],
)
def test_settings_reject_invalid_values(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()
