"""Tests of training.augment: cut-paste copies and balanced batches."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.augment import (
    MAX_ZOOM,
    MIN_ZOOM,
    BalancedBatchSampler,
    augment_anomalies,
    paste_transformed,
    random_defect_transform,
)

SIZE = 32


def noise(seed: int, channels: int = 3, low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (SIZE, SIZE, channels), dtype=np.uint8)


def box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# ---------------------------------------------------------------------------
# paste_transformed and random_defect_transform


def test_paste_transformed_aligns_mask_and_pixels():
    image = noise(1)
    mask = box_mask(4, 6, 12, 10)
    background = noise(2)
    angle = np.deg2rad(30)
    matrix = np.array(
        [
            [1.2 * np.cos(angle), -1.2 * np.sin(angle), 9.0],
            [1.2 * np.sin(angle), 1.2 * np.cos(angle), 3.0],
        ]
    )

    pasted, new_mask = paste_transformed(image, mask, background, matrix)

    expected_mask = cv2.warpAffine(mask.astype(np.uint8), matrix, (SIZE, SIZE), flags=cv2.INTER_NEAREST).astype(bool)
    expected_patch = cv2.warpAffine(
        image, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    assert new_mask.dtype == bool
    assert (new_mask == expected_mask).all()
    assert new_mask.sum() > 0
    assert (pasted[new_mask] == expected_patch[new_mask]).all()
    assert (pasted[~new_mask] == background[~new_mask]).all()


def test_paste_transformed_single_channel():
    image = noise(1, channels=1)
    mask = box_mask(2, 2, 6, 6)
    background = noise(2, channels=1)
    shift = np.array([[1.0, 0.0, 10.0], [0.0, 1.0, 5.0]])

    pasted, new_mask = paste_transformed(image, mask, background, shift)

    assert pasted.shape == (SIZE, SIZE, 1)
    assert (new_mask == box_mask(12, 7, 16, 11)).all()
    assert (pasted[7:11, 12:16] == image[2:6, 2:6]).all()
    assert (pasted[~new_mask] == background[~new_mask]).all()


def test_paste_transformed_union_with_background_mask():
    image = noise(1)
    mask = box_mask(0, 0, 4, 4)
    background = noise(2)
    background_mask = box_mask(20, 20, 30, 30)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    _, new_mask = paste_transformed(image, mask, background, identity, background_mask=background_mask)

    assert (new_mask == (mask | background_mask)).all()


def test_random_defect_transform_keeps_defect_inside():
    mask = box_mask(3, 3, 9, 7)
    rng = np.random.default_rng(0)

    for _ in range(50):
        matrix = random_defect_transform(mask, rng)
        linear = matrix[:, :2]
        zoom = np.sqrt(abs(np.linalg.det(linear)))
        corners = np.array([[3, 3, 1], [8, 3, 1], [3, 6, 1], [8, 6, 1]], dtype=np.float64)
        moved = corners @ matrix.T
        assert MIN_ZOOM - 1e-9 <= zoom <= MAX_ZOOM + 1e-9
        assert (moved >= -1e-6).all()
        assert (moved <= SIZE - 1 + 1e-6).all()


# ---------------------------------------------------------------------------
# augment_anomalies


def test_augment_counts_and_plain_copies():
    anomalies = [(noise(1), box_mask(2, 2, 8, 8)), (noise(2), box_mask(10, 10, 20, 14))]
    normals = [noise(3), noise(4)]

    augmented = augment_anomalies(anomalies, normals, rng=np.random.default_rng(0), plain_copies=2, cutpaste_copies=3)

    assert len(augmented) == 2 * (2 + 3)
    for copy_index in range(2):
        image, mask = augmented[copy_index]
        assert (image == anomalies[0][0]).all()
        assert (mask == anomalies[0][1]).all()
        assert image is not anomalies[0][0]
    image, mask = augmented[5]
    assert (image == anomalies[1][0]).all()
    assert (mask == anomalies[1][1]).all()


def test_augment_default_copy_counts():
    augmented = augment_anomalies(
        [(noise(1), box_mask(2, 2, 8, 8))], [noise(2)], rng=np.random.default_rng(0)
    )

    assert len(augmented) == 15


def test_augment_cut_paste_mask_matches_pixels():
    # A defect image of one colour makes every pasted pixel that colour,
    # whatever transform was drawn. The normals are noise, so a pixel outside
    # the new mask can only match the normal it was pasted on.
    defect = np.full((SIZE, SIZE, 3), 200, dtype=np.uint8)
    defect_mask = box_mask(4, 4, 12, 9)
    normals = [noise(seed, low=0, high=150) for seed in range(3)]

    augmented = augment_anomalies(
        [(defect, defect_mask)], normals, rng=np.random.default_rng(5), plain_copies=0, cutpaste_copies=20
    )

    areas = []
    for image, mask in augmented:
        assert mask.dtype == bool
        assert mask.shape == (SIZE, SIZE)
        assert mask.any()
        assert (image[mask] == 200).all()
        backgrounds = [normal for normal in normals if (image[~mask] == normal[~mask]).all()]
        assert len(backgrounds) == 1
        areas.append(int(mask.sum()))
    # Zoom is drawn in [2/3, 3/2], so the area stays within those squares
    # give or take the nearest-neighbour rounding at the edges.
    assert min(areas) >= 0.5 * (MIN_ZOOM**2) * defect_mask.sum()
    assert max(areas) <= 1.5 * (MAX_ZOOM**2) * defect_mask.sum()
    assert len(set(areas)) > 1


def test_augment_anomalies_only_pastes_onto_other_anomaly():
    first = np.full((SIZE, SIZE, 1), 200, dtype=np.uint8)
    first_mask = box_mask(2, 2, 8, 8)
    second = noise(7, channels=1, low=0, high=150)
    second_mask = box_mask(20, 20, 28, 28)

    augmented = augment_anomalies(
        [(first, first_mask), (second, second_mask)],
        [],
        rng=np.random.default_rng(1),
        plain_copies=0,
        cutpaste_copies=5,
    )

    assert len(augmented) == 10
    for image, mask in augmented[:5]:
        # Copies of the first anomaly land on the second one, and its defect
        # stays labelled in the union mask.
        assert (mask & second_mask).sum() == second_mask.sum()
        assert (image[~mask] == second[~mask]).all()
        pasted = mask & ~second_mask
        assert pasted.any()
        assert (image[pasted] == 200).all()


def test_augment_single_anomaly_without_normals():
    image = noise(3)
    mask = box_mask(5, 5, 9, 9)

    augmented = augment_anomalies([(image, mask)], [], rng=np.random.default_rng(0), plain_copies=1, cutpaste_copies=4)

    assert len(augmented) == 5
    for _, new_mask in augmented[1:]:
        assert (new_mask & mask).sum() == mask.sum()


def test_augment_is_seeded():
    anomalies = [(noise(1), box_mask(2, 2, 8, 8))]
    normals = [noise(2), noise(3)]

    first = augment_anomalies(anomalies, normals, rng=np.random.default_rng(9))
    second = augment_anomalies(anomalies, normals, rng=np.random.default_rng(9))

    for (image_a, mask_a), (image_b, mask_b) in zip(first, second):
        assert (image_a == image_b).all()
        assert (mask_a == mask_b).all()


def test_augment_rejects_invalid_inputs():
    rng = np.random.default_rng(0)
    good = (noise(1), box_mask(2, 2, 8, 8))

    with pytest.raises(ValueError, match="mask 0 is empty"):
        augment_anomalies([(noise(1), np.zeros((SIZE, SIZE), dtype=bool))], [], rng=rng)
    with pytest.raises(ValueError, match="normal image 0"):
        augment_anomalies([good], [np.zeros((16, 16, 3), dtype=np.uint8)], rng=rng)
    with pytest.raises(ValueError, match="mask 0 is uint8"):
        augment_anomalies([(noise(1), box_mask(2, 2, 8, 8).astype(np.uint8))], [], rng=rng)
    with pytest.raises(ValueError, match="copy counts"):
        augment_anomalies([good], [], rng=rng, plain_copies=-1)
    assert augment_anomalies([], [noise(1)], rng=rng) == []


# ---------------------------------------------------------------------------
# BalancedBatchSampler


def test_sampler_batches_hold_a_third_anomalies():
    sampler = BalancedBatchSampler(n_normal=20, n_anomalous=3, batch_size=6, seed=0)

    batches = list(sampler)

    assert len(sampler) == 5  # 20 normal items, 4 per batch
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len(batch) == 6
        assert sum(index >= 20 for index in batch) == 2
    normal_seen = {index for batch in batches for index in batch if index < 20}
    assert normal_seen == set(range(20))
    anomaly_counts = Counter(index for batch in batches for index in batch if index >= 20)
    assert set(anomaly_counts) == {20, 21, 22}
    assert max(anomaly_counts.values()) - min(anomaly_counts.values()) <= 1


@pytest.mark.parametrize(
    ("batch_size", "anomalous_per_batch"),
    [(2, 1), (3, 1), (4, 1), (5, 2), (16, 5), (32, 11)],
)
def test_sampler_anomalies_per_batch(batch_size, anomalous_per_batch):
    sampler = BalancedBatchSampler(n_normal=50, n_anomalous=4, batch_size=batch_size, seed=1)

    batch = next(iter(sampler))

    assert sum(index >= 50 for index in batch) == anomalous_per_batch
    assert len(sampler) == -(-50 // (batch_size - anomalous_per_batch))


def test_sampler_last_batch_filled():
    sampler = BalancedBatchSampler(n_normal=7, n_anomalous=2, batch_size=6, seed=0)

    batches = list(sampler)

    assert len(batches) == 2  # 4 normal slots per batch, 7 normal items
    assert all(len(batch) == 6 for batch in batches)
    assert {index for batch in batches for index in batch if index < 7} == set(range(7))


def test_sampler_without_normals():
    sampler = BalancedBatchSampler(n_normal=0, n_anomalous=10, batch_size=4, seed=0)

    batches = list(sampler)

    assert len(sampler) == 3
    assert len(batches) == 3
    assert {index for batch in batches for index in batch} == set(range(10))


def test_sampler_without_anomalies():
    sampler = BalancedBatchSampler(n_normal=9, n_anomalous=0, batch_size=4, seed=0)

    batches = list(sampler)

    assert len(sampler) == 3
    assert all(index < 9 for batch in batches for index in batch)
    assert {index for batch in batches for index in batch} == set(range(9))


def test_sampler_seeded_epochs():
    first = BalancedBatchSampler(n_normal=30, n_anomalous=5, batch_size=9, seed=4)
    second = BalancedBatchSampler(n_normal=30, n_anomalous=5, batch_size=9, seed=4)

    first_epochs = [list(first), list(first)]
    second_epochs = [list(second), list(second)]

    assert first_epochs == second_epochs
    assert first_epochs[0] != first_epochs[1]


def test_sampler_with_dataloader():
    dataset = TensorDataset(torch.arange(13))
    sampler = BalancedBatchSampler(n_normal=10, n_anomalous=3, batch_size=3, seed=0)

    batches = list(DataLoader(dataset, batch_sampler=sampler))

    assert len(batches) == len(sampler) == 5
    assert all(int((batch[0] >= 10).sum()) == 1 for batch in batches)


def test_sampler_rejects_invalid_arguments():
    with pytest.raises(ValueError, match="empty"):
        BalancedBatchSampler(0, 0, 4, seed=0)
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        BalancedBatchSampler(5, 1, 1, seed=0)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        BalancedBatchSampler(5, 1, 0, seed=0)
    with pytest.raises(ValueError, match="0 or more"):
        BalancedBatchSampler(-1, 1, 4, seed=0)
