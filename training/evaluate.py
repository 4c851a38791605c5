"""Evaluation of an exported model on its test images, and the AE versus AE-XAD ablation.

The evaluation runs the TorchScript file from the model store, the same
module the service loads, so the reported numbers describe what is deployed.
It writes ``report.json``, ``report.md`` and PNG figures into a report folder
and the headline metrics into the model's ``model.json``, and nothing else.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from training.data import NORMAL_DEFECT_TYPE, Sample, discover, load_image, load_mask
from training.energy import DEFAULT_COUNTRY, EnergyReport, track_energy
from training.export import load_module, read_metadata, write_metadata
from training.metrics import (
    DEFAULT_MULTIPLIER,
    MULTIPLIERS,
    decision_metrics,
    has_pixel_ground_truth,
    image_auc,
    mean_or_none,
    pixel_auc,
    threshold_sweep,
    tradeoff_score,
    win_rates,
)

logger = logging.getLogger(__name__)

# The two maps every model returns. "heatmap" is the Gaussian-filtered
# normalised error, "error" the unfiltered one.
MAP_KEYS = ("heatmap", "error")
# Names of those maps in the AE-XAD ablation, by training loss. A model
# trained with MSE has no target function, so its "error" is the plain
# autoencoder's squared error clipped to [0, 1].
METHOD_NAMES = {
    "aexad": {"heatmap": "AE-XAD", "error": "AE-XAD \\ F"},
    "mse": {"heatmap": "AE ∪ F", "error": "AE"},
}
ABLATION_METHODS = ("AE", "AE ∪ F", "AE-XAD \\ F", "AE-XAD")
PIXEL_METRICS = ("auc", "f1", "iou")


@dataclass
class ImageResult:
    """Scores of one test image.

    Attributes:
        relative_path: Image path relative to the data root.
        defect_type: Defect folder name, ``good`` for a normal image.
        label: 1 for an anomalous image, 0 for a normal one.
        score: Anomaly score returned by the model.
        is_anomalous: The model's decision with its stored threshold.
        filter_size: The automatic Gaussian filter size ``k̂``.
        pixel_status: ``scored``, ``normal`` (no defect pixels expected),
            ``empty_mask`` (anomalous but unannotated) or ``full_mask``
            (every pixel marked, so no normal pixels to compare with).
        pixel: For each map key, ``auc`` and the ``f1`` and ``iou`` lists
            over ``MULTIPLIERS``; empty unless ``pixel_status`` is ``scored``.
    """

    relative_path: str
    defect_type: str
    label: int
    score: float
    is_anomalous: bool
    filter_size: int
    pixel_status: str
    pixel: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {
            "path": self.relative_path,
            "defect_type": self.defect_type,
            "label": self.label,
            "score": self.score,
            "is_anomalous": self.is_anomalous,
            "filter_size": self.filter_size,
            "pixel_status": self.pixel_status,
            **self.pixel,
        }


@dataclass
class Example:
    """Maps of one test image kept for the figures, all at the image's size."""

    relative_path: str
    defect_type: str
    image: np.ndarray  # (H, W, C) uint8
    reconstruction: np.ndarray  # (H, W, C) float in [0, 1]
    error: np.ndarray  # (H, W) normalised error
    heatmap: np.ndarray  # (H, W)
    mask: np.ndarray  # (H, W) bool, the model's mask at a = 1
    ground_truth: np.ndarray | None  # (H, W) bool, None for a normal image


@dataclass
class EvaluationResult:
    """Output of ``evaluate_model``: the report, per-image results and the examples drawn in the figures."""

    report: dict[str, Any]
    images: list[ImageResult]
    examples: list[Example]
    report_dir: Path


# ---------------------------------------------------------------------------
# Test set


def select_test_samples(samples: list[Sample], metadata: dict[str, Any]) -> tuple[list[Sample], dict[str, int]]:
    """Keep the test images that the model neither trained on nor calibrated with.

    Args:
        samples: Output of ``discover`` on the data set.
        metadata: The model's ``model.json``.

    Returns:
        The test samples, and counts of the images left out for each reason.
    """
    trained = set(metadata.get("moved_to_train") or [])
    calibration = set(metadata.get("calibration_images") or [])
    known = {sample.relative_path for sample in samples}
    if trained and not trained & known:
        logger.warning(
            "none of the %d images the model trained on is in this data set; "
            "check that --data is the folder the model was trained on (%s)",
            len(trained), metadata.get("data_root", "not recorded"),
        )
    test, left_out_trained, left_out_calibration = [], 0, 0
    for sample in samples:
        if sample.split != "test":
            continue
        if sample.relative_path in trained:
            left_out_trained += 1
        elif sample.relative_path in calibration:
            left_out_calibration += 1
        else:
            test.append(sample)
    return test, {"trained_on": left_out_trained, "calibration": left_out_calibration}


