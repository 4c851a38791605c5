"""Tests of training.metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score, roc_auc_score

from training.explain import binary_mask
from training.metrics import (
    MULTIPLIERS,
    decision_metrics,
    f1_iou,
    has_pixel_ground_truth,
    image_auc,
    mean_or_none,
    pixel_auc,
    threshold_sweep,
    tradeoff_score,
    win_rates,
)


def box_mask(height: int = 20, width: int = 30, box: tuple[int, int, int, int] = (5, 4, 12, 10)) -> np.ndarray:
    """Return a bool mask set inside box (x0, y0, x1, y1)."""
    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def mann_whitney_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as the share of (positive, negative) pairs ranked correctly, ties counting half."""
    positives = scores[labels.astype(bool)]
    negatives = scores[~labels.astype(bool)]
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))


# ---------------------------------------------------------------------------
# pixel_auc


def test_pixel_auc_constant_map_is_half():
    assert pixel_auc(np.full((20, 30), 0.3, dtype=np.float32), box_mask()) == 0.5


def test_pixel_auc_perfect_and_inverted():
    mask = box_mask()
    assert pixel_auc(mask.astype(np.float32), mask) == 1.0
    assert pixel_auc(1.0 - mask.astype(np.float32), mask) == 0.0


def test_pixel_auc_matches_pair_count_and_sklearn():
    rng = np.random.default_rng(3)
    mask = box_mask()
    heatmap = rng.random(mask.shape).astype(np.float32) + 0.5 * mask
    heatmap[0, :5] = heatmap[0, 5]  # ties
    expected = mann_whitney_auc(heatmap.ravel(), mask.ravel())
    assert pixel_auc(heatmap, mask) == pytest.approx(expected, abs=1e-12)
    assert pixel_auc(heatmap, mask) == pytest.approx(roc_auc_score(mask.ravel(), heatmap.ravel()), abs=1e-12)


def test_pixel_auc_rejects_empty_mask():
    with pytest.raises(ValueError, match="both defect and normal pixels"):
        pixel_auc(np.random.default_rng(0).random((20, 30)), np.zeros((20, 30), dtype=bool))


def test_pixel_auc_rejects_full_mask():
    with pytest.raises(ValueError, match="both defect and normal pixels"):
        pixel_auc(np.random.default_rng(0).random((20, 30)), np.ones((20, 30), dtype=bool))


def test_pixel_auc_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(20, 31\)"):
        pixel_auc(np.zeros((20, 31)), box_mask())


def test_has_pixel_ground_truth_cases():
    assert has_pixel_ground_truth(box_mask())
    assert not has_pixel_ground_truth(np.zeros((4, 4), dtype=bool))
    assert not has_pixel_ground_truth(np.ones((4, 4), dtype=bool))


# ---------------------------------------------------------------------------
# f1_iou and threshold_sweep


def test_f1_iou_perfect_prediction():
    mask = box_mask()
    assert f1_iou(mask.copy(), mask) == (1.0, 1.0)


def test_f1_iou_empty_prediction_is_zero():
    assert f1_iou(np.zeros((20, 30), dtype=bool), box_mask()) == (0.0, 0.0)


def test_f1_iou_hand_computed():
    truth = np.array([[1, 1, 0, 0]], dtype=bool)
    predicted = np.array([[0, 1, 1, 0]], dtype=bool)
    f1, iou = f1_iou(predicted, truth)
    # TP 1, FP 1, FN 1: F1 = 2 / 4, IoU = 1 / 3.
    assert f1 == pytest.approx(0.5)
    assert iou == pytest.approx(1 / 3)


def test_f1_iou_matches_sklearn():
    rng = np.random.default_rng(7)
    for _ in range(20):
        truth = rng.random((16, 12)) < 0.3
        truth[0, 0] = True
        predicted = rng.random((16, 12)) < 0.4
        f1, iou = f1_iou(predicted, truth)
        assert f1 == pytest.approx(f1_score(truth.ravel(), predicted.ravel(), zero_division=0.0))
        assert iou == pytest.approx(jaccard_score(truth.ravel(), predicted.ravel(), zero_division=0.0))


