"""The inference module that the model store holds: network plus explanation head."""


import math
from typing import Dict, List

import torch
from torch import nn

from training.explain import (
    anomaly_score,
    binary_mask,
    error_maps,
    filter_size,
    gaussian_filter,
    prepare_image,
    resize_map,
)

# Version of the module's calling convention and output keys. The service
# rejects a model whose version it does not know.
FORMAT_VERSION = 1


class Explainer(nn.Module):
    """Turn an image of any size into its AE-XAD explanation.

    Args:
        network: Maps ``(B, channels, image_size, image_size)`` images in
            ``[0, 1]`` to reconstructions of the same shape. When exported it
            is a traced module.
        image_size: Side of the square network input, a multiple of 8.
        channels: Channels the network reconstructs, 1 or 3.
        target_kind: ``TARGET_CONSTANT``, ``TARGET_NEGATIVE`` or ``TARGET_NONE``.
        target_value: The constant ``v`` of ``F(x) = v``.
        score_threshold: Image-level decision threshold on the anomaly score;
            NaN when no normal images were available to calibrate it.
    """

    format_version: int
    image_size: int
    channels: int
    target_kind: int
    target_value: float
    score_threshold: float

    def __init__(
        self,
        network: nn.Module,
        *,
        image_size: int,
        channels: int,
        target_kind: int,
        target_value: float,
        score_threshold: float = math.nan,
    ) -> None:
        super().__init__()
        self.network = network
        self.format_version = FORMAT_VERSION
        self.image_size = image_size
        self.channels = channels
        self.target_kind = target_kind
        self.target_value = float(target_value)
        self.score_threshold = float(score_threshold)
        # An empty buffer that moves with the module, so inputs can follow it
        # to the module's device.
        self.register_buffer("device_anchor", torch.zeros(0), persistent=False)

    def explain_prepared(
        self, image: torch.Tensor, reconstruction: torch.Tensor, height: int, width: int, multiplier: float
    ) -> Dict[str, torch.Tensor]:
        """Explain one prepared image ``(C, S, S)`` and return maps of ``height x width``."""
        raw, normalised = error_maps(image, reconstruction, self.target_kind, self.target_value)
        size = filter_size(normalised)
        # One filter call for both maps: the heatmap filters the normalised
        # error, the score the raw error, with the same k̂.
        filtered = gaussian_filter(torch.stack([normalised, raw]), size)
        heatmap = filtered[0]
        score = anomaly_score(raw, size, filtered[1])

        heatmap_full = resize_map(heatmap, height, width)
        return {
            "reconstruction": resize_map(reconstruction, height, width),
            "error": resize_map(normalised, height, width),
            "heatmap": heatmap_full,
            "mask": binary_mask(heatmap_full, multiplier),
            "score": score,
            "filter_size": torch.tensor(size, dtype=torch.int64),
            "is_anomalous": score > self.score_threshold,
        }

    @torch.jit.export
    def explain_batch(self, images: List[torch.Tensor], multipliers: List[float]) -> List[Dict[str, torch.Tensor]]:
        """Explain several ``(C, H, W)`` images with one network call.

        Args:
            images: uint8 (0-255) or float (0-1) tensors with 1, 3 or 4
                channels; each may have its own size.
            multipliers: Mask threshold multiplier ``a`` for each image.

        Returns:
            One dict per image with ``reconstruction`` ``(C, H, W)``, ``error``,
            ``heatmap`` and ``mask`` ``(H, W)``, and scalars ``score``,
            ``filter_size`` and ``is_anomalous``.
        """
        if len(images) != len(multipliers):
            raise ValueError("images and multipliers differ in length")
        device = self.device_anchor.device
        prepared = [prepare_image(image.to(device), self.channels, self.image_size) for image in images]
        with torch.no_grad():
            reconstructions = self.network(torch.stack(prepared))
            results: List[Dict[str, torch.Tensor]] = []
            for index, image in enumerate(images):
                results.append(
                    self.explain_prepared(
                        prepared[index], reconstructions[index], image.shape[-2], image.shape[-1], multipliers[index]
                    )
                )
        return results

    def forward(self, image: torch.Tensor, multiplier: float = 1.0) -> Dict[str, torch.Tensor]:
        """Explain one ``(C, H, W)`` image; see ``explain_batch``."""
        return self.explain_batch([image], [multiplier])[0]
