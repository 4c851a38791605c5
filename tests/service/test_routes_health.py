"""GET /healthz, /readyz, /metrics, /docs and / through TestClient."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from service_testing import FLAKY_WIDTH, encode, gray_image

from service.config import Settings
from service.main import create_app


def sample_value(metrics_text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Return one sample's value from a /metrics body, 0 when it is absent."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and (labels is None or all(sample.labels.get(k) == v for k, v in labels.items())):
                return sample.value
    return 0.0


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["X-Request-ID"]


def test_readyz_with_models(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "models_loaded": 2, "models_failed": 0}


def test_readyz_without_models(tmp_path: Path, settings: Settings) -> None:
    empty = settings.model_copy(update={"model_store": tmp_path / "empty"})
    (tmp_path / "empty").mkdir()
    with TestClient(create_app(empty)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["detail"] == "no model is loaded from the model store (0 failed)"
        assert client.get("/healthz").status_code == 200


def test_missing_store_starts_unready(tmp_path: Path, settings: Settings) -> None:
    missing = settings.model_copy(update={"model_store": tmp_path / "missing"})
    with TestClient(create_app(missing)) as client:
        assert client.get("/readyz").status_code == 503


def test_metrics_change_with_requests(client: TestClient) -> None:
    image = {"file": ("p.png", encode(gray_image(), "PNG"), "image/png")}
    before = client.get("/metrics").text

    assert client.post("/explain/tile", files=image).status_code == 200
    assert client.post("/explain/tile", files=image).status_code == 200
    assert client.post("/explain/nothing", files=image).status_code == 404
    bad = {"file": ("p.png", b"junk", "image/png")}
    assert client.post("/explain/tile", files=bad).status_code == 422
    failing = {"file": ("p.png", encode(gray_image(FLAKY_WIDTH, 10), "PNG"), "image/png")}
    assert client.post("/explain/flaky", files=failing).status_code == 500
    after = client.get("/metrics").text

    def grew(name: str, labels: dict[str, str] | None = None) -> float:
        return sample_value(after, name, labels) - sample_value(before, name, labels)

    assert grew("aexad_requests_total", {"class": "tile", "status": "200"}) == 2
    assert grew("aexad_requests_total", {"class": "unknown", "status": "404"}) == 1
    assert grew("aexad_requests_total", {"class": "tile", "status": "422"}) == 1
    assert grew("aexad_requests_total", {"class": "flaky", "status": "500"}) == 1
    assert grew("aexad_request_duration_seconds_count", {"class": "tile", "outcome": "success"}) == 2
    assert grew("aexad_request_duration_seconds_count", {"class": "tile", "outcome": "client_error"}) == 1
    assert grew("aexad_request_duration_seconds_count", {"class": "flaky", "outcome": "server_error"}) == 1
    assert grew("aexad_model_duration_seconds_count", {"class": "tile"}) == 2
    assert grew("aexad_queue_wait_seconds_count", {"class": "tile"}) == 2
    assert grew("aexad_batch_size_sum", {"class": "tile"}) == 2
    assert grew("aexad_upload_bytes_count", {"class": "tile"}) == 3
    assert grew("aexad_upload_bytes_sum", {"class": "tile"}) == 2 * len(image["file"][1]) + 4
    assert sample_value(after, "aexad_models_loaded") == 2
    assert sample_value(after, "aexad_models_failed") == 0


def test_metrics_names_exported(client: TestClient) -> None:
    text = client.get("/metrics").text
    for name in [
        "aexad_requests_total",
        "aexad_request_duration_seconds_bucket",
        "aexad_model_duration_seconds_bucket",
        "aexad_queue_wait_seconds_bucket",
        "aexad_batch_size_bucket",
        "aexad_upload_bytes_bucket",
        "aexad_models_loaded",
        "aexad_models_failed",
        "aexad_energy_joules_total",
        "aexad_emissions_grams_total",
    ]:
        assert f"\n{name}" in text, name


def test_models_gauges_follow_reload(client: TestClient, model_store: Path) -> None:
    shutil.copytree(model_store / "tile", model_store / "carpet")
    (model_store / "broken").mkdir()
    client.post("/models/reload")
    text = client.get("/metrics").text
    assert sample_value(text, "aexad_models_loaded") == 3
    assert sample_value(text, "aexad_models_failed") == 1


def test_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/explain/{class_name}" in schema["paths"]
    assert "/models" in schema["paths"]


def test_index_page(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "explain/" in response.text
    assert "http://" not in response.text
    assert "https://" not in response.text
