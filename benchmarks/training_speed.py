"""Measure training speed and the explanation head's cost on a real data set.

Prints a Markdown table with:

* the frozen encoder's time for one pass over the augmented training set (paid
  once with feature caching, every epoch without it);
* the decoder's time per epoch (forward, backward and optimiser step);
* the explanation head's time per image against the network's forward time,
  both on the exported TorchScript model.

Usage::

    python benchmarks/training_speed.py --data ../shared/datasets/magnetic_tile --image-size 224
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training.augment import BalancedBatchSampler, augment_anomalies
from training.backbones import DEFAULT_BACKBONE, IMAGENET_MEAN, IMAGENET_STD, build_encoder
from training.data import discover, infer_channels, load_image, make_split
from training.explain import TARGET_CONSTANT, prepare_image
from training.explainer import Explainer
from training.export import load_module, save_model
from training.loss import aexad_loss
from training.model import AEXADNet
from training.train import _image_tensor, _load_all, _stack, encode_all


def measure_training(args, channels, images, masks, n_normal, n_anomalous):
    encoder, info = build_encoder(args.backbone, weights="imagenet")
    network = AEXADNet(encoder, info.channels, channels=channels, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    tick = time.perf_counter()
    features = encode_all(network, images, torch.device("cpu"), args.batch_size, progress=False)
    encoder_seconds = time.perf_counter() - tick

    optimizer = torch.optim.Adam(
        [p for p in network.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4
    )
    sampler = BalancedBatchSampler(n_normal, n_anomalous, args.batch_size, seed=0)
    network.train()
    epoch_seconds = []
    for _ in range(args.epochs):
        tick = time.perf_counter()
        for batch_indices in sampler:
            index = torch.as_tensor(batch_indices)
            batch = images[index].float() / 255.0
            loss = aexad_loss(batch, network.decode(features[index]), masks[index],
                              target_kind=TARGET_CONSTANT, target_value=2.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - tick)
    network.eval()
    items_per_epoch = len(sampler) * args.batch_size
    return network, encoder_seconds, epoch_seconds, items_per_epoch


def measure_head(args, network, channels, test_samples):
    """Time the exported model's parts on each test image, interleaved so load changes hit all alike.

    The head is everything but the network: preparing the input (conversion,
    resizing) and ``explain_prepared`` (error map, filter size, heatmap,
    score, resizing to the input size, mask).
    """
    explainer = Explainer(network, image_size=args.image_size, channels=channels,
                          target_kind=TARGET_CONSTANT, target_value=2.0, score_threshold=1.0)
    with tempfile.TemporaryDirectory() as store:
        model = load_module(save_model(explainer, {}, Path(store), "bench"))
        pictures = [_image_tensor(load_image(sample.image_path, channels)) for sample in test_samples]

        network_times, head_times, total_times = [], [], []
        with torch.no_grad():
            for picture in pictures * 2:
                height, width = picture.shape[-2:]
                tick = time.perf_counter()
                prepared = prepare_image(picture, channels, args.image_size)
                prepare_seconds = time.perf_counter() - tick

                tick = time.perf_counter()
                reconstruction = model.network(prepared[None])[0]
                network_times.append(time.perf_counter() - tick)

                tick = time.perf_counter()
                model.explain_prepared(prepared, reconstruction, height, width, 1.0)
                head_times.append(prepare_seconds + time.perf_counter() - tick)

                tick = time.perf_counter()
                model(picture, 1.0)
                total_times.append(time.perf_counter() - tick)
    return (statistics.median(network_times) * 1000, statistics.median(head_times) * 1000,
            statistics.median(total_times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="data set folder (MVTec AD layout)")
    parser.add_argument("--image-size", type=int, default=224, help="network input side in pixels")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs to time")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="encoder name")
    parser.add_argument("--head-images", type=int, default=30, help="test images timed for the head")
    args = parser.parse_args()
    torch.manual_seed(0)

    samples = discover(args.data)
    split = make_split(samples, scenario="standard", anomalies_per_type=3, seed=0)
    channels = infer_channels(split.train_normal + split.train_anomalous)
    tick = time.perf_counter()
    normal_images, normal_masks = _load_all(split.train_normal, channels, args.image_size, "normal", False)
    anomalous = list(zip(*_load_all(split.train_anomalous, channels, args.image_size, "anomalous", False)))
    augmented = augment_anomalies(anomalous, normal_images, rng=np.random.default_rng(0))
    images, masks = _stack(normal_images + [i for i, _ in augmented], normal_masks + [m for _, m in augmented])
    loading_seconds = time.perf_counter() - tick

    network, encoder_seconds, epoch_seconds, items = measure_training(
        args, channels, images, masks, len(normal_images), len(augmented)
    )
    network_ms, head_ms, total_ms = measure_head(args, network, channels, split.test[: args.head_images])
    decoder_epoch = statistics.median(epoch_seconds)

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    print(f"data: {args.data}, {len(images)} training items ({len(normal_images)} normal, "
          f"{len(augmented)} augmented anomalous), {args.image_size} px, backbone {args.backbone}\n")
    print("| measurement | value |")
    print("| --- | --- |")
    print(f"| loading and augmenting the training set (once) | {loading_seconds:.1f} s |")
    print(f"| encoder, one pass over the training set | {encoder_seconds:.1f} s |")
    print(f"| decoder, one epoch ({items} items, median of {len(epoch_seconds)}) | {decoder_epoch:.1f} s |")
    print(f"| epoch with cached features | {decoder_epoch:.1f} s |")
    print(f"| epoch without caching (encoder + decoder) | {decoder_epoch + encoder_seconds * items / len(images):.1f} s |")
    print(f"| network forward, one image (median) | {network_ms:.1f} ms |")
    print(f"| whole model call, one image (median) | {total_ms:.1f} ms |")
    print(f"| explanation head with input preparation, one image (median) | {head_ms:.1f} ms |")
    print(f"| head time / network time | {head_ms / network_ms:.1%} |")


if __name__ == "__main__":
    main()
