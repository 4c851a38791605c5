"""Training loop: data folder in, exported model in the model store out."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from training.augment import BalancedBatchSampler, augment_anomalies
from training.backbones import DEFAULT_BACKBONE, IMAGENET_MEAN, IMAGENET_STD, build_encoder
from training.data import DataError, Sample, discover, infer_channels, load_image, load_mask, make_split
from training.energy import DEFAULT_COUNTRY, track_energy
from training.explain import TARGET_CONSTANT, TARGET_NEGATIVE, TARGET_NONE, prepare_image
from training.explainer import Explainer
from training.export import save_model, validate_class_name
from training.loss import aexad_loss, mse_loss
from training.model import AEXADNet

logger = logging.getLogger(__name__)

SCENARIOS = ("standard", "anomalies-only")
LOSSES = ("aexad", "mse")
TARGET_FUNCTIONS = ("constant", "negative")

# Quantile of the held-out normal images' scores used as the image-level
# decision threshold: about 1 normal image in 100 is flagged.
THRESHOLD_QUANTILE = 0.99


@dataclass
class FitConfig:
    """Settings of one training run; the CLI maps its options onto these fields."""

    data: Path
    class_name: str
    store: Path = Path("model_store")
    manifest: Path | None = None
    scenario: str = "standard"
    anomalies_per_type: int = 3  # annotated anomalies moved from test to train per defect type
    epochs: int = 200  # the AE-XAD paper trains for 200 epochs
    batch_size: int = 16
    image_size: int = 224  # side of the square network input, a multiple of 8
    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str = "imagenet"  # "imagenet", "none" or a state-dict path
    loss: str = "aexad"  # "mse" trains the plain autoencoder baseline on normal images only
    target_function: str = "constant"  # F(x) = v, or "negative" for F(x) = 1 - x
    target_value: float = 2.0  # v, outside [0, 1]
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    device: str = "auto"
    seed: int = 0
    calibration_fraction: float = 0.1  # share of normal train images held out for the threshold
    plain_copies: int = 5
    cutpaste_copies: int = 10
    cache_features: str = "auto"  # "auto", "yes" or "no"
    cache_limit_gb: float = 4.0  # "auto" caches encoder features when they fit in this many GiB
    country: str = DEFAULT_COUNTRY  # electricity grid for CodeCarbon, ISO 3166-1 alpha-3
    measure_energy: bool = True
    progress: bool = True
    extra_metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    """Output of a training run: the model folder and its metadata."""

    model_dir: Path
    metadata: dict[str, Any]


def validate_config(config: FitConfig) -> None:
    """Raise ``ValueError`` naming the first invalid setting and its valid values."""
    validate_class_name(config.class_name)
    if config.scenario not in SCENARIOS:
        raise ValueError(f"invalid scenario {config.scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if config.loss not in LOSSES:
        raise ValueError(f"invalid loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    if config.target_function not in TARGET_FUNCTIONS:
        raise ValueError(
            f"invalid target function {config.target_function!r}; choose one of {', '.join(TARGET_FUNCTIONS)}"
        )
    if config.target_function == "constant" and 0.0 <= config.target_value <= 1.0:
        raise ValueError(f"--target-value must lie outside [0, 1], got {config.target_value}")
    if config.image_size < 32 or config.image_size % 8:
        raise ValueError(f"--image-size must be a multiple of 8 and at least 32, got {config.image_size}")
    if config.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 2:
        raise ValueError(f"--batch-size must be at least 2, got {config.batch_size}")
    if config.anomalies_per_type < 0:
        raise ValueError(f"--anomalies-per-type must be 0 or more, got {config.anomalies_per_type}")
    if config.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"invalid device {config.device!r}; choose auto, cpu or cuda")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available; use --device cpu")
    if config.cache_features not in ("auto", "yes", "no"):
        raise ValueError(f"invalid cache setting {config.cache_features!r}; choose auto, yes or no")


def resolve_device(name: str) -> torch.device:
    """Map ``auto`` to CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _image_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 array to a (C, H, W) uint8 tensor."""
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def load_training_image(sample: Sample, channels: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Load one image at the network size with its mask (all False for a normal image).

    The image goes through ``prepare_image``, the resizing the exported model
    applies at inference, and back to uint8 for augmentation.

    Returns:
        ``(image, mask)``: ``(size, size, channels)`` uint8 and ``(size, size)`` bool.
    """
    pixels = load_image(sample.image_path, channels)
    height, width = pixels.shape[:2]
    prepared = prepare_image(_image_tensor(pixels), channels, size)  # (C, S, S) in [0, 1]
    image = (prepared * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()

    if sample.mask_path is None:
        return image, np.zeros((size, size), dtype=bool)
    return image, resize_mask(load_mask(sample.mask_path, (width, height)), size)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a bool mask to ``(size, size)``, keeping pixels at least half covered by the defect.

    Nearest-neighbour resizing can drop a defect of a few pixels entirely when
    the image shrinks. When the half-coverage rule leaves nothing, every pixel
    the defect touches is kept instead, so an annotated image stays annotated.
    """
    coverage = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    resized = coverage >= 0.5
    if mask.any() and not resized.any():
        resized = coverage > 0.0
    return resized


def _stack(images: list[np.ndarray], masks: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    image_tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, S, S) uint8
    mask_tensor = torch.from_numpy(np.stack(masks))[:, None]  # (N, 1, S, S) bool
    return image_tensor, mask_tensor


def _load_all(samples: list[Sample], channels: int, size: int, label: str, progress: bool):
    images, masks = [], []
    for sample in tqdm(samples, desc=f"loading {label}", unit="img", disable=not progress, leave=False):
        image, mask = load_training_image(sample, channels, size)
        images.append(image)
        masks.append(mask)
    return images, masks


@torch.no_grad()
def encode_all(network: AEXADNet, images: torch.Tensor, device: torch.device, batch_size: int, progress: bool):
    """Run the frozen encoder once over ``(N, C, S, S)`` uint8 images; returns features on ``device``."""
    features = []
    for start in tqdm(
        range(0, len(images), batch_size), desc="encoding", unit="batch", disable=not progress, leave=False
    ):
        batch = images[start : start + batch_size].to(device, torch.float32) / 255.0
        features.append(network.encode(batch))
    return torch.cat(features)


def _feature_bytes(network: AEXADNet, count: int, size: int, device: torch.device) -> int:
    with torch.no_grad():
        probe = network.encode(torch.zeros(1, network.channels, size, size, device=device))
    return probe.numel() * probe.element_size() * count


def calibrate_threshold(explainer: Explainer, samples: list[Sample], channels: int) -> tuple[float, list[float]]:
    """Score held-out normal images with the inference path; return the threshold and the scores.

    The threshold is the ``THRESHOLD_QUANTILE`` quantile of the scores, or NaN
    when there are no calibration images (anomalies-only scenario).
    """
    scores = []
    explainer.eval()
    for sample in samples:
        pixels = _image_tensor(load_image(sample.image_path, channels))
        scores.append(float(explainer(pixels, 1.0)["score"]))
    if not scores:
        return math.nan, scores
    return float(np.quantile(scores, THRESHOLD_QUANTILE)), scores


def _target_settings(config: FitConfig) -> tuple[int, float, dict[str, Any]]:
    if config.loss == "mse":
        return TARGET_NONE, 0.0, {"kind": "none", "note": "plain autoencoder: error clipped to [0, 1]"}
    if config.target_function == "negative":
        return TARGET_NEGATIVE, 0.0, {"kind": "negative", "formula": "F(x) = 1 - x"}
    return TARGET_CONSTANT, float(config.target_value), {"kind": "constant", "value": float(config.target_value)}


def fit(config: FitConfig) -> FitResult:
    """Train one AE-XAD (or plain AE) model and write it to the model store.

    Raises:
        ValueError: An invalid setting.
        DataError: Missing or unreadable data.
        BackboneError: Backbone weights unavailable.
    """
    validate_config(config)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    size = config.image_size
    started = time.perf_counter()

    # Data: split, load at network size, augment the anomalies.
    samples = discover(Path(config.data), config.manifest)
    split = make_split(
        samples,
        scenario=config.scenario,
        anomalies_per_type=config.anomalies_per_type,
        seed=config.seed,
        calibration_fraction=config.calibration_fraction,
    )
    use_anomalies = config.loss == "aexad"
    train_anomalous = split.train_anomalous if use_anomalies else []
    if not split.train_normal and not train_anomalous:
        raise DataError(
            f"no training images in {config.data}: the {config.scenario} scenario with the {config.loss} loss "
            "needs normal images in train/good (the mse loss trains on normal images only)"
        )
    channels = infer_channels(split.train_normal + split.train_anomalous)
    normal_images, normal_masks = _load_all(split.train_normal, channels, size, "normal images", config.progress)
    anomalous_pairs = list(zip(*_load_all(train_anomalous, channels, size, "anomalous images", config.progress)))
    augmented = augment_anomalies(
        anomalous_pairs,
        normal_images,
        rng=rng,
        plain_copies=config.plain_copies,
        cutpaste_copies=config.cutpaste_copies,
    )
    images, masks = _stack(
        normal_images + [image for image, _ in augmented], normal_masks + [mask for _, mask in augmented]
    )
    n_normal, n_anomalous = len(normal_images), len(augmented)
    logger.info(
        "training on %d normal and %d anomalous items (%d annotated images augmented), %dx%d, %d channel(s)",
        n_normal, n_anomalous, len(anomalous_pairs), size, size, channels,
    )

    # Network.
    encoder, encoder_info = build_encoder(config.backbone, weights=config.backbone_weights)
    network = AEXADNet(encoder, encoder_info.channels, channels=channels, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    network.to(device)
    target_kind, target_value, target_metadata = _target_settings(config)

    with track_energy(country=config.country, enabled=config.measure_energy) as energy:
        # The encoder is frozen and the augmented set is fixed, so its features
        # are computed once instead of every epoch when they fit in memory.
        feature_bytes = _feature_bytes(network, len(images), size, device)
        cache = config.cache_features == "yes" or (
            config.cache_features == "auto" and feature_bytes <= config.cache_limit_gb * 2**30
        )
        encoder_seconds = 0.0
        features = None
        if cache:
            tick = time.perf_counter()
            features = encode_all(network, images, device, config.batch_size, config.progress)
            encoder_seconds = time.perf_counter() - tick
            logger.info(
                "cached encoder features: %.0f MiB in %.1f s", feature_bytes / 2**20, encoder_seconds
            )
        else:
            logger.info("encoder features (%.0f MiB) exceed the cache limit; encoding every batch", feature_bytes / 2**20)

        optimizer = torch.optim.Adam(
            [p for p in network.parameters() if p.requires_grad],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        sampler = BalancedBatchSampler(n_normal, n_anomalous, config.batch_size, seed=config.seed)
        network.train()
        epoch_losses: list[float] = []
        decoder_seconds = 0.0
        bar = tqdm(range(1, config.epochs + 1), desc=f"training {config.class_name}", unit="epoch",
                   disable=not config.progress)
        for epoch in bar:
            tick = time.perf_counter()
            total, seen = 0.0, 0
            for batch_indices in sampler:
                index = torch.as_tensor(batch_indices)
                batch = images[index].to(device, torch.float32) / 255.0  # (B, C, S, S)
                batch_masks = masks[index].to(device)  # (B, 1, S, S)
                if features is not None:
                    batch_features = features[index.to(features.device)]
                else:
                    encode_tick = time.perf_counter()
                    batch_features = network.encode(batch)
                    encoder_seconds += time.perf_counter() - encode_tick
                reconstructions = network.decode(batch_features)
                if config.loss == "aexad":
                    loss = aexad_loss(batch, reconstructions, batch_masks,
                                      target_kind=target_kind, target_value=target_value)
                else:
                    loss = mse_loss(batch, reconstructions)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch_indices)
                seen += len(batch_indices)
            elapsed = time.perf_counter() - tick
            decoder_seconds += elapsed
            epoch_losses.append(total / seen)
            bar.set_postfix(loss=f"{epoch_losses[-1]:.4g}", img_s=f"{seen / elapsed:.1f}")
            logger.debug("epoch %d loss %.6g (%.1f s)", epoch, epoch_losses[-1], elapsed)
        bar.close()
        network.eval()

        # Decision threshold from held-out normal images, through the same
        # explanation path the exported model uses.
        explainer = Explainer(network, image_size=size, channels=channels, target_kind=target_kind,
                              target_value=target_value)
        threshold, calibration_scores = calibrate_threshold(explainer, split.calibration_normal, channels)
        explainer.score_threshold = threshold

    training_seconds = time.perf_counter() - started
    if math.isnan(threshold):
        threshold_metadata = {
            "method": "none: no normal images were held out (anomalies-only scenario), so is_anomalous is false",
            "calibration_count": 0,
        }
    else:
        threshold_metadata = {
            "method": f"quantile {THRESHOLD_QUANTILE} of the anomaly scores of held-out normal training images",
            "calibration_count": len(calibration_scores),
            "calibration_score_max": max(calibration_scores),
            "calibration_score_median": float(np.median(calibration_scores)),
        }
    metadata = {
        "input": {"image_size": size, "channels": channels, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        "backbone": {
            "name": encoder_info.name,
            "weights": encoder_info.weights,
            "source": encoder_info.source,
            "sha256": encoder_info.sha256,
            **({"warning": "RANDOM ENCODER WEIGHTS: not pretrained"} if encoder_info.weights == "none" else {}),
        },
        "loss": config.loss,
        "target_function": target_metadata,
        "scenario": config.scenario,
        "anomalies_per_type": config.anomalies_per_type,
        "seed": config.seed,
        "data_root": str(Path(config.data).resolve()),
        "counts": {
            "train_normal": n_normal,
            "train_anomalous": len(anomalous_pairs),
            "augmented_anomalous": n_anomalous,
            "calibration_normal": len(split.calibration_normal),
            "test": len(split.test),
            "empty_masks": split.empty_masks,
        },
        "moved_to_train": list(split.moved),
        "calibration_images": [sample.relative_path for sample in split.calibration_normal],
        "training": {
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "weight_decay": config.weight_decay,
            "final_loss": epoch_losses[-1],
            "loss_history": epoch_losses,
            "seconds": training_seconds,
            "encoder_seconds": encoder_seconds,
            "decoder_seconds": decoder_seconds,
            "cached_features": bool(cache),
            "device": str(device),
            "augmentation": {"plain_copies": config.plain_copies, "cutpaste_copies": config.cutpaste_copies},
        },
        "threshold": threshold_metadata,
        "energy": {"training": energy.to_dict()},
        "metrics": {},
        **config.extra_metadata,
    }
    model_dir = save_model(explainer, metadata, Path(config.store), config.class_name)
    return FitResult(model_dir=model_dir, metadata=metadata)


def config_to_dict(config: FitConfig) -> dict[str, Any]:
    """Return the settings as JSON-friendly values."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()}
