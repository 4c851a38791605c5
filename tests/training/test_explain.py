import math

import cv2
import numpy as np
import pytest
import torch

from training.explain import (
    TARGET_CONSTANT,
    TARGET_NEGATIVE,
    TARGET_NONE,
    anomaly_score,
    binary_mask,
    error_maps,
    filter_size,
    gaussian_filter,
    gaussian_kernel1d,
    prepare_image,
    resize_map,
)


def block_map(height, width, top, left, rows, columns):
    values = torch.zeros(height, width)
    values[top : top + rows, left : left + columns] = 1.0
    return values


def test_filter_size_single_block():
    # Rows hold runs of 6, columns runs of 10: k = round(max(6, 10) / 2) = 5.
    assert filter_size(block_map(64, 64, 5, 7, 10, 6)) == 5


def test_filter_size_two_blocks_mean_run():
    values = block_map(80, 80, 2, 2, 4, 12) + block_map(80, 80, 40, 40, 4, 4)
    # Row runs: 4 runs of 12 and 4 runs of 4, mean 8; column runs: 16 runs of 4.
    assert filter_size(values) == 4


def test_filter_size_rounds_half_to_even():
    # Mean runs 3 and 3: 3 / 2 = 1.5 rounds to 2 (round half to even).
    assert filter_size(block_map(32, 32, 0, 0, 3, 3)) == 2


def test_filter_size_constant_map_is_one():
    assert filter_size(torch.full((16, 16), 0.3)) == 1


def test_filter_size_capped_to_fit_image():
    values = torch.ones(9, 9)
    values[0, 0] = 0.0
    # Runs of about 9 would give k = 4 or 5; the kernel must fit: (9 - 1) // 2 = 4.
    assert filter_size(values) <= 4


def test_filter_size_at_least_one():
    values = torch.zeros(20, 20)
    values[3, 3] = 1.0
    assert filter_size(values) == 1


@pytest.mark.parametrize("size", [1, 2, 5, 9])
def test_gaussian_kernel_matches_opencv(size):
    expected = cv2.getGaussianKernel(2 * size + 1, size / 3.0).ravel()
    kernel = gaussian_kernel1d(size, torch.device("cpu")).numpy()
    assert kernel.shape == (2 * size + 1,)
    np.testing.assert_allclose(kernel, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("size", [1, 3, 6])
def test_gaussian_filter_matches_opencv(size):
    values = torch.rand(30, 41, generator=torch.Generator().manual_seed(size))
    expected = cv2.GaussianBlur(
        values.numpy(), (2 * size + 1, 2 * size + 1), size / 3.0, borderType=cv2.BORDER_REFLECT_101
    )
    np.testing.assert_allclose(gaussian_filter(values, size).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_binary_mask_threshold():
    heatmap = torch.tensor([[0.0, 0.0, 0.0, 4.0]])
    # mean 1, std sqrt(3) = 1.732: a = 1 keeps 4.0 only, a = 2 (threshold 4.46) keeps nothing.
    assert binary_mask(heatmap, 1.0).tolist() == [[False, False, False, True]]
    assert binary_mask(heatmap, 2.0).sum() == 0


def test_anomaly_score_by_hand():
    error = torch.zeros(7, 7)
    error[3, 3] = 1.0
    kernel = cv2.getGaussianKernel(3, 1 / 3.0).ravel()
    # Only the centre pixel is non-zero, so the score is 1 * centre weight of the 2-D kernel.
    assert anomaly_score(error, 1).item() == pytest.approx(kernel[1] ** 2, rel=1e-5)


def test_anomaly_score_favours_clusters():
    isolated = torch.zeros(32, 32)
    isolated[::8, ::8] = 1.0  # 16 isolated pixels
    cluster = torch.zeros(32, 32)
    cluster[10:14, 10:14] = 1.0  # 16 adjacent pixels
    assert anomaly_score(cluster, 2) > 2 * anomaly_score(isolated, 2)


def test_error_maps_constant_target():
    image = torch.tensor([[[0.2, 0.6]]])
    reconstruction = torch.tensor([[[0.3, 2.0]]])
    raw, normalised = error_maps(image, reconstruction, TARGET_CONSTANT, 2.0)
    torch.testing.assert_close(raw, torch.tensor([[0.01, 1.96]]))
    # 0.01 / 1.8^2 and 1.96 / 1.4^2 = 1.0 (clipped at 1).
    torch.testing.assert_close(normalised, torch.tensor([[0.01 / 3.24, 1.0]]))


def test_error_maps_negative_target_guarded():
    image = torch.tensor([[[0.5, 0.0]]])
    reconstruction = torch.tensor([[[0.55, 0.5]]])
    _, normalised = error_maps(image, reconstruction, TARGET_NEGATIVE, 0.0)
    # At x = 0.5, (F(x) - x)^2 = 0 is bounded below by 0.01: 0.0025 / 0.01.
    torch.testing.assert_close(normalised, torch.tensor([[0.25, 0.25]]))


def test_error_maps_channel_mean():
    image = torch.zeros(3, 1, 1)
    reconstruction = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    raw, normalised = error_maps(image, reconstruction, TARGET_NONE, 0.0)
    assert raw.item() == pytest.approx((0.01 + 0.04 + 0.09) / 3)
    assert normalised.item() == pytest.approx(raw.item())


def test_prepare_image_uint8_gray_to_rgb():
    image = torch.full((1, 10, 20), 255, dtype=torch.uint8)
    prepared = prepare_image(image, 3, 16)
    assert prepared.shape == (3, 16, 16)
    assert prepared.dtype == torch.float32
    assert torch.allclose(prepared, torch.ones_like(prepared))


def test_prepare_image_rgba_to_gray_luma():
    image = torch.zeros(4, 8, 8)
    image[0] = 1.0  # pure red, alpha 0
    prepared = prepare_image(image, 1, 8)
    assert prepared.shape == (1, 8, 8)
    assert prepared.max().item() == pytest.approx(0.299)


def test_prepare_image_rejects_two_channels():
    with pytest.raises(ValueError, match="1, 3 or 4 image channels"):
        prepare_image(torch.zeros(2, 8, 8), 1, 8)


def test_resize_map_shapes():
    assert resize_map(torch.rand(16, 16), 30, 50).shape == (30, 50)
    assert resize_map(torch.rand(3, 16, 16), 7, 9).shape == (3, 7, 9)
    assert math.isclose(resize_map(torch.full((4, 4), 0.5), 9, 9).mean().item(), 0.5, rel_tol=1e-6)
