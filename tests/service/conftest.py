"""Fixtures: a model store exported by the training package, apps and a real uvicorn."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_testing import IMAGE_SIZE, REPO_ROOT, UvicornServer, write_flaky_model

from service.config import Settings
from service.main import create_app

SAMPLE_DATA = REPO_ROOT / "samples" / "magnetic_tile"


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models trained by the training package on the shipped magnetic tile sample, 64 px, 1 epoch.

    `tile` is a standard-scenario model with a calibrated threshold;
    `uncalibrated` is trained on anomalies only, so it has no threshold.
    """
    from training.train import FitConfig, fit

    store = tmp_path_factory.mktemp("trained_store")
    fast = dict(epochs=1, image_size=IMAGE_SIZE, batch_size=8, measure_energy=False, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fit(FitConfig(data=SAMPLE_DATA, class_name="tile", store=store, **fast))
        fit(FitConfig(data=SAMPLE_DATA, class_name="uncalibrated", store=store, scenario="anomalies-only", **fast))
    return store


@pytest.fixture(scope="session")
def exported_store(trained_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the trained `tile` model and the `flaky` model that fails on one width."""
    store = tmp_path_factory.mktemp("exported_store")
    shutil.copytree(trained_store / "tile", store / "tile")
    write_flaky_model(store)
    return store


@pytest.fixture
def model_store(exported_store: Path, tmp_path: Path) -> Path:
    """A copy of the exported store that a test may change."""
    store = tmp_path / "model_store"
    shutil.copytree(exported_store, store)
    return store


@pytest.fixture
def settings(model_store: Path) -> Settings:
    """Test settings: CPU, no CodeCarbon, a short batch window."""
    return Settings(model_store=model_store, device="cpu", energy_tracking=False, batch_window_ms=2.0)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A client of an app whose lifespan has run."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def uvicorn_server(model_store: Path, tmp_path: Path) -> Iterator[UvicornServer]:
    """A running uvicorn over a private copy of the exported store."""
    server = UvicornServer(model_store, tmp_path / "uvicorn.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
