"""Scanning and loading of the model store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.registry import ModelRegistry, resolve_device


def test_resolve_device_auto() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_resolve_device_cuda_missing() -> None:
    with pytest.raises(RuntimeError, match="AEXAD_DEVICE is cuda but CUDA is not available"):
        resolve_device("cuda")


def test_scan_reads_attributes(model_store: Path) -> None:
    snapshot = ModelRegistry(model_store, torch.device("cpu")).scan()
    tile = snapshot.models["tile"]
    assert tile.image_size == 64
    assert tile.channels == 1
    assert tile.format_version == 1
    assert tile.score_threshold == pytest.approx(float(tile.module.score_threshold))
    assert snapshot.failed == {}


def test_scan_ignores_files_and_hidden_folders(model_store: Path) -> None:
    (model_store / "README.md").write_text("notes")
    (model_store / ".tile.tmp").mkdir()
    snapshot = ModelRegistry(model_store, torch.device("cpu")).scan()
    assert sorted(snapshot.models) == ["flaky", "tile"]
    assert snapshot.failed == {}


def test_scan_reuses_unchanged_model(model_store: Path) -> None:
    registry = ModelRegistry(model_store, torch.device("cpu"))
    first = registry.scan()
    second = registry.scan(first)
    assert second.models["tile"] is first.models["tile"]


def test_scan_missing_store_loads_nothing(tmp_path: Path) -> None:
    snapshot = ModelRegistry(tmp_path / "absent", torch.device("cpu")).scan()
    assert snapshot.models == {}
    assert snapshot.failed == {}
