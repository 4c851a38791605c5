"""Tests of training.evaluate and training.report on a tiny model trained on generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.cli import main
from training.data import discover, load_image
from training.evaluate import (
    ABLATION_METHODS,
    EvaluateConfig,
    ImageResult,
    choose_examples,
    evaluate_model,
    json_ready,
    run_ablation,
    select_test_samples,
    summarize_pixels,
)
from training.export import load_module, read_metadata
from training.metrics import MULTIPLIERS
from training.report import rerender_from_json
from training.train import FitConfig, fit

FAST = dict(epochs=1, image_size=32, batch_size=8, progress=False, anomalies_per_type=2)
WIDTH, HEIGHT = 44, 36  # not square, so maps and masks must follow each image's own size


def write_pair(root: Path, folder: str, name: str, seed: int, box: tuple[int, int, int, int] | None,
               annotated: bool = True) -> None:
    """Write a textured gray image, with a dark defect in box (x0, y0, x1, y1) and its mask when given."""
    rng = np.random.default_rng(seed)
    pixels = (120 + 30 * rng.standard_normal((HEIGHT, WIDTH))).clip(0, 255).astype(np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        pixels[y0:y1, x0:x1] = 20
        if annotated:
            mask[y0:y1, x0:x1] = 255
    path = root / folder / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    if folder.startswith("test/") and folder != "test/good":
        mask_path = root / "ground_truth" / folder.split("/")[1] / f"{name}_mask.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(mask_path)


def make_dataset(root: Path) -> Path:
    """Build a small MVTec-layout data set: 10 normal, 4 test normal, two defect types, one empty mask."""
    for index in range(10):
        write_pair(root, "train/good", f"n{index:02d}", index, None)
    for index in range(4):
        write_pair(root, "test/good", f"g{index:02d}", 100 + index, None)
    for index in range(5):
        write_pair(root, "test/hole", f"h{index:02d}", 200 + index, (8 + index, 6, 18 + index, 16))
    for index in range(4):
        write_pair(root, "test/line", f"l{index:02d}", 300 + index, (4, 10 + index, 40, 13 + index))
    # A defect without annotation: anomalous for detection, excluded from pixel metrics.
    write_pair(root, "test/hole", "h99", 299, (20, 20, 28, 28), annotated=False)
    return root


def file_listing(*roots: Path) -> dict[str, int]:
    """Map every file under the roots to its modification time in nanoseconds."""
    listing = {}
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                listing[str(path)] = path.stat().st_mtime_ns
    return listing


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny AE-XAD model trained for one epoch, with training energy measured."""
    base = tmp_path_factory.mktemp("evaluate")
    data = make_dataset(base / "data")
    result = fit(FitConfig(data=data, class_name="tiny", store=base / "store", **FAST))
    return data, result.model_dir


@pytest.fixture
def model_copy(trained, tmp_path):
    """A private copy of the trained model, so each test may change its model.json."""
    data, model_dir = trained
    copy = tmp_path / "store" / "tiny"
    copy.mkdir(parents=True)
    for name in ("model.pt", "model.json"):
        (copy / name).write_bytes((model_dir / name).read_bytes())
    return data, copy


# ---------------------------------------------------------------------------
# Test set selection


def test_select_leaves_out_training_images(trained):
    data, model_dir = trained
    metadata = read_metadata(model_dir)
    test, left_out = select_test_samples(discover(data), metadata)
    paths = {sample.relative_path for sample in test}
    assert not paths & set(metadata["moved_to_train"])
    assert not paths & set(metadata["calibration_images"])
    assert left_out["trained_on"] == len(metadata["moved_to_train"]) == 4
    assert all(sample.split == "test" for sample in test)


def test_select_leaves_out_calibration_images(trained):
    data, model_dir = trained
    samples = discover(data)
    metadata = {"moved_to_train": [], "calibration_images": ["test/good/g00.png"]}
    test, left_out = select_test_samples(samples, metadata)
    assert "test/good/g00.png" not in {sample.relative_path for sample in test}
    assert left_out == {"trained_on": 0, "calibration": 1}


def test_choose_examples_one_per_type(trained):
    data, _ = trained
    test = [sample for sample in discover(data) if sample.split == "test"]
    chosen = choose_examples(test, 10, seed=0)
    assert [path.split("/")[1] for path in chosen] == ["hole", "line", "good"]
    assert choose_examples(test, 10, seed=0) == chosen
    assert len(choose_examples(test, 2, seed=0)) == 2


# ---------------------------------------------------------------------------
# Aggregation