def choose_examples(samples: list[Sample], count: int, seed: int) -> list[str]:
    """Choose up to ``count`` test images for the figures: one per defect type, then a normal one.

    The choice depends only on the samples and the seed, so two models
    evaluated on the same test set show the same images.
    """
    rng = np.random.default_rng(seed)
    by_type: dict[str, list[str]] = {}
    for sample in samples:
        by_type.setdefault(sample.defect_type, []).append(sample.relative_path)
    order = sorted(name for name in by_type if name != NORMAL_DEFECT_TYPE)
    if NORMAL_DEFECT_TYPE in by_type:
        order.append(NORMAL_DEFECT_TYPE)
    chosen = [by_type[name][int(rng.integers(len(by_type[name])))] for name in order]
    return chosen[:count]


# ---------------------------------------------------------------------------
# Scoring


def _image_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 array to the (C, H, W) uint8 tensor the model takes."""
    # A copy, because arrays decoded by PIL are read-only and torch warns on those.
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def score_image(sample: Sample, pixels: np.ndarray, output: dict[str, torch.Tensor]) -> ImageResult:
    """Compute the metrics of one image from the model's output.

    Args:
        sample: The test image.
        pixels: ``(H, W, C)`` uint8, the image as passed to the model.
        output: The model's output for that image.
    """
    height, width = pixels.shape[:2]
    result = ImageResult(
        relative_path=sample.relative_path,
        defect_type=sample.defect_type,
        label=sample.label,
        score=float(output["score"]),
        is_anomalous=bool(output["is_anomalous"]),
        filter_size=int(output["filter_size"]),
        pixel_status="normal",
    )
    if sample.label != 1 or sample.mask_path is None:
        return result

    truth = load_mask(sample.mask_path, (width, height))
    if not truth.any():
        result.pixel_status = "empty_mask"
        return result
    if not has_pixel_ground_truth(truth):
        result.pixel_status = "full_mask"
        return result

    result.pixel_status = "scored"
    for key in MAP_KEYS:
        anomaly_map = output[key].numpy()
        sweep = threshold_sweep(anomaly_map, truth, MULTIPLIERS)
        result.pixel[key] = {
            "auc": pixel_auc(anomaly_map, truth),
            "f1": [sweep[a][0] for a in MULTIPLIERS],
            "iou": [sweep[a][1] for a in MULTIPLIERS],
        }
    return result


def _example(sample: Sample, pixels: np.ndarray, output: dict[str, torch.Tensor]) -> Example:
    height, width = pixels.shape[:2]
    truth = None
    if sample.label == 1 and sample.mask_path is not None:
        truth = load_mask(sample.mask_path, (width, height))
    return Example(
        relative_path=sample.relative_path,
        defect_type=sample.defect_type,
        image=pixels,
        reconstruction=output["reconstruction"].clamp(0, 1).permute(1, 2, 0).numpy(),
        error=output["error"].numpy(),
        heatmap=output["heatmap"].numpy(),
        mask=output["mask"].numpy(),
        ground_truth=truth,
    )


def score_test_set(
    module: torch.jit.ScriptModule,
    samples: list[Sample],
    *,
    example_paths: list[str],
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[list[ImageResult], list[Example], float]:
    """Run the model over the test images and score each one.

    Images go through ``explain_batch`` in groups of ``batch_size``, the
    service's batched path, at their own sizes.

    Returns:
        The per-image results, the examples kept for figures, and the seconds
        spent inside the model.
    """
    channels = int(module.channels)
    kept_paths = set(example_paths)
    results: list[ImageResult] = []
    examples: dict[str, Example] = {}
    model_seconds = 0.0
    with tqdm(total=len(samples), desc="evaluating", unit="img", disable=not progress) as bar:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            images = [load_image(sample.image_path, channels) for sample in batch]
            tick = time.perf_counter()
            outputs = module.explain_batch([_image_tensor(pixels) for pixels in images], [DEFAULT_MULTIPLIER] * len(batch))
            model_seconds += time.perf_counter() - tick
            for sample, pixels, output in zip(batch, images, outputs):
                output = {key: value.cpu() for key, value in output.items()}
                results.append(score_image(sample, pixels, output))
                if sample.relative_path in kept_paths:
                    examples[sample.relative_path] = _example(sample, pixels, output)
            bar.update(len(batch))
    return results, [examples[path] for path in example_paths if path in examples], model_seconds


# ---------------------------------------------------------------------------
# Aggregation


def summarize_pixels(images: list[ImageResult], key: str) -> dict[str, Any]:
    """Average the pixel metrics of one map over the class and per defect type.

    F1 and IoU are those at the default multiplier ``a = 1``; ``sweep`` has
    the class means for every multiplier.
    """
    scored = [image for image in images if image.pixel_status == "scored"]
    default_index = MULTIPLIERS.index(DEFAULT_MULTIPLIER)

    def means(group: list[ImageResult]) -> dict[str, Any]:
        return {
            "images": len(group),
            "auc": mean_or_none(image.pixel[key]["auc"] for image in group),
            "f1": mean_or_none(image.pixel[key]["f1"][default_index] for image in group),
            "iou": mean_or_none(image.pixel[key]["iou"][default_index] for image in group),
        }

    defect_types = sorted({image.defect_type for image in images if image.label == 1})
    return {
        "class": means(scored),
        "by_defect": {name: means([image for image in scored if image.defect_type == name]) for name in defect_types},
        "sweep": [
            {
                "a": multiplier,
                "f1": mean_or_none(image.pixel[key]["f1"][index] for image in scored),
                "iou": mean_or_none(image.pixel[key]["iou"][index] for image in scored),
            }
            for index, multiplier in enumerate(MULTIPLIERS)
        ],
    }


def summarize_detection(images: list[ImageResult], threshold: float | None) -> dict[str, Any]:
    """Compute the image-level ROC AUC of the score and the metrics of the stored decision."""
    labels = [image.label for image in images]
    detection: dict[str, Any] = {
        "images": len(images),
        "normal": labels.count(0),
        "anomalous": labels.count(1),
        "auc": image_auc([image.score for image in images], labels),
        "threshold": threshold,
    }
    if threshold is None:
        detection["decision"] = None
        detection["note"] = "the model has no decision threshold, so accuracy, precision and recall are not computed"
    else:
        detection["decision"] = decision_metrics([image.is_anomalous for image in images], labels)
    return detection


def tradeoff_scores(grams: float | None, pixel_summary: dict[str, Any]) -> dict[str, float | None]:
    """Compute ``T(m)`` for each class-level pixel metric; None where a value is missing.

    ``T(0)`` is infinite and stays ``math.inf`` here; JSON output writes it as
    the string ``"inf"``.
    """
    scores: dict[str, float | None] = {}
    for metric in PIXEL_METRICS:
        value = pixel_summary["class"][metric]
        scores[metric] = None if grams is None or value is None else tradeoff_score(grams, value)
    return scores


def _energy_grams(report: dict[str, Any] | None) -> float | None:
    if not report or str(report.get("note", "")).startswith("not measured"):
        return None
    return float(report.get("emissions_grams", 0.0))


def energy_summary(training: dict[str, Any] | None, evaluation: EnergyReport) -> dict[str, Any]:
    """Combine the training energy from the metadata with the evaluation's."""
    evaluation_dict = evaluation.to_dict()
    training_grams = _energy_grams(training)
    evaluation_grams = _energy_grams(evaluation_dict)
    measured = training_grams is not None and evaluation_grams is not None
    return {
        "training": training,
        "evaluation": evaluation_dict,
        "total_grams": training_grams + evaluation_grams if measured else None,
        "total_kwh": (float(training.get("kwh", 0.0)) + evaluation.kwh) if measured else None,
        "estimated": bool((training or {}).get("estimated", True) or evaluation.estimated),
    }


