"""Augmentation and oversampling of the few anomalous training images.

AE-XAD replicates each anomalous training image 5 times as it is and makes 10
more copies in which the annotated defect is cut out, transformed
geometrically and pasted onto a normal image. Batches are then oversampled so
that a third of every batch is anomalous (Angiulli et al., "AE-XAD:
AutoEncoder-based eXplainable Anomaly Detection", section on training).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import cv2
import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

# Range of the random geometric transform of a cut-paste defect. Zoom is drawn
# log-uniformly, so shrinking and enlarging are equally likely.
MIN_ZOOM = 2.0 / 3.0
MAX_ZOOM = 1.5
# Transforms that push a tiny defect off the pixel grid are drawn again this
# many times before the defect is pasted untransformed.
_MAX_TRANSFORM_TRIES = 10


def random_defect_transform(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw a random affine transform that keeps a defect inside the image.

    The transform flips the defect horizontally and vertically (each with
    probability 1/2), rotates it by an angle in [0, 360) degrees, zooms it by
    a factor in [``MIN_ZOOM``, ``MAX_ZOOM``] about the centre of its bounding
    box, and moves that centre to a random point chosen so the transformed
    bounding box fits inside the image where it can.

    Args:
        mask: Defect mask shaped ``(height, width)``, dtype bool, not empty.
        rng: Random generator.

    Returns:
        A 2×3 float64 matrix for ``cv2.warpAffine`` that maps source pixel
        coordinates ``(x, y)`` to destination coordinates.
    """
    height, width = mask.shape
    rows, cols = np.nonzero(mask)
    x0, x1 = cols.min(), cols.max()
    y0, y1 = rows.min(), rows.max()
    center = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])

    flip = np.diag([rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0])])
    angle = rng.uniform(0.0, 2.0 * math.pi)
    zoom = math.exp(rng.uniform(math.log(MIN_ZOOM), math.log(MAX_ZOOM)))
    cos, sin = math.cos(angle), math.sin(angle)
    linear = zoom * np.array([[cos, -sin], [sin, cos]]) @ flip

    # Half extents of the transformed bounding box, so the new centre can be
    # drawn where the whole defect stays visible.
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64) - center
    half_width, half_height = np.abs(corners @ linear.T).max(axis=0)
    new_center = np.array(
        [_draw_center(rng, half_width, width), _draw_center(rng, half_height, height)],
    )

    translation = new_center - linear @ center
    return np.hstack([linear, translation[:, np.newaxis]])


def _draw_center(rng: np.random.Generator, half_extent: float, length: int) -> float:
    low, high = half_extent, length - 1 - half_extent
    if low >= high:
        # The transformed defect is larger than the image: centre it.
        return (length - 1) / 2.0
    return float(rng.uniform(low, high))


