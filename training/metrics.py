"""Explanation and detection metrics of AE-XAD, per image and aggregated.

Pixel metrics compare one image's anomaly map with its ground-truth mask. They
are defined only for anomalous images whose mask marks at least one pixel and
leaves at least one unmarked, so callers skip the other images and count them
instead of scoring them as zeros.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from training.explain import binary_mask

# Threshold multipliers a of the binary mask rule h > mean(h) + a * std(h).
# The AE-XAD paper sweeps a from 1 to 3.5 in steps of 0.5; a = 1 is the
# default of the exported model and the one behind the headline F1 and IoU.
MULTIPLIERS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5)
DEFAULT_MULTIPLIER = 1.0


def has_pixel_ground_truth(mask: np.ndarray) -> bool:
    """Return whether a ground-truth mask supports pixel metrics.

    A mask needs defect and normal pixels: with one class only, the ROC AUC is
    undefined, and an empty mask carries no annotation at all.
    """
    marked = int(np.count_nonzero(mask))
    return 0 < marked < mask.size


def pixel_auc(anomaly_map: np.ndarray, mask: np.ndarray) -> float:
    """Compute the ROC AUC of an anomaly map's pixel values against a mask.

    Args:
        anomaly_map: ``(H, W)`` float map, higher meaning more anomalous.
        mask: ``(H, W)`` bool ground truth.

    Returns:
        The area under the ROC curve; 0.5 for a constant map.

    Raises:
        ValueError: The shapes differ, or the mask has only one class.
    """
    if anomaly_map.shape != mask.shape:
        raise ValueError(f"anomaly map shape {anomaly_map.shape} differs from mask shape {mask.shape}")
    if not has_pixel_ground_truth(mask):
        raise ValueError("pixel ROC AUC needs a mask with both defect and normal pixels")
    return float(roc_auc_score(mask.ravel().astype(np.uint8), anomaly_map.ravel()))


def f1_iou(predicted: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Compute the F1 score (Dice) and the IoU of a binary prediction against a mask.

    Args:
        predicted: ``(H, W)`` bool predicted mask.
        mask: ``(H, W)`` bool ground truth with at least one defect pixel.

    Returns:
        ``(f1, iou)``, both 0 when nothing is predicted.

    Raises:
        ValueError: The shapes differ, or the mask is empty (both scores
            would be undefined or trivially 1 for an empty prediction).
    """
    if predicted.shape != mask.shape:
        raise ValueError(f"predicted mask shape {predicted.shape} differs from mask shape {mask.shape}")
    truth = mask.astype(bool)
    if not truth.any():
        raise ValueError("F1 and IoU need a mask with at least one defect pixel")
    guess = predicted.astype(bool)
    true_positive = int(np.count_nonzero(guess & truth))
    false_positive = int(np.count_nonzero(guess & ~truth))
    false_negative = int(np.count_nonzero(~guess & truth))
    f1 = 2 * true_positive / (2 * true_positive + false_positive + false_negative)
    iou = true_positive / (true_positive + false_positive + false_negative)
    return f1, iou


def threshold_sweep(
    anomaly_map: np.ndarray, mask: np.ndarray, multipliers: Sequence[float] = MULTIPLIERS
) -> dict[float, tuple[float, float]]:
    """Compute F1 and IoU of the binary mask ``map > mean + a * std`` for each multiplier ``a``.

    The mask rule is the exported model's own ``binary_mask``, applied here to
    any map, so that unfiltered maps are thresholded the same way as heatmaps.

    Returns:
        ``{a: (f1, iou)}``.
    """
    values = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))
    results = {}
    for multiplier in multipliers:
        predicted = binary_mask(values, float(multiplier)).numpy()
        results[float(multiplier)] = f1_iou(predicted, mask)
    return results


def image_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Compute the image-level ROC AUC of anomaly scores, or None without both classes.

    Args:
        scores: One anomaly score per image.
        labels: 1 for an anomalous image, 0 for a normal one.
    """
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def decision_metrics(predictions: Sequence[bool], labels: Sequence[int]) -> dict[str, float | int | None]:
    """Compute accuracy, precision and recall of image-level decisions.

    Precision is None when no image was flagged and recall is None when there
    is no anomalous image, because both are 0/0 then.

    Returns:
        ``accuracy``, ``precision``, ``recall`` and the confusion counts
        ``true_positive``, ``false_positive``, ``true_negative``, ``false_negative``.
    """
    guess = np.asarray(predictions, dtype=bool)
    truth = np.asarray(labels, dtype=bool)
    true_positive = int(np.count_nonzero(guess & truth))
    false_positive = int(np.count_nonzero(guess & ~truth))
    true_negative = int(np.count_nonzero(~guess & ~truth))
    false_negative = int(np.count_nonzero(~guess & truth))
    flagged = true_positive + false_positive
    anomalous = true_positive + false_negative
    return {
        "accuracy": (true_positive + true_negative) / truth.size if truth.size else None,
        "precision": true_positive / flagged if flagged else None,
        "recall": true_positive / anomalous if anomalous else None,
        "true_positive": true_positive,
        "false_positive": false_positive,
        "true_negative": true_negative,
        "false_negative": false_negative,
    }


def tradeoff_score(energy: float, metric: float) -> float:
    """Compute the energy/quality trade-off ``T(m) = E / (m / (1 - m))``, lower is better.

    ``m / (1 - m)`` is the odds of the metric, so each step towards a perfect
    score divides the energy by more. At the ends the formula divides by zero
    and takes its limits instead: ``T(0) = inf`` (any energy spent for
    nothing) and ``T(1) = 0`` (the odds are infinite).

    Args:
        energy: Grams of CO₂eq (or kWh) spent, 0 or more.
        metric: A quality metric in ``[0, 1]``.

    Raises:
        ValueError: ``metric`` is outside ``[0, 1]`` or NaN, or ``energy`` is negative.
    """
    if not 0.0 <= metric <= 1.0:
        raise ValueError(f"the trade-off score needs a metric in [0, 1], got {metric}")
    if energy < 0:
        raise ValueError(f"the trade-off score needs a non-negative energy, got {energy}")
    if metric == 0.0:
        return math.inf
    if metric == 1.0:
        return 0.0
    return energy * (1.0 - metric) / metric


def win_rates(first: Sequence[float], second: Sequence[float]) -> dict[str, float | int]:
    """Compare two methods image by image on one metric.

    Args:
        first: Metric of method A, one value per image.
        second: Metric of method B on the same images, in the same order.

    Returns:
        ``wins``, ``ties`` and ``losses`` of A against B, ``count``, and
        ``probability``: the share of images on which A's value is strictly
        greater than B's (ties count as no win), NaN for no images.

    Raises:
        ValueError: The sequences differ in length.
    """
    if len(first) != len(second):
        raise ValueError(f"cannot compare {len(first)} values with {len(second)} values")
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    wins = int(np.count_nonzero(a > b))
    ties = int(np.count_nonzero(a == b))
    count = int(a.size)
    return {
        "wins": wins,
        "ties": ties,
        "losses": count - wins - ties,
        "count": count,
        "probability": wins / count if count else math.nan,
    }


def mean_or_none(values: Iterable[float]) -> float | None:
    """Return the arithmetic mean, or None for no values."""
    values = list(values)
    return float(np.mean(values)) if values else None