# ---------------------------------------------------------------------------
# JSON


def json_ready(value: Any) -> Any:
    """Replace infinities by ``"inf"``/``"-inf"`` and NaN by None, so strict JSON writers accept the value."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def headline_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Return the metrics that go into ``model.json``."""
    pixel = report["pixel"]["heatmap"]["class"]
    detection = report["detection"]
    decision = detection["decision"] or {}
    return json_ready({
        "evaluated_at": report["evaluated_at"],
        "data_root": report["data"]["root"],
        "test_images": detection["images"],
        "anomalous_images_scored": pixel["images"],
        "empty_masks": report["data"]["empty_masks"],
        "pixel_auc": pixel["auc"],
        "f1": pixel["f1"],
        "iou": pixel["iou"],
        "mask_multiplier": DEFAULT_MULTIPLIER,
        "unfiltered": report["pixel"]["error"]["class"],
        "image_auc": detection["auc"],
        "accuracy": decision.get("accuracy"),
        "precision": decision.get("precision"),
        "recall": decision.get("recall"),
        "tradeoff_grams": report["tradeoff"],
    })


# ---------------------------------------------------------------------------
# Evaluation


@dataclass
class EvaluateConfig:
    """Settings of one evaluation; the CLI maps its options onto these fields."""

    model_dir: Path
    data: Path
    manifest: Path | None = None
    report_dir: Path | None = None  # default reports/<class_name>
    device: str = "auto"
    batch_size: int = 8  # images per explain_batch call
    examples: int = 6  # test images shown in the example figure
    country: str = DEFAULT_COUNTRY  # electricity grid for CodeCarbon, ISO 3166-1 alpha-3
    measure_energy: bool = True
    progress: bool = True
    update_metadata: bool = True  # write the headline metrics into model.json


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_summary(model_dir: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Collect the settings a reader needs to reproduce the model."""
    training = metadata.get("training", {})
    return {
        "dir": str(model_dir),
        "class_name": metadata.get("class_name"),
        "loss": metadata.get("loss", "aexad"),
        "target_function": metadata.get("target_function"),
        "backbone": (metadata.get("backbone") or {}).get("name"),
        "backbone_weights": (metadata.get("backbone") or {}).get("weights"),
        "scenario": metadata.get("scenario"),
        "anomalies_per_type": metadata.get("anomalies_per_type"),
        "seed": metadata.get("seed"),
        "image_size": (metadata.get("input") or {}).get("image_size"),
        "channels": (metadata.get("input") or {}).get("channels"),
        "epochs": training.get("epochs"),
        "batch_size": training.get("batch_size"),
        "learning_rate": training.get("learning_rate"),
        "weight_decay": training.get("weight_decay"),
        "training_seconds": training.get("seconds"),
        "training_device": training.get("device"),
        "final_loss": training.get("final_loss"),
        "counts": metadata.get("counts"),
        "threshold": metadata.get("threshold"),
        "created_at": metadata.get("created_at"),
    }


def evaluate_model(config: EvaluateConfig) -> EvaluationResult:
    """Evaluate an exported model on the test images it did not train on.

    Writes ``report.json``, ``report.md`` and ``figures/*.png`` into the report
    folder, and, unless ``config.update_metadata`` is false, the headline
    metrics and the evaluation energy into the model's ``model.json``.

    Raises:
        FileNotFoundError: ``model.pt`` or ``model.json`` is missing.
        DataError: Missing or unreadable data.
        ValueError: The data set has no test images left to evaluate.
    """
    from training import report as report_writer

    model_dir = Path(config.model_dir)
    for name in ("model.pt", "model.json"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name} not found; pass a model folder written by 'fit'")
    metadata = read_metadata(model_dir)
    class_name = metadata.get("class_name") or model_dir.name
    report_dir = Path(config.report_dir) if config.report_dir is not None else Path("reports") / class_name
    loss = metadata.get("loss", "aexad")
    started = time.perf_counter()

    samples = discover(Path(config.data), config.manifest)
    test, left_out = select_test_samples(samples, metadata)
    if not test:
        raise ValueError(f"no test images to evaluate in {config.data} after leaving out the training images")
    example_paths = choose_examples(test, config.examples, int(metadata.get("seed") or 0))
    logger.info(
        "evaluating %s on %d test images (%d left out as trained on, %d as calibration)",
        model_dir, len(test), left_out["trained_on"], left_out["calibration"],
    )

    device = _device(config.device)
    module = load_module(model_dir, device)
    module.eval()
    threshold = (metadata.get("threshold") or {}).get("score")

    with track_energy(country=config.country, enabled=config.measure_energy) as energy:
        images, examples, model_seconds = score_test_set(
            module, test, example_paths=example_paths, batch_size=config.batch_size, progress=config.progress
        )
    evaluation_seconds = time.perf_counter() - started

    pixel = {key: summarize_pixels(images, key) for key in MAP_KEYS}
    energy_info = energy_summary((metadata.get("energy") or {}).get("training"), energy)
    report: dict[str, Any] = {
        "kind": "evaluation",
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_summary(model_dir, metadata),
        "methods": METHOD_NAMES.get(loss, METHOD_NAMES["aexad"]),
        "data": {
            "root": str(Path(config.data).resolve()),
            "manifest": str(config.manifest) if config.manifest else None,
            "test_images": len(test),
            "left_out": left_out,
            "empty_masks": sum(image.pixel_status == "empty_mask" for image in images),
            "full_masks": sum(image.pixel_status == "full_mask" for image in images),
        },
        "multipliers": list(MULTIPLIERS),
        "pixel": pixel,
        "detection": summarize_detection(images, threshold),
        "timing": {
            "seconds": evaluation_seconds,
            "model_seconds": model_seconds,
            "model_ms_per_image": 1000.0 * model_seconds / len(test),
            "device": str(device),
            "batch_size": config.batch_size,
        },
        "energy": energy_info,
        "tradeoff": tradeoff_scores(energy_info["total_grams"], pixel["heatmap"]),
        "examples": [example.relative_path for example in examples],
        "images": [image.to_dict() for image in images],
    }

    report_writer.write_evaluation_report(report, examples, report_dir)
    if config.update_metadata:
        _store_metrics(model_dir, report, energy)
    logger.info("report written to %s", report_dir)
    return EvaluationResult(report=report, images=images, examples=examples, report_dir=report_dir)


def _store_metrics(model_dir: Path, report: dict[str, Any], energy: EnergyReport) -> None:
    # Read again just before writing, so fields changed since the start survive.
    metadata = read_metadata(model_dir)
    metadata["metrics"] = headline_metrics(report)
    energy_record = metadata.get("energy") or {}
    energy_record["evaluation"] = json_ready(energy.to_dict())
    metadata["energy"] = energy_record
    write_metadata(model_dir, metadata)


# ---------------------------------------------------------------------------
# Ablation


def _method_values(
    results: dict[str, EvaluationResult], method: str, metric: str, paths: list[str]
) -> list[float]:
    """Return one method's per-image values of a metric at ``a = 1``, in the order of ``paths``."""
    for loss, names in METHOD_NAMES.items():
        for key, name in names.items():
            if name != method:
                continue
            by_path = {image.relative_path: image for image in results[loss].images}
            values = []
            for path in paths:
                entry = by_path[path].pixel[key]
                value = entry[metric]
                values.append(value if metric == "auc" else value[MULTIPLIERS.index(DEFAULT_MULTIPLIER)])
            return values
    raise KeyError(f"unknown method {method!r}")


def compare_methods(ae: EvaluationResult, aexad: EvaluationResult) -> dict[str, Any]:
    """Build the ablation tables of AE, AE ∪ F, AE-XAD \\ F and AE-XAD from two evaluations.

    Both evaluations must cover the same test images; only images with pixel
    ground truth in both enter the comparison.

    Raises:
        ValueError: The two evaluations scored different test images.
    """
    ae_paths = {image.relative_path for image in ae.images}
    aexad_paths = {image.relative_path for image in aexad.images}
    if ae_paths != aexad_paths:
        raise ValueError(
            f"the AE and AE-XAD evaluations cover different test images ({len(ae_paths ^ aexad_paths)} differ); "
            "train both with the same data, seed and anomalies per type"
        )
    results = {"mse": ae, "aexad": aexad}
    scored = sorted(image.relative_path for image in aexad.images if image.pixel_status == "scored")
    defect_of = {image.relative_path: image.defect_type for image in aexad.images}
    defect_types = sorted({defect_of[path] for path in scored})

    table: dict[str, Any] = {}
    for method in ABLATION_METHODS:
        values = {metric: _method_values(results, method, metric, scored) for metric in PIXEL_METRICS}
        row: dict[str, Any] = {"class": {metric: mean_or_none(values[metric]) for metric in PIXEL_METRICS}}
        row["class"]["images"] = len(scored)
        row["by_defect"] = {}
        for name in defect_types:
            picks = [index for index, path in enumerate(scored) if defect_of[path] == name]
            row["by_defect"][name] = {
                "images": len(picks),
                **{metric: mean_or_none(values[metric][index] for index in picks) for metric in PIXEL_METRICS},
            }
        table[method] = row

    sweeps = {}
    for loss, names in METHOD_NAMES.items():
        for key, name in names.items():
            sweeps[name] = results[loss].report["pixel"][key]["sweep"]

    wins = {}
    for metric in PIXEL_METRICS:
        matrix = {}
        for first in ABLATION_METHODS:
            first_values = _method_values(results, first, metric, scored)
            matrix[first] = {
                second: win_rates(first_values, _method_values(results, second, metric, scored))
                for second in ABLATION_METHODS
                if second != first
            }
        wins[metric] = matrix
    return {"images": len(scored), "methods": table, "sweep": sweeps, "wins": wins}


@dataclass
class AblationResult:
    """Output of ``run_ablation``: the comparison report and both models' evaluations."""

    report: dict[str, Any]
    report_dir: Path
    ae: EvaluationResult
    aexad: EvaluationResult


def run_ablation(
    fit_config: Any,
    *,
    report_dir: Path | None = None,
    store: Path | None = None,
    evaluate_batch_size: int = 8,
    examples: int = 6,
) -> AblationResult:
    """Train AE (MSE loss) and AE-XAD with the same settings and split, evaluate both and compare them.

    Args:
        fit_config: A ``FitConfig`` with the shared settings; its ``loss``,
            ``class_name`` suffix and ``store`` are set here.
        report_dir: Report folder; default ``reports/<class>-ablation``.
            The sub-folders ``ae/`` and ``aexad/`` hold each model's own
            evaluation report.
        store: Model store for the two models; default ``<report_dir>/models``,
            so the user's model store is left alone.
        evaluate_batch_size: Images per model call during evaluation.
        examples: Test images shown in the example figures.

    Raises:
        ValueError: An invalid setting, or the two models' test sets differ.
        DataError: Missing or unreadable data.
    """
    from training import report as report_writer
    from training.train import fit

    base_name = fit_config.class_name
    report_dir = Path(report_dir) if report_dir is not None else Path("reports") / f"{base_name}-ablation"
    store = Path(store) if store is not None else report_dir / "models"
    notes = []

    # The plain autoencoder learns to reconstruct normal images, so it has no
    # training data in the anomalies-only scenario. It is then trained in the
    # standard scenario: the moved anomalies, and so the test set, are the same
    # in both scenarios for one seed, and the baseline gets more data, not less.
    ae_scenario = fit_config.scenario
    if fit_config.scenario == "anomalies-only":
        ae_scenario = "standard"
        notes.append(
            "The AE baseline trains on normal images only, which the anomalies-only scenario does not have, "
            "so it was trained in the standard scenario; both models are evaluated on the same test images."
        )
        logger.warning("anomalies-only scenario: training the AE baseline on the normal images instead")

    configs = {
        "mse": replace(fit_config, loss="mse", scenario=ae_scenario, class_name=f"{base_name}-ae", store=store),
        "aexad": replace(fit_config, loss="aexad", class_name=f"{base_name}-aexad", store=store),
    }
    evaluations: dict[str, EvaluationResult] = {}
    for loss, config in configs.items():
        logger.info("ablation: training %s (%s loss, %s scenario)", config.class_name, loss, config.scenario)
        trained = fit(config)
        evaluations[loss] = evaluate_model(
            EvaluateConfig(
                model_dir=trained.model_dir,
                data=config.data,
                manifest=config.manifest,
                report_dir=report_dir / ("ae" if loss == "mse" else "aexad"),
                device=config.device,
                batch_size=evaluate_batch_size,
                examples=examples,
                country=config.country,
                measure_energy=config.measure_energy,
                progress=config.progress,
            )
        )

    comparison = compare_methods(evaluations["mse"], evaluations["aexad"])
    report = {
        "kind": "ablation",
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "class_name": base_name,
        "scenario": fit_config.scenario,
        "store": str(store),
        "notes": notes,
        "models": {
            name: {
                "model": evaluations[loss].report["model"],
                "energy": evaluations[loss].report["energy"],
                "timing": evaluations[loss].report["timing"],
                "detection": evaluations[loss].report["detection"],
                "report": str(evaluations[loss].report_dir),
            }
            for name, loss in (("AE", "mse"), ("AE-XAD", "aexad"))
        },
        "multipliers": list(MULTIPLIERS),
        **comparison,
    }
    report_writer.write_ablation_report(report, evaluations["mse"].examples, evaluations["aexad"].examples, report_dir)
    logger.info("ablation report written to %s", report_dir)
    return AblationResult(report=report, report_dir=report_dir, ae=evaluations["mse"], aexad=evaluations["aexad"])
