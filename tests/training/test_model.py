import pytest
import torch
from torch.nn import functional as F

from training.backbones import IMAGENET_MEAN, IMAGENET_STD, build_encoder
from training.model import AEXADNet, Decoder


def test_decoder_branch_one_equals_upsample_first():
    latent = torch.randn(2, 64, 7, 7, generator=torch.Generator().manual_seed(0))
    decoder = Decoder(64, 1)
    reference = torch.tanh(F.interpolate(latent, scale_factor=8.0, mode="nearest"))
    reference = reference.reshape(2, 8, 8, 56, 56).sum(dim=2)
    branch_two = decoder.branch(latent)
    expected = decoder.head(reference * branch_two + branch_two)
    torch.testing.assert_close(decoder(latent), expected, atol=1e-5, rtol=1e-5)
    assert decoder(latent).shape == (2, 1, 56, 56)


@pytest.mark.parametrize("channels", [1, 3])
def test_network_shapes_and_frozen_encoder(channels):
    encoder, info = build_encoder("efficientnet_lite0", weights="none")
    network = AEXADNet(encoder, info.channels, channels=channels, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    network.train()
    assert not network.encoder.training
    images = torch.rand(2, channels, 64, 64)
    assert network.encode(images).shape == (2, 40, 8, 8)
    assert network(images).shape == (2, channels, 64, 64)
    trainable = {name for name, parameter in network.named_parameters() if parameter.requires_grad}
    assert trainable
    assert all(name.startswith(("bottleneck", "decoder")) for name in trainable)


def test_network_rejects_two_channels():
    encoder, info = build_encoder("efficientnet_lite0", weights="none")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        AEXADNet(encoder, info.channels, channels=2, mean=IMAGENET_MEAN, std=IMAGENET_STD)
