"""Helpers of the service tests: test images, a flaky scripted model and a uvicorn subprocess.

No `from __future__ import annotations` here: TorchScript reads the class
annotations of the flaky model as real types.
"""


import io
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List

import httpx
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 64
# Width that makes the flaky model raise. Every other width works.
FLAKY_WIDTH = 13


class FlakyModel(nn.Module):
    """A scripted model that honours the service contract but raises for one width.

    It simulates a model whose call fails at request time after it loaded
    and warmed up without trouble.
    """

    image_size: int
    channels: int
    score_threshold: float
    format_version: int

    def __init__(self) -> None:
        super().__init__()
        self.image_size = IMAGE_SIZE
        self.channels = 1
        self.score_threshold = 0.5
        self.format_version = 1

    def forward(self, image: Tensor, a: float) -> Dict[str, Tensor]:
        return self.explain_batch([image], [a])[0]

    @torch.jit.export
    def explain_batch(self, images: List[Tensor], a: List[float]) -> List[Dict[str, Tensor]]:
        results: List[Dict[str, Tensor]] = []
        for image in images:
            if image.shape[2] == 13:
                raise RuntimeError("flaky model: width 13 is not supported")
            height = image.shape[1]
            width = image.shape[2]
            heatmap = torch.zeros([height, width])
            results.append(
                {
                    "reconstruction": torch.zeros([1, height, width]),
                    "error": heatmap,
                    "heatmap": heatmap,
                    "mask": heatmap > 0.5,
                    "score": torch.tensor(0.25),
                    "filter_size": torch.tensor(3),
                    "is_anomalous": torch.tensor(False),
                }
            )
        return results


def write_flaky_model(store: Path, class_name: str = "flaky") -> Path:
    """Write the flaky model and its metadata into `store/class_name`."""
    folder = store / class_name
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch 2.14
        torch.jit.script(FlakyModel()).save(str(folder / "model.pt"))
    (folder / "model.json").write_text('{"format_version": 1, "class_name": "%s"}' % class_name)
    return folder


def png_bytes(image: Image.Image, **save_options) -> bytes:
    """Encode a Pillow image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


def encode(image: Image.Image, image_format: str, **save_options) -> bytes:
    """Encode a Pillow image in `image_format`."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **save_options)
    return buffer.getvalue()


def gray_image(width: int = 80, height: int = 60, seed: int = 0) -> Image.Image:
    """A gray test image with a bright square, so the maps are not flat."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 120, size=(height, width), dtype=np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = 250
    return Image.fromarray(pixels, mode="L")


def decode_png(data: bytes) -> Image.Image:
    """Decode PNG bytes, failing the test when they are not a PNG."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def free_port() -> int:
    """Ask the kernel for a free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class UvicornServer:
    """A uvicorn subprocess serving `service.main:app` on 127.0.0.1."""

    def __init__(self, store: Path, log_path: Path, **environment: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "AEXAD_MODEL_STORE": str(store),
            "AEXAD_DEVICE": "cpu",
            "AEXAD_ENERGY_TRACKING": "false",
            **environment,
        }
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Poll /readyz until it returns 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"uvicorn was not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        """The server's output so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the server with SIGINT, as Ctrl+C would, and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
