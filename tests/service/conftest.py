"""Fixtures: a model store exported by the training package, apps and a real uvicorn."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_testing import IMAGE_SIZE, UvicornServer, write_flaky_model

from service.config import Settings
from service.main import create_app


@pytest.fixture(scope="session")
def exported_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with `tile`, an untrained 64 px gray model from the training package."""
    from training.export import export_demo_model

    store = tmp_path_factory.mktemp("exported_store")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        export_demo_model(store, "tile", image_size=IMAGE_SIZE, channels=1)
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
