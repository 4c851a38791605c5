import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import DataError
from training.export import load_module
from training.train import FitConfig, fit, load_training_image
from training.data import discover

FAST = dict(epochs=1, image_size=64, batch_size=8, measure_energy=False, progress=False)


@pytest.mark.slow
def test_fit_sample_writes_loadable_model(sample_data, tmp_path):
    result = fit(FitConfig(data=sample_data, class_name="tile", store=tmp_path, **FAST))
    metadata = json.loads((result.model_dir / "model.json").read_text())
    assert metadata["class_name"] == "tile"
    assert metadata["backbone"]["name"] == "efficientnet_lite0"
    assert metadata["backbone"]["weights"] == "imagenet"
    assert metadata["scenario"] == "standard"
    assert metadata["counts"]["train_anomalous"] == len(metadata["moved_to_train"])
    assert metadata["counts"]["augmented_anomalous"] == 15 * metadata["counts"]["train_anomalous"]
    assert metadata["threshold"]["score"] > 0
    assert metadata["training"]["epochs"] == 1
    assert np.isfinite(metadata["training"]["final_loss"])

    moved = set(metadata["moved_to_train"])
    calibration = set(metadata["calibration_images"])
    assert moved.isdisjoint(calibration)
    assert all(path.startswith("test/") and "/good/" not in path for path in moved)

    model = load_module(result.model_dir)
    image = torch.from_numpy(np.array(Image.open(next((sample_data / "test" / "crack").iterdir()))))[None]
    output = model(image, 1.0)
    assert output["heatmap"].shape == image.shape[1:]
    assert output["mask"].shape == image.shape[1:]


@pytest.mark.slow
def test_fit_anomalies_only_has_no_threshold(sample_data, tmp_path):
    result = fit(FitConfig(data=sample_data, class_name="tile", store=tmp_path, scenario="anomalies-only", **FAST))
    metadata = json.loads((result.model_dir / "model.json").read_text())
    assert metadata["counts"]["train_normal"] == 0
    assert metadata["threshold"]["score"] is None
    assert "anomalies-only" in metadata["threshold"]["method"]


@pytest.mark.slow
def test_fit_mse_trains_on_normal_only(sample_data, tmp_path):
    result = fit(FitConfig(data=sample_data, class_name="ae", store=tmp_path, loss="mse", **FAST))
    metadata = result.metadata
    assert metadata["counts"]["augmented_anomalous"] == 0
    assert metadata["target_function"]["kind"] == "none"


@pytest.mark.slow
def test_fit_random_weights_marked(sample_data, tmp_path):
    result = fit(FitConfig(data=sample_data, class_name="raw", store=tmp_path, backbone_weights="none", **FAST))
    assert result.metadata["backbone"]["weights"] == "none"
    assert "RANDOM" in result.metadata["backbone"]["warning"]


@pytest.mark.slow
@pytest.mark.dataset
def test_fit_magnetic_tile(magnetic_tile, tmp_path):
    result = fit(FitConfig(data=magnetic_tile, class_name="magnetic_tile", store=tmp_path, **FAST))
    counts = result.metadata["counts"]
    assert counts["train_normal"] + counts["calibration_normal"] == 714
    assert counts["train_anomalous"] == 15
    assert counts["empty_masks"] == 4
    assert load_module(result.model_dir).image_size == 64


def test_training_image_matches_model_resize(sample_data):
    sample = next(s for s in discover(sample_data) if s.mask_path is not None and s.defect_type == "crack")
    image, mask = load_training_image(sample, 1, 64)
    assert image.shape == (64, 64, 1)
    assert image.dtype == np.uint8
    assert mask.shape == (64, 64)
    assert mask.any()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(scenario="both"), "invalid scenario"),
        (dict(loss="l1"), "invalid loss"),
        (dict(target_value=0.5), "outside \\[0, 1\\]"),
        (dict(image_size=100), "multiple of 8"),
        (dict(epochs=0), "--epochs"),
        (dict(class_name="../x"), "invalid class name"),
    ],
)
def test_fit_rejects_bad_settings(sample_data, tmp_path, change, message):
    settings = dict(data=sample_data, class_name="tile", store=tmp_path, **FAST)
    settings.update(change)
    with pytest.raises(ValueError, match=message):
        fit(FitConfig(**settings))


def test_fit_missing_folder(tmp_path):
    with pytest.raises(DataError, match="missing"):
        fit(FitConfig(data=tmp_path / "missing", class_name="tile", store=tmp_path, **FAST))


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "training", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_help_lists_options():
    completed = run_cli("fit", "--help")
    assert completed.returncode == 0
    for option in ("--scenario", "--anomalies-per-type", "--epochs", "--batch-size", "--image-size",
                   "--backbone", "--backbone-weights", "--loss", "--target-function", "--target-value",
                   "--device", "--seed", "--store", "wide_resnet50_2", "TORCH_HOME"):
        assert option in completed.stdout


def test_cli_missing_data_is_clear_error(tmp_path):
    completed = run_cli("fit", "--data", str(tmp_path / "nowhere"), "--class-name", "tile", "--no-progress")
    assert completed.returncode == 2
    assert "error:" in completed.stderr
    assert "nowhere" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_cli_missing_mask_is_clear_error(sample_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    mask = next((data / "ground_truth" / "crack").iterdir())
    mask.unlink()
    completed = run_cli("fit", "--data", str(data), "--class-name", "tile", "--no-progress")
    assert completed.returncode == 2
    assert mask.name.replace("_mask.png", "") in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.slow
def test_cli_fit_prints_summary(sample_data, tmp_path):
    completed = run_cli(
        "fit", "--data", str(sample_data), "--class-name", "tile", "--store", str(tmp_path),
        "--epochs", "1", "--image-size", "64", "--no-energy",
    )
    assert completed.returncode == 0, completed.stderr
    assert f"model written to {tmp_path / 'tile'}" in completed.stdout
    assert "1 epochs" in completed.stdout
    assert "training tile" in completed.stderr  # the progress bar


def test_resize_mask_keeps_tiny_defect():
    from training.train import resize_mask

    mask = np.zeros((400, 400), dtype=bool)
    mask[200:202, 100:103] = True  # 2 x 3 pixels, far below one 64-px cell
    resized = resize_mask(mask, 64)
    assert resized.shape == (64, 64)
    assert resized.any()


def test_resize_mask_half_coverage():
    from training.train import resize_mask

    mask = np.zeros((8, 8), dtype=bool)
    mask[:4, :] = True
    assert resize_mask(mask, 4)[:2].all()
    assert not resize_mask(mask, 4)[2:].any()
