import pytest
import torch

from training.explain import TARGET_CONSTANT, TARGET_NEGATIVE
from training.loss import aexad_loss, mse_loss


def one_image(values, recon, mask):
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.float32).view(1, 1, 1, -1)
    return as_tensor(values), as_tensor(recon), as_tensor(mask)


def test_aexad_loss_constant_target_by_hand():
    images, reconstructions, masks = one_image([0.2, 0.6], [0.3, 1.0], [0.0, 1.0])
    # D = 2, |y| = 1, lambda = 2.
    # normal pixel: (0.2 - 0.3)^2 / (2 - 0.2)^2 = 0.01 / 3.24
    # defect pixel: 2 * (2 - 1.0)^2 / (2 - 0.6)^2 = 2 / 1.96
    expected = 0.01 / 3.24 + 2.0 / 1.96
    loss = aexad_loss(images, reconstructions, masks, target_kind=TARGET_CONSTANT, target_value=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_aexad_loss_negative_target_by_hand():
    images, reconstructions, masks = one_image([0.2, 0.6], [0.3, 1.0], [0.0, 1.0])
    # normal pixel: 0.01 / (0.8 - 0.2)^2 = 0.01 / 0.36
    # defect pixel: 2 * (0.4 - 1.0)^2 / (0.4 - 0.6)^2 = 2 * 0.36 / 0.04
    expected = 0.01 / 0.36 + 18.0
    loss = aexad_loss(images, reconstructions, masks, target_kind=TARGET_NEGATIVE, target_value=0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_aexad_loss_normal_image_lambda_one():
    images, reconstructions, masks = one_image([0.2, 0.6], [0.3, 0.4], [0.0, 0.0])
    expected = 0.01 / 3.24 + 0.04 / 1.96
    loss = aexad_loss(images, reconstructions, masks, target_kind=TARGET_CONSTANT, target_value=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_aexad_loss_batch_mean():
    normal = one_image([0.2, 0.6], [0.3, 0.4], [0.0, 0.0])
    anomalous = one_image([0.2, 0.6], [0.3, 1.0], [0.0, 1.0])
    images, reconstructions, masks = (torch.cat(pair) for pair in zip(normal, anomalous))
    expected = ((0.01 / 3.24 + 0.04 / 1.96) + (0.01 / 3.24 + 2.0 / 1.96)) / 2
    loss = aexad_loss(images, reconstructions, masks, target_kind=TARGET_CONSTANT, target_value=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_aexad_loss_mask_applies_to_every_channel():
    images = torch.full((1, 3, 1, 2), 0.5)
    reconstructions = torch.full((1, 3, 1, 2), 0.5)
    masks = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    # D = 6 and |y| = 3 (one pixel, three channels): lambda = 2.
    # Each defect feature: (2 - 0.5)^2 / (2 - 0.5)^2 = 1, three of them.
    loss = aexad_loss(images, reconstructions, masks, target_kind=TARGET_CONSTANT, target_value=2.0)
    assert loss.item() == pytest.approx(6.0)


def test_aexad_loss_perfect_reconstruction_zero():
    images, _, masks = one_image([0.2, 0.6], [0.0, 0.0], [0.0, 1.0])
    targets = torch.tensor([0.2, 2.0]).view(1, 1, 1, 2)
    loss = aexad_loss(images, targets, masks, target_kind=TARGET_CONSTANT, target_value=2.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_aexad_loss_has_gradient():
    images, reconstructions, masks = one_image([0.2, 0.6], [0.3, 1.0], [0.0, 1.0])
    reconstructions.requires_grad_(True)
    aexad_loss(images, reconstructions, masks, target_kind=TARGET_CONSTANT, target_value=2.0).backward()
    assert reconstructions.grad is not None
    assert reconstructions.grad.abs().sum() > 0


def test_mse_loss_by_hand():
    images, reconstructions, _ = one_image([0.2, 0.6], [0.3, 1.0], [0.0, 0.0])
    assert mse_loss(images, reconstructions).item() == pytest.approx(0.01 + 0.16)