def _result(path: str, defect: str, status: str, auc: float | None = None) -> ImageResult:
    pixel = {}
    if status == "scored":
        pixel = {key: {"auc": auc, "f1": [auc] * len(MULTIPLIERS), "iou": [auc / 2] * len(MULTIPLIERS)}
                 for key in ("heatmap", "error")}
    return ImageResult(path, defect, 0 if defect == "good" else 1, 0.0, False, 1, status, pixel)


def test_summary_excludes_empty_masks():
    images = [
        _result("a", "hole", "scored", 0.8),
        _result("b", "hole", "scored", 0.6),
        _result("c", "hole", "empty_mask"),
        _result("d", "line", "empty_mask"),
        _result("e", "good", "normal"),
    ]
    summary = summarize_pixels(images, "heatmap")
    assert summary["class"]["images"] == 2
    assert summary["class"]["auc"] == pytest.approx(0.7)
    assert summary["by_defect"]["hole"]["images"] == 2
    assert summary["by_defect"]["line"] == {"images": 0, "auc": None, "f1": None, "iou": None}
    assert [entry["a"] for entry in summary["sweep"]] == list(MULTIPLIERS)
    assert summary["sweep"][0]["iou"] == pytest.approx(0.35)


def test_json_ready_encodes_infinity():
    assert json_ready({"t": float("inf"), "n": float("nan"), "x": [1.5, Path("a")]}) == {
        "t": "inf", "n": None, "x": [1.5, "a"]
    }


# ---------------------------------------------------------------------------
# evaluate_model


def test_evaluate_writes_report_and_metadata(model_copy, tmp_path):
    data, model_dir = model_copy
    report_dir = tmp_path / "report"
    result = evaluate_model(EvaluateConfig(model_dir=model_dir, data=data, report_dir=report_dir,
                                           measure_energy=False, progress=False))

    for name in ("report.json", "report.md", "figures/examples.png", "figures/threshold_sweep.png"):
        assert (report_dir / name).is_file(), name
    markdown = (report_dir / "report.md").read_text(encoding="utf-8")
    for heading in ("## Explanation quality: AE-XAD ", "| hole |", "| line |", "## Threshold sweep",
                    "## Detection", "## Timings", "## Energy", "## Settings", "| epochs | 1 |"):
        assert heading in markdown, heading

    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    # 4 normal, 6 - 2 moved hole images (one unannotated), 4 - 2 moved line images.
    assert report["data"]["test_images"] == 4 + 4 + 2
    assert report["data"]["empty_masks"] == 1
    assert report["pixel"]["heatmap"]["class"]["images"] == 5
    assert len(report["images"]) == report["data"]["test_images"]

    metadata = read_metadata(model_dir)
    assert metadata["metrics"]["pixel_auc"] == pytest.approx(result.report["pixel"]["heatmap"]["class"]["auc"])
    assert metadata["metrics"]["empty_masks"] == 1
    assert "evaluation" in metadata["energy"]
    assert "training" in metadata["energy"]


def test_evaluate_energy_and_tradeoff(model_copy, tmp_path):
    data, model_dir = model_copy
    result = evaluate_model(EvaluateConfig(model_dir=model_dir, data=data, report_dir=tmp_path / "r", progress=False))
    energy = result.report["energy"]
    assert energy["total_grams"] is not None
    assert set(result.report["tradeoff"]) == {"auc", "f1", "iou"}
    markdown = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "Trade-off score" in markdown
    if energy["estimated"]:
        assert "estimated" in markdown


def test_evaluate_without_energy_skips_tradeoff(model_copy, tmp_path):
    data, model_dir = model_copy
    result = evaluate_model(EvaluateConfig(model_dir=model_dir, data=data, report_dir=tmp_path / "r",
                                           measure_energy=False, progress=False))
    assert result.report["tradeoff"] == {"auc": None, "f1": None, "iou": None}
    assert "not computed" in (tmp_path / "r" / "report.md").read_text(encoding="utf-8")


def test_evaluate_scores_match_loaded_model(model_copy, tmp_path):
    data, model_dir = model_copy
    result = evaluate_model(EvaluateConfig(model_dir=model_dir, data=data, report_dir=tmp_path / "r",
                                           measure_energy=False, progress=False))
    module = load_module(model_dir)
    image = result.images[0]
    pixels = load_image(data / image.relative_path, int(module.channels))
    output = module(torch.from_numpy(pixels.transpose(2, 0, 1).copy()), 1.0)
    assert image.score == pytest.approx(float(output["score"]), rel=1e-5)
    assert image.filter_size == int(output["filter_size"])


