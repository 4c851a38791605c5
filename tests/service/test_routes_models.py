"""GET /models, GET /models/{class_name}, POST /models/reload and the API key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import SecretStr
from fastapi.testclient import TestClient
from service_testing import encode, gray_image

from service.config import Settings
from service.main import create_app


def test_models_lists_loaded_classes(client: TestClient) -> None:
    response = client.get("/models")
    assert response.status_code == 200
    body = response.json()
    assert body["device"] == "cpu"
    assert [model["class"] for model in body["models"]] == ["flaky", "tile"]
    tile = body["models"][1]
    assert tile["state"] == "loaded"
    assert tile["image_size"] == 64
    assert tile["channels"] == 1
    assert tile["format_version"] == 1
    assert len(tile["sha256"]) == 64
    assert tile["metadata"]["class_name"] == "tile"
    assert tile["error"] is None


def test_model_detail(client: TestClient) -> None:
    response = client.get("/models/tile")
    assert response.status_code == 200
    assert response.json()["class"] == "tile"
    assert response.json()["metadata"]["input"]["image_size"] == 64


def test_model_detail_unknown_class(client: TestClient) -> None:
    response = client.get("/models/carpet")
    assert response.status_code == 404
    assert response.json()["detail"] == "class 'carpet' is not in the model store; known classes: flaky, tile"


def test_corrupt_model_does_not_stop_others(model_store: Path, settings: Settings) -> None:
    broken = model_store / "broken"
    broken.mkdir()
    (broken / "model.pt").write_bytes(b"not a TorchScript archive")
    shutil.copy(model_store / "tile" / "model.json", broken / "model.json")

    with TestClient(create_app(settings)) as client:
        detail = client.get("/models/broken").json()
        assert detail["state"] == "failed"
        assert detail["error"].startswith("model.pt is not a loadable TorchScript file")
        assert client.get("/models/tile").json()["state"] == "loaded"
        response = client.post("/explain/tile", files={"file": ("p.png", encode(gray_image(), "PNG"), "image/png")})
        assert response.status_code == 200
        unknown = client.post("/explain/broken", files={"file": ("p.png", encode(gray_image(), "PNG"), "image/png")})
        assert unknown.status_code == 404
        assert client.get("/readyz").json()["models_failed"] == 1


@pytest.mark.parametrize(
    ("prepare", "error"),
    [
        (lambda folder: (folder / "model.json").unlink(), "bad/model.json is missing"),
        (lambda folder: (folder / "model.pt").unlink(), "bad/model.pt is missing"),
        (lambda folder: (folder / "model.json").write_text("{not json"), "model.json is not valid JSON"),
        (
            lambda folder: (folder / "model.json").write_text(json.dumps({"format_version": 2})),
            "model.json has format_version 2 but model.pt has 1",
        ),
    ],
    ids=["no-metadata", "no-model", "bad-json", "version-mismatch"],
)
def test_broken_class_is_listed_as_failed(model_store: Path, settings: Settings, prepare, error: str) -> None:
    shutil.copytree(model_store / "tile", model_store / "bad")
    prepare(model_store / "bad")
    with TestClient(create_app(settings)) as client:
        detail = client.get("/models/bad").json()
        assert detail["state"] == "failed"
        assert detail["error"].startswith(error)


def test_invalid_folder_name_is_not_loaded(model_store: Path, settings: Settings) -> None:
    shutil.copytree(model_store / "tile", model_store / "-tile")
    with TestClient(create_app(settings)) as client:
        models = {model["class"]: model for model in client.get("/models").json()["models"]}
        assert models["-tile"]["state"] == "failed"
        assert models["-tile"]["error"] == "folder name '-tile' is not a valid class name"


def test_link_outside_store_is_not_loaded(model_store: Path, settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(model_store / "tile", outside)
    linked = model_store / "linked"
    linked.mkdir()
    (linked / "model.pt").symlink_to(outside / "model.pt")
    (linked / "model.json").symlink_to(outside / "model.json")
    with TestClient(create_app(settings)) as client:
        detail = client.get("/models/linked").json()
        assert detail["state"] == "failed"
        assert detail["error"] == "linked/model.pt resolves outside the model store"


def test_reload_picks_up_new_class(client: TestClient, model_store: Path) -> None:
    image = {"file": ("p.png", encode(gray_image(), "PNG"), "image/png")}
    assert client.post("/explain/carpet", files=image).status_code == 404

    shutil.copytree(model_store / "tile", model_store / "carpet")
    response = client.post("/models/reload")
    assert response.status_code == 200
    assert "carpet" in [model["class"] for model in response.json()["models"]]
    assert client.post("/explain/carpet", files=image).status_code == 200


def test_reload_drops_removed_class(client: TestClient, model_store: Path) -> None:
    shutil.rmtree(model_store / "flaky")
    client.post("/models/reload")
    assert client.get("/models/flaky").status_code == 404


def test_reload_keeps_unchanged_models(client: TestClient) -> None:
    before = client.get("/models/tile").json()["loaded_at"]
    client.post("/models/reload")
    assert client.get("/models/tile").json()["loaded_at"] == before


def test_reload_replaces_changed_model(client: TestClient, model_store: Path) -> None:
    before = client.get("/models/tile").json()["sha256"]
    shutil.copy(model_store / "flaky" / "model.pt", model_store / "tile" / "model.pt")
    client.post("/models/reload")
    after = client.get("/models/tile").json()
    assert after["sha256"] != before
    assert after["score_threshold"] == 0.5


class TestApiKey:
    @pytest.fixture
    def keyed_client(self, settings: Settings):
        keyed = settings.model_copy(update={"api_key": SecretStr("s3cret-key")})
        with TestClient(create_app(keyed)) as client:
            yield client

    @pytest.mark.parametrize("path", ["/models", "/models/tile"])
    def test_models_require_key(self, keyed_client: TestClient, path: str) -> None:
        response = keyed_client.get(path)
        assert response.status_code == 401
        assert response.json()["detail"] == "missing or invalid API key in the X-API-Key header"
        assert keyed_client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
        assert keyed_client.get(path, headers={"X-API-Key": "s3cret-key"}).status_code == 200

    def test_explain_requires_key(self, keyed_client: TestClient) -> None:
        image = {"file": ("p.png", encode(gray_image(), "PNG"), "image/png")}
        response = keyed_client.post("/explain/tile", files=image)
        assert response.status_code == 401
        assert response.json()["detail"] == "missing or invalid API key in the X-API-Key header"
        ok = keyed_client.post("/explain/tile", files=image, headers={"X-API-Key": "s3cret-key"})
        assert ok.status_code == 200

    def test_reload_requires_key(self, keyed_client: TestClient) -> None:
        assert keyed_client.post("/models/reload").status_code == 401
        assert keyed_client.post("/models/reload", headers={"X-API-Key": "s3cret-key"}).status_code == 200

    @pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json"])
    def test_open_paths_need_no_key(self, keyed_client: TestClient, path: str) -> None:
        assert keyed_client.get(path).status_code == 200