def paste_transformed(
    image: np.ndarray,
    mask: np.ndarray,
    background: np.ndarray,
    matrix: np.ndarray,
    *,
    background_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Transform the defect of an image and paste it onto a background.

    The whole image is warped bilinearly, not only the masked patch, so the
    pasted border pixels blend with the defect's own surroundings instead of
    with black. The mask is warped with the same matrix and nearest-neighbour
    interpolation, and exactly the pixels under the warped mask are pasted.

    Args:
        image: Source image shaped ``(height, width, channels)``, dtype uint8.
        mask: Defect mask of ``image`` shaped ``(height, width)``, dtype bool.
        background: Image to paste onto, same shape and dtype as ``image``.
        matrix: 2×3 affine matrix from source to destination coordinates.
        background_mask: Defect mask of ``background`` when it has one. The
            returned mask is then the union of both masks.

    Returns:
        The new image, shaped like ``background``, and its mask
        ``(height, width)`` of dtype bool.
    """
    height, width = background.shape[:2]
    # Reflecting the border keeps black out of the bilinear blend at the edges.
    warped_image = cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    warped_image = warped_image.reshape(background.shape)  # cv2 drops a single channel axis
    warped_mask = cv2.warpAffine(
        mask.astype(np.uint8),
        matrix,
        (width, height),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    ).astype(bool)

    pasted = background.copy()
    pasted[warped_mask] = warped_image[warped_mask]
    new_mask = warped_mask if background_mask is None else warped_mask | background_mask
    return pasted, new_mask


def _cut_paste(
    image: np.ndarray,
    mask: np.ndarray,
    background: np.ndarray,
    background_mask: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    for _ in range(_MAX_TRANSFORM_TRIES):
        matrix = random_defect_transform(mask, rng)
        pasted, new_mask = paste_transformed(image, mask, background, matrix, background_mask=background_mask)
        # Nearest-neighbour sampling can miss a defect of a pixel or two
        # after zooming out; such a copy would carry no defect.
        if new_mask.any() and (background_mask is None or (new_mask & ~background_mask).any()):
            return pasted, new_mask
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return paste_transformed(image, mask, background, identity, background_mask=background_mask)


def _check_inputs(anomalies: list[tuple[np.ndarray, np.ndarray]], normals: list[np.ndarray]) -> None:
    shape = anomalies[0][0].shape
    if len(shape) != 3:
        raise ValueError(f"images must be shaped (height, width, channels), got {shape}")
    for index, (image, mask) in enumerate(anomalies):
        if image.dtype != np.uint8 or image.shape != shape:
            raise ValueError(f"anomalous image {index} is {image.dtype} {image.shape}, expected uint8 {shape}")
        if mask.dtype != bool or mask.shape != shape[:2]:
            raise ValueError(f"mask {index} is {mask.dtype} {mask.shape}, expected bool {shape[:2]}")
        if not mask.any():
            raise ValueError(f"mask {index} is empty; only annotated anomalies can be augmented")
    for index, image in enumerate(normals):
        if image.dtype != np.uint8 or image.shape != shape:
            raise ValueError(f"normal image {index} is {image.dtype} {image.shape}, expected uint8 {shape}")


def augment_anomalies(
    anomalies: list[tuple[np.ndarray, np.ndarray]],
    normals: list[np.ndarray],
    *,
    rng: np.random.Generator,
    plain_copies: int = 5,
    cutpaste_copies: int = 10,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Replace each anomalous training image with plain and cut-paste copies.

    Plain copies are the image and mask unchanged, as in the AE-XAD paper
    ("replicated 5 times as it is"). A cut-paste copy takes the pixels under
    the mask, applies :func:`random_defect_transform` to them and to the
    mask, and pastes them onto a normal image chosen at random. Its mask is
    exactly the transformed mask.

    Args:
        anomalies: ``(image, mask)`` pairs, images ``(height, width, channels)``
            uint8 and masks ``(height, width)`` bool and not empty. All images
            have the same shape.
        normals: Normal images of the same shape. May be empty (the
            anomalies-only scenario).
        rng: Random generator for the backgrounds and transforms.
        plain_copies: Unchanged copies per anomalous image.
        cutpaste_copies: Cut-paste copies per anomalous image.

    Returns:
        ``plain_copies + cutpaste_copies`` pairs per anomalous image, in
        input order, plain copies first. Every array is a new copy. The
        originals are not included beyond the plain copies.

    Raises:
        ValueError: Shapes or dtypes differ, a mask is empty, or a copy count
            is negative.
    """
    if plain_copies < 0 or cutpaste_copies < 0:
        raise ValueError(f"copy counts must be 0 or more, got {plain_copies} and {cutpaste_copies}")
    if not anomalies:
        return []
    _check_inputs(anomalies, normals)

    augmented: list[tuple[np.ndarray, np.ndarray]] = []
    for index, (image, mask) in enumerate(anomalies):
        for _ in range(plain_copies):
            augmented.append((image.copy(), mask.copy()))

        for _ in range(cutpaste_copies):
            if normals:
                background = normals[int(rng.integers(len(normals)))]
                background_mask = None
            else:
                # Anomalies-only scenario: paste onto another anomalous image
                # (the image itself when it is the only one). The pasted defect
                # may cover part of that image's own defect, so the new mask is
                # the union of both masks, and every defect pixel stays labelled.
                others = [other for other in range(len(anomalies)) if other != index] or [index]
                background, background_mask = anomalies[others[int(rng.integers(len(others)))]]
            augmented.append(_cut_paste(image, mask, background, background_mask, rng))

    logger.debug(
        "Augmented %d anomalous images into %d (%d plain, %d cut-paste each, %s backgrounds)",
        len(anomalies),
        len(augmented),
        plain_copies,
        cutpaste_copies,
        "normal" if normals else "anomalous",
    )
    return augmented


class BalancedBatchSampler(Sampler[list[int]]):
    """Batch sampler that puts a third of anomalous items in every batch.

    The dataset is indexed normal items first (``0 .. n_normal - 1``), then
    anomalous ones (``n_normal .. n_normal + n_anomalous - 1``). Every batch
    contains ``round(batch_size / 3)`` anomalous items (at least 1) and
    ``batch_size`` minus that many normal items. One epoch has
    ``ceil(n_normal / normal_per_batch)`` batches, so it covers every normal
    item at least once. The last batch is filled up from a fresh shuffle of
    the normal items, so a few of them appear twice in that epoch. Items of
    each kind are drawn cyclically from shuffled orders that are reshuffled
    on every pass, which oversamples the anomalies evenly.

    With no normal items every item is anomalous and an epoch covers every
    anomalous item. With no anomalous items (the MSE baseline) every item is
    normal. Every batch contains exactly ``batch_size`` items.

    Each call to ``__iter__`` starts a new epoch. The order depends only on
    ``seed`` and the number of epochs iterated so far.

    Args:
        n_normal: Number of normal items.
        n_anomalous: Number of anomalous items.
        batch_size: Items per batch.
        seed: Seed of the shuffles.

    Raises:
        ValueError: Both counts are 0, a count is negative, or the batch
            cannot hold both kinds (``batch_size`` below 2 with both present).
    """

    def __init__(self, n_normal: int, n_anomalous: int, batch_size: int, *, seed: int) -> None:
        super().__init__()
        if n_normal < 0 or n_anomalous < 0:
            raise ValueError(f"item counts must be 0 or more, got {n_normal} normal and {n_anomalous} anomalous")
        if n_normal + n_anomalous == 0:
            raise ValueError("the dataset is empty: no normal and no anomalous items")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if n_normal > 0 and n_anomalous > 0 and batch_size < 2:
            raise ValueError("batch_size must be at least 2 when there are both normal and anomalous items")

        self.n_normal = n_normal
        self.n_anomalous = n_anomalous
        self.batch_size = batch_size
        self.seed = seed
        self._epoch = 0

        if n_anomalous == 0:
            self.anomalous_per_batch = 0
        elif n_normal == 0:
            self.anomalous_per_batch = batch_size
        else:
            self.anomalous_per_batch = min(max(round(batch_size / 3), 1), batch_size - 1)
        self.normal_per_batch = batch_size - self.anomalous_per_batch

    def __len__(self) -> int:
        if self.n_normal == 0:
            return math.ceil(self.n_anomalous / self.batch_size)
        return math.ceil(self.n_normal / self.normal_per_batch)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self._epoch])
        self._epoch += 1
        batches = len(self)
        normal = _cyclic_shuffles(rng, self.n_normal, batches * self.normal_per_batch)
        anomalous = self.n_normal + _cyclic_shuffles(rng, self.n_anomalous, batches * self.anomalous_per_batch)
        for batch in range(batches):
            normal_part = normal[batch * self.normal_per_batch : (batch + 1) * self.normal_per_batch]
            anomalous_part = anomalous[batch * self.anomalous_per_batch : (batch + 1) * self.anomalous_per_batch]
            yield [int(index) for index in normal_part] + [int(index) for index in anomalous_part]


def _cyclic_shuffles(rng: np.random.Generator, count: int, length: int) -> np.ndarray:
    """Concatenate fresh permutations of ``range(count)`` up to ``length`` items."""
    if count == 0 or length == 0:
        return np.zeros(0, dtype=np.int64)
    passes = math.ceil(length / count)
    return np.concatenate([rng.permutation(count) for _ in range(passes)])[:length]