def test_evaluate_maps_at_image_size(model_copy, tmp_path):
    data, model_dir = model_copy
    result = evaluate_model(EvaluateConfig(model_dir=model_dir, data=data, report_dir=tmp_path / "r",
                                           measure_energy=False, progress=False))
    assert result.examples
    for example in result.examples:
        assert example.heatmap.shape == (HEIGHT, WIDTH)
        assert example.error.shape == (HEIGHT, WIDTH)
        assert example.reconstruction.shape[:2] == (HEIGHT, WIDTH)


def test_evaluate_writes_only_report_and_model_json(model_copy, tmp_path, monkeypatch):
    data, model_dir = model_copy
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = file_listing(data, model_dir.parent, work)
    evaluate_model(EvaluateConfig(model_dir=model_dir, data=data, measure_energy=True, progress=False))
    after = file_listing(data, model_dir.parent, work)

    report_dir = work / "reports" / "tiny"
    added = {path for path in after if path not in before}
    changed = {path for path in before if path in after and after[path] != before[path]}
    assert set(before) <= set(after)
    assert all(Path(path).is_relative_to(report_dir) for path in added), added
    assert changed == {str(model_dir / "model.json")}


def test_evaluate_missing_model_is_clear_error(trained, tmp_path):
    data, _ = trained
    with pytest.raises(FileNotFoundError, match="model.pt not found"):
        evaluate_model(EvaluateConfig(model_dir=tmp_path / "none", data=data, report_dir=tmp_path / "r"))


# ---------------------------------------------------------------------------
# Command line and ablation


def test_cli_evaluate_prints_summary(model_copy, tmp_path, capsys):
    data, model_dir = model_copy
    status = main(["evaluate", "--model", str(model_dir), "--data", str(data), "--report", str(tmp_path / "r"),
                   "--no-energy", "--no-progress", "--examples", "2"])
    output = capsys.readouterr().out
    assert status == 0
    assert "pixel AUC" in output
    assert (tmp_path / "r" / "report.md").is_file()


def test_cli_evaluate_missing_model(trained, tmp_path, capsys):
    data, _ = trained
    status = main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(data), "--report", str(tmp_path)])
    assert status == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_ablation_compares_four_methods(trained, tmp_path, monkeypatch):
    data, _ = trained
    monkeypatch.chdir(tmp_path)
    before = file_listing(data, tmp_path)
    config = FitConfig(data=data, class_name="tiny", store=Path("unused"), measure_energy=False, **FAST)
    result = run_ablation(config, examples=3)
    after = file_listing(data, tmp_path)

    report_dir = tmp_path / "reports" / "tiny-ablation"
    assert result.report_dir == Path("reports") / "tiny-ablation"
    assert all(Path(path).is_relative_to(report_dir) for path in set(after) - set(before))
    assert (report_dir / "models" / "tiny-ae" / "model.pt").is_file()
    assert (report_dir / "models" / "tiny-aexad" / "model.pt").is_file()

    report = result.report
    assert list(report["methods"]) == list(ABLATION_METHODS)
    assert report["images"] == 5
    wins = report["wins"]["auc"]["AE-XAD"]["AE"]
    assert wins["wins"] + wins["ties"] + wins["losses"] == 5
    markdown = (report_dir / "report.md").read_text(encoding="utf-8")
    for text in ("## Class means", "## Probability of winning", "AE ∪ F", "AE-XAD \\ F", "## Threshold sweep"):
        assert text in markdown, text
    assert (report_dir / "figures" / "ablation_examples.png").is_file()

    (report_dir / "report.md").unlink()
    rerender_from_json(report_dir)
    assert (report_dir / "report.md").read_text(encoding="utf-8") == markdown
    assert (report_dir / "ae" / "report.md").is_file()
    assert read_metadata(report_dir / "models" / "tiny-ae")["loss"] == "mse"


@pytest.mark.slow
def test_ablation_anomalies_only(trained, tmp_path):
    data, _ = trained
    config = FitConfig(data=data, class_name="tiny", scenario="anomalies-only", measure_energy=False, **FAST)
    result = run_ablation(config, report_dir=tmp_path / "r", examples=0)
    assert result.report["notes"]
    assert read_metadata(tmp_path / "r" / "models" / "tiny-ae")["scenario"] == "standard"
    assert read_metadata(tmp_path / "r" / "models" / "tiny-aexad")["scenario"] == "anomalies-only"
    assert (tmp_path / "r" / "report.md").is_file()

    # Without normal images there is no decision threshold to judge.
    assert result.aexad.report["detection"]["decision"] is None
    assert "no decision threshold" in (tmp_path / "r" / "aexad" / "report.md").read_text(encoding="utf-8")
    assert read_metadata(tmp_path / "r" / "models" / "tiny-aexad")["metrics"]["accuracy"] is None
