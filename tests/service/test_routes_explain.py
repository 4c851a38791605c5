"""POST /explain/{class_name} through TestClient."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from service_testing import FLAKY_WIDTH, decode_png, encode, gray_image
from test_imaging import png_header_only

from service import imaging
from service.config import Settings
from service.main import create_app


def upload(data: bytes, name: str = "part.png", content_type: str = "image/png") -> dict:
    return {"file": (name, data, content_type)}


def test_explain_json_fields(client: TestClient, settings) -> None:
    import json

    stored = json.loads((settings.model_store / "tile" / "model.json").read_text())
    response = client.post("/explain/tile", files=upload(encode(gray_image(80, 60), "PNG")))
    assert response.status_code == 200
    body = response.json()
    assert body["class"] == "tile"
    assert body["width"] == 80
    assert body["height"] == 60
    assert body["a"] == 1.0
    assert body["threshold"] == pytest.approx(stored["threshold"]["score"])
    assert isinstance(body["score"], float)
    assert body["is_anomalous"] == (body["score"] > body["threshold"])
    assert body["filter_size"] >= 1
    assert body["batch_size"] >= 1
    assert set(body["timings"]) == {"queue_ms", "model_ms", "total_ms"}
    assert body["timings"]["total_ms"] >= body["timings"]["model_ms"] > 0
    assert body["request_id"] == response.headers["X-Request-ID"]


def test_explain_json_maps_match_upload_size(client: TestClient) -> None:
    response = client.post("/explain/tile", files=upload(encode(gray_image(123, 45), "PNG")))
    body = response.json()
    heatmap = decode_png(base64.b64decode(body["heatmap"]))
    mask = decode_png(base64.b64decode(body["mask"]))
    assert heatmap.size == (123, 45)
    assert heatmap.mode == "RGB"
    assert mask.size == (123, 45)
    assert mask.mode == "L"
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


@pytest.mark.parametrize(("output", "mode"), [("heatmap", "RGB"), ("mask", "L"), ("overlay", "RGB")])
def test_explain_png_outputs_decode(client: TestClient, output: str, mode: str) -> None:
    response = client.post(
        f"/explain/tile?format=png&output={output}", files=upload(encode(gray_image(70, 50), "JPEG"), "p.jpg", "image/jpeg")
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert "X-Request-ID" in response.headers
    assert float(response.headers["X-Anomaly-Score"]) > 0
    picture = decode_png(response.content)
    assert picture.size == (70, 50)
    assert picture.mode == mode


def test_explain_matches_model_output(client: TestClient, model_store: Path) -> None:
    image = gray_image(96, 72, seed=3)
    a = 1.5
    response = client.post(f"/explain/tile?a={a}", files=upload(encode(image, "PNG")))
    body = response.json()

    module = torch.jit.load(str(model_store / "tile" / "model.pt"), map_location="cpu")
    tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8)[None].copy())
    with torch.inference_mode():
        expected = module(tensor, a)
    assert body["score"] == pytest.approx(float(expected["score"]), rel=1e-5)
    assert body["filter_size"] == int(expected["filter_size"])
    assert body["is_anomalous"] == bool(expected["is_anomalous"])
    served_mask = np.asarray(decode_png(base64.b64decode(body["mask"]))) > 0
    assert np.array_equal(served_mask, expected["mask"].numpy())
    served_heatmap = np.asarray(decode_png(base64.b64decode(body["heatmap"])))
    assert np.array_equal(served_heatmap, imaging.heatmap_to_rgb(expected["heatmap"].numpy()))


def test_explain_threshold_multiplier_changes_mask(client: TestClient) -> None:
    data = encode(gray_image(64, 64, seed=5), "PNG")
    low = client.post("/explain/tile?a=0.1", files=upload(data)).json()
    high = client.post("/explain/tile?a=5", files=upload(data)).json()
    low_mask = np.asarray(decode_png(base64.b64decode(low["mask"]))) > 0
    high_mask = np.asarray(decode_png(base64.b64decode(high["mask"]))) > 0
    assert low_mask.sum() >= high_mask.sum()
    assert low["score"] == pytest.approx(high["score"])


@pytest.mark.parametrize(
    "data",
    [
        encode(Image.new("RGB", (50, 40), (10, 200, 30)), "PNG"),
        encode(Image.new("RGBA", (50, 40), (10, 200, 30, 128)), "WEBP"),
        encode(Image.fromarray(np.full((40, 50), 40000, dtype=np.uint16)), "PNG"),
        encode(Image.new("RGB", (50, 40), (90, 90, 90)), "BMP"),
        encode(Image.new("L", (50, 40), 90), "TIFF"),
    ],
    ids=["rgb-png", "rgba-webp", "16-bit-png", "bmp", "tiff"],
)
def test_explain_accepts_colour_and_depth(client: TestClient, data: bytes) -> None:
    response = client.post("/explain/tile", files=upload(data))
    assert response.status_code == 200
    assert (response.json()["width"], response.json()["height"]) == (50, 40)


def test_explain_applies_exif_orientation(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to display
    response = client.post("/explain/tile", files=upload(encode(gray_image(80, 60), "JPEG", exif=exif)))
    assert (response.json()["width"], response.json()["height"]) == (60, 80)


def test_explain_unknown_class_lists_loaded(client: TestClient) -> None:
    response = client.post("/explain/carpet", files=upload(encode(gray_image(), "PNG")))
    assert response.status_code == 404
    assert response.json()["detail"] == "class 'carpet' is not loaded; loaded classes: flaky, tile"
    assert response.json()["request_id"] == response.headers["X-Request-ID"]


def test_explain_path_traversal_is_unknown_class(client: TestClient) -> None:
    response = client.post("/explain/..%2Fmodel_store", files=upload(encode(gray_image(), "PNG")))
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"plain text, not a picture", "the uploaded file is not a supported image"),
        (b"", "the uploaded file is empty"),
        (encode(gray_image(), "PNG")[:300], "the image data is truncated or corrupt"),
        (encode(gray_image(), "GIF"), "image format GIF is not supported; use PNG, JPEG, BMP, TIFF or WebP"),
    ],
    ids=["text", "empty", "truncated", "gif"],
)
def test_explain_rejects_bad_upload(client: TestClient, data: bytes, detail: str) -> None:
    response = client.post("/explain/tile", files=upload(data))
    assert response.status_code == 422
    assert response.json()["detail"] == detail


def test_explain_requires_file_field(client: TestClient) -> None:
    response = client.post("/explain/tile", files={"image": ("p.png", encode(gray_image(), "PNG"), "image/png")})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]
    assert response.json()["detail"][0]["type"] == "missing"


@pytest.mark.parametrize("a", ["0", "-1", "nan", "inf", "abc"])
def test_explain_rejects_invalid_a(client: TestClient, a: str) -> None:
    response = client.post(f"/explain/tile?a={a}", files=upload(encode(gray_image(), "PNG")))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "a"]


@pytest.mark.parametrize(("parameter", "value"), [("format", "jpeg"), ("output", "error")])
def test_explain_rejects_unknown_choice(client: TestClient, parameter: str, value: str) -> None:
    response = client.post(f"/explain/tile?{parameter}={value}", files=upload(encode(gray_image(), "PNG")))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", parameter]


def test_explain_body_over_limit_is_413(settings: Settings) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 20_000})
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8))
    data = encode(noise, "PNG")
    assert len(data) > 20_000
    with TestClient(create_app(small)) as client:
        response = client.post("/explain/tile", files=upload(data))
        assert response.status_code == 413
        assert response.json()["detail"] == "the request body exceeds the limit of 20000 bytes"
        ok = client.post("/explain/tile", files=upload(encode(gray_image(), "PNG")))
        assert ok.status_code == 200


def test_explain_too_many_pixels_is_413(client: TestClient) -> None:
    response = client.post("/explain/tile", files=upload(png_header_only(5000, 5000)))
    assert response.status_code == 413
    assert response.json()["detail"] == (
        "the image has 5000x5000 pixels, more than the limit of 16777216 pixels"
    )


def test_explain_model_failure_is_500_and_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="service")
    response = client.post("/explain/flaky", files=upload(encode(gray_image(FLAKY_WIDTH, 20), "PNG")))
    assert response.status_code == 500
    body = response.json()
    assert body["detail"] == "the model failed to explain the image; the request id is in the service log"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert any(body["request_id"] in record.getMessage() for record in caplog.records)

    # The class and the service keep serving.
    assert client.post("/explain/flaky", files=upload(encode(gray_image(20, 20), "PNG"))).status_code == 200
    assert client.post("/explain/tile", files=upload(encode(gray_image(20, 20), "PNG"))).status_code == 200


def test_explain_keeps_client_request_id(client: TestClient) -> None:
    response = client.post(
        "/explain/tile", files=upload(encode(gray_image(), "PNG")), headers={"X-Request-ID": "line-4.camera-2"}
    )
    assert response.headers["X-Request-ID"] == "line-4.camera-2"
    assert response.json()["request_id"] == "line-4.camera-2"


def test_explain_replaces_unsafe_request_id(client: TestClient) -> None:
    response = client.post(
        "/explain/tile", files=upload(encode(gray_image(), "PNG")), headers={"X-Request-ID": "a b\tc"}
    )
    assert response.headers["X-Request-ID"] != "a b\tc"
    assert len(response.headers["X-Request-ID"]) == 32


def test_explain_image_from_disk(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "part.tif"
    gray_image(40, 30).save(path)
    with path.open("rb") as handle:
        response = client.post("/explain/tile", files={"file": ("part.tif", handle, "image/tiff")})
    assert response.status_code == 200
    assert io.BytesIO(base64.b64decode(response.json()["heatmap"])).getbuffer().nbytes > 0


SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "magnetic_tile" / "test" / "blowhole" / "exp1_num_40410.jpg"


@pytest.mark.skipif(not SAMPLE.is_file(), reason="the magnetic tile sample is not in this checkout")
def test_explain_real_photograph(client: TestClient) -> None:
    response = client.post("/explain/tile?format=png&output=overlay", files=upload(SAMPLE.read_bytes(), SAMPLE.name, "image/jpeg"))
    assert response.status_code == 200
    assert decode_png(response.content).size == Image.open(SAMPLE).size


def test_explain_uncalibrated_model_has_no_verdict(trained_store, tmp_path):
    import shutil

    from service.config import Settings
    from service.main import create_app
    from service_testing import gray_image, png_bytes

    store = tmp_path / "store"
    shutil.copytree(trained_store / "uncalibrated", store / "uncalibrated")
    settings = Settings(model_store=store, device="cpu", energy_tracking=False)
    with TestClient(create_app(settings)) as client:
        files = {"file": ("tile.png", png_bytes(gray_image()), "image/png")}
        response = client.post("/explain/uncalibrated", files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["threshold"] is None
        assert body["is_anomalous"] is None
        assert body["score"] > 0

        picture = client.post("/explain/uncalibrated?format=png&output=mask", files=files)
        assert picture.status_code == 200
        assert picture.headers["X-Is-Anomalous"] == "unknown"

        info = client.get("/models/uncalibrated").json()
        assert info["score_threshold"] is None
