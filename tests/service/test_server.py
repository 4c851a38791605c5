"""The service behind a real uvicorn on 127.0.0.1, started in a subprocess."""

from __future__ import annotations

import base64
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from service_testing import UvicornServer, decode_png, encode, gray_image
from test_routes_health import sample_value

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_server(exported_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """One uvicorn for the tests that leave the store as it is."""
    folder = tmp_path_factory.mktemp("shared_server")
    store = folder / "model_store"
    shutil.copytree(exported_store, store)
    # Batching is off by default on the CPU; this server turns it on so the
    # concurrency test exercises shared model calls.
    server = UvicornServer(
        store, folder / "uvicorn.log", AEXAD_MAX_UPLOAD_BYTES="200000", AEXAD_MAX_BATCH_SIZE="8"
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_server_explain_json(shared_server: UvicornServer) -> None:
    data = encode(gray_image(90, 70), "PNG")
    response = httpx.post(f"{shared_server.base_url}/explain/tile", files={"file": ("p.png", data, "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert decode_png(base64.b64decode(body["heatmap"])).size == (90, 70)
    assert decode_png(base64.b64decode(body["mask"])).size == (90, 70)


def test_server_fifty_concurrent_requests(shared_server: UvicornServer) -> None:
    images = [encode(gray_image(64 + index % 7, 48 + index % 5, seed=index), "PNG") for index in range(50)]

    def explain(index: int) -> httpx.Response:
        return httpx.post(
            f"{shared_server.base_url}/explain/tile",
            files={"file": (f"p{index}.png", images[index], "image/png")},
            timeout=120.0,
        )

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(explain, range(50)))

    assert [response.status_code for response in responses] == [200] * 50
    for index, response in enumerate(responses):
        body = response.json()
        assert (body["width"], body["height"]) == (64 + index % 7, 48 + index % 5)
    assert len({response.headers["X-Request-ID"] for response in responses}) == 50
    # Concurrent requests share model calls.
    assert max(response.json()["batch_size"] for response in responses) > 1


def test_server_metrics_change(shared_server: UvicornServer) -> None:
    before = httpx.get(f"{shared_server.base_url}/metrics").text
    data = encode(gray_image(), "PNG")
    for _ in range(3):
        httpx.post(f"{shared_server.base_url}/explain/tile", files={"file": ("p.png", data, "image/png")})
    after = httpx.get(f"{shared_server.base_url}/metrics").text
    labels = {"class": "tile", "status": "200"}
    assert sample_value(after, "aexad_requests_total", labels) - sample_value(before, "aexad_requests_total", labels) == 3


def test_server_content_length_over_limit(shared_server: UvicornServer) -> None:
    response = httpx.post(
        f"{shared_server.base_url}/explain/tile",
        files={"file": ("big.png", b"\0" * 300_000, "image/png")},
    )
    assert response.status_code == 413
    assert response.json()["detail"] == "the request body exceeds the limit of 200000 bytes"
    assert response.headers["X-Request-ID"] == response.json()["request_id"]


def test_server_chunked_body_over_limit(shared_server: UvicornServer) -> None:
    boundary = "aexadboundary"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body():
        # No Content-Length: the body arrives chunked and the server must count it.
        yield head
        for _ in range(30):
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{shared_server.base_url}/explain/tile",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413
    assert response.json()["detail"] == "the request body exceeds the limit of 200000 bytes"


def test_server_reload_during_requests(uvicorn_server: UvicornServer, model_store: Path) -> None:
    data = encode(gray_image(), "PNG")
    stop = threading.Event()
    statuses: list[int] = []

    def keep_explaining() -> None:
        with httpx.Client(base_url=uvicorn_server.base_url, timeout=60.0) as client:
            while not stop.is_set():
                statuses.append(client.post("/explain/tile", files={"file": ("p.png", data, "image/png")}).status_code)

    workers = [threading.Thread(target=keep_explaining) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        # Swap the tile model back and forth so every reload replaces it.
        original = (model_store / "tile" / "model.pt").read_bytes()
        replacement = (model_store / "flaky" / "model.pt").read_bytes()
        for round_index in range(4):
            (model_store / "tile" / "model.pt").write_bytes(replacement if round_index % 2 == 0 else original)
            response = httpx.post(f"{uvicorn_server.base_url}/models/reload", timeout=60.0)
            assert response.status_code == 200
    finally:
        stop.set()
        for worker in workers:
            worker.join()

    assert statuses
    assert set(statuses) == {200}


def test_server_sighup_reloads(uvicorn_server: UvicornServer, model_store: Path) -> None:
    shutil.copytree(model_store / "tile", model_store / "carpet")
    uvicorn_server.process.send_signal(signal.SIGHUP)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{uvicorn_server.base_url}/models/carpet").status_code == 200:
            break
        time.sleep(0.2)
    assert httpx.get(f"{uvicorn_server.base_url}/models/carpet").json()["state"] == "loaded"
    assert "SIGHUP received, reloading the model store" in uvicorn_server.log()
