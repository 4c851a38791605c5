"""Training losses: the AE-XAD loss and the plain autoencoder's mean squared error."""

from __future__ import annotations

import torch

from training.explain import target_distance, target_image


def aexad_loss(
    images: torch.Tensor,
    reconstructions: torch.Tensor,
    masks: torch.Tensor,
    *,
    target_kind: int,
    target_value: float,
) -> torch.Tensor:
    """Compute the AE-XAD loss, averaged over the batch.

    Per image, summed over its ``D = C * H * W`` features ``j``::

        l = Σ (1 - y_j) (x_j - x̃_j)² / (F(x_j) - x_j)²
          + λ Σ y_j (F(x_j) - x̃_j)² / (F(x_j) - x_j)²,   λ = D / ‖y‖₁ (1 when y = 0)

    Normal pixels are pulled to the input, defect pixels to ``F(x)``; ``λ``
    makes a small defect weigh as much as the rest of the image.

    Args:
        images: ``(B, C, H, W)`` in ``[0, 1]``.
        reconstructions: ``(B, C, H, W)``.
        masks: ``(B, 1, H, W)`` with 1 on defect pixels; one mask channel
            applies to every image channel.
        target_kind: ``TARGET_CONSTANT`` or ``TARGET_NEGATIVE``.
        target_value: ``v`` of ``F(x) = v``.

    Returns:
        A scalar tensor.
    """
    masks = masks.to(images.dtype).expand_as(images)  # (B, C, H, W)
    distance = target_distance(images, target_kind, target_value)
    target = target_image(images, target_kind, target_value)

    features = images[0].numel()
    anomalous = masks.flatten(1).sum(dim=1)  # ‖y‖₁ per image, counted over all channels
    weight = torch.where(anomalous > 0, features / anomalous.clamp_min(1.0), torch.ones_like(anomalous))

    normal_term = ((1.0 - masks) * (images - reconstructions) ** 2 / distance).flatten(1).sum(dim=1)
    defect_term = (masks * (target - reconstructions) ** 2 / distance).flatten(1).sum(dim=1)
    return (normal_term + weight * defect_term).mean()


def mse_loss(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image sum of squared errors, averaged over the batch (the plain autoencoder)."""
    return ((images - reconstructions) ** 2).flatten(1).sum(dim=1).mean()