def test_f1_iou_rejects_empty_mask():
    with pytest.raises(ValueError, match="at least one defect pixel"):
        f1_iou(np.ones((4, 4), dtype=bool), np.zeros((4, 4), dtype=bool))


def test_threshold_sweep_uses_model_mask_rule():
    rng = np.random.default_rng(11)
    mask = box_mask()
    heatmap = (rng.random(mask.shape) + 1.5 * mask).astype(np.float32)
    sweep = threshold_sweep(heatmap, mask)
    assert list(sweep) == list(MULTIPLIERS)
    for multiplier, (f1, iou) in sweep.items():
        predicted = binary_mask(torch.from_numpy(heatmap), multiplier).numpy()
        assert (f1, iou) == f1_iou(predicted, mask)


def test_threshold_sweep_perfect_heatmap():
    mask = box_mask()
    sweep = threshold_sweep(mask.astype(np.float32), mask, (1.0,))
    assert sweep[1.0] == (1.0, 1.0)


def test_threshold_sweep_constant_map_predicts_nothing():
    sweep = threshold_sweep(np.full((20, 30), 0.7, dtype=np.float32), box_mask(), (1.0, 2.0))
    assert sweep == {1.0: (0.0, 0.0), 2.0: (0.0, 0.0)}


# ---------------------------------------------------------------------------
# Image level


def test_image_auc_matches_sklearn():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 50)
    scores = rng.random(50) + 0.3 * labels
    assert image_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_image_auc_one_class_is_none():
    assert image_auc([0.1, 0.2], [1, 1]) is None
    assert image_auc([], []) is None


def test_decision_metrics_match_sklearn():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, 40)
    predictions = rng.random(40) < 0.5
    metrics = decision_metrics(predictions, labels)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert metrics["precision"] == pytest.approx(precision_score(labels, predictions))
    assert metrics["recall"] == pytest.approx(recall_score(labels, predictions))
    assert sum(metrics[key] for key in ("true_positive", "false_positive", "true_negative", "false_negative")) == 40


def test_decision_metrics_nothing_flagged():
    metrics = decision_metrics([False, False], [0, 1])
    assert metrics["precision"] is None
    assert metrics["recall"] == 0.0
    assert metrics["accuracy"] == 0.5


# ---------------------------------------------------------------------------
# Trade-off score, win rates, means


def test_tradeoff_zero_metric_is_infinite():
    assert tradeoff_score(5.0, 0.0) == math.inf


def test_tradeoff_perfect_metric_is_zero():
    assert tradeoff_score(5.0, 1.0) == 0.0


def test_tradeoff_tends_to_zero_near_one():
    values = [tradeoff_score(5.0, 1.0 - epsilon) for epsilon in (1e-2, 1e-4, 1e-8)]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(0.0, abs=1e-6)


def test_tradeoff_hand_computed():
    assert tradeoff_score(6.0, 0.5) == pytest.approx(6.0)
    assert tradeoff_score(6.0, 0.75) == pytest.approx(2.0)


@pytest.mark.parametrize("metric", [-0.1, 1.1, math.nan])
def test_tradeoff_rejects_metric_outside_unit_range(metric):
    with pytest.raises(ValueError, match="metric in"):
        tradeoff_score(1.0, metric)


def test_tradeoff_rejects_negative_energy():
    with pytest.raises(ValueError, match="non-negative energy"):
        tradeoff_score(-1.0, 0.5)


def test_win_rates_counts():
    rates = win_rates([0.9, 0.5, 0.2, 0.7], [0.1, 0.5, 0.3, 0.6])
    assert rates == {"wins": 2, "ties": 1, "losses": 1, "count": 4, "probability": 0.5}


def test_win_rates_rejects_length_mismatch():
    with pytest.raises(ValueError, match="3 values with 2"):
        win_rates([1, 2, 3], [1, 2])


def test_mean_or_none():
    assert mean_or_none([]) is None
    assert mean_or_none([1.0, 2.0]) == 1.5
