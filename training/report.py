"""Markdown, JSON and PNG output of evaluations and ablations.

Figures are drawn with matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
MARKDOWN_FILE = "report.md"
FIGURE_FOLDER = "figures"
EXAMPLES_FIGURE = "examples.png"
SWEEP_FIGURE = "threshold_sweep.png"
ABLATION_EXAMPLES_FIGURE = "ablation_examples.png"
ABLATION_SWEEP_FIGURE = "ablation_sweep.png"

# Size of one image panel in inches and the resolution of saved figures,
# chosen so a six-row example figure stays well under 1 MB.
_PANEL_INCHES = 1.7
_DPI = 80
_MAP_COLORMAP = "inferno"


# ---------------------------------------------------------------------------
# Formatting


def fmt(value: Any, digits: int = 3) -> str:
    """Format a number for a Markdown table: ``–`` for missing, ``∞`` for infinite."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return "∞" if value == "inf" else value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if math.isnan(value):
        return "–"
    return f"{value:.{digits}f}"


def fmt_energy(value: Any) -> str:
    """Format grams or kWh with three significant digits."""
    if value is None:
        return "–"
    return f"{value:.3g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Return a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _write_json(path: Path, report: dict[str, Any]) -> None:
    from training.evaluate import json_ready

    path.write_text(json.dumps(json_ready(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                    encoding="utf-8")


# ---------------------------------------------------------------------------
# Figures


def _show_image(axis: Any, pixels: np.ndarray) -> None:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    axis.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255 if pixels.dtype == np.uint8 else 1)


def _show_map(axis: Any, values: np.ndarray) -> None:
    # Each map is scaled to its own maximum: the mask rule is relative to the
    # map's own mean and spread, so its shape matters, not its absolute level.
    axis.imshow(values, cmap=_MAP_COLORMAP, vmin=0.0, vmax=max(float(values.max()), 1e-6))


def _show_mask(axis: Any, mask: np.ndarray | None, shape: tuple[int, int]) -> None:
    axis.imshow(np.zeros(shape, dtype=bool) if mask is None else mask, cmap="gray", vmin=0, vmax=1)


def _image_grid(rows: int, columns: int) -> tuple[Any, np.ndarray]:
    figure, axes = plt.subplots(
        rows, columns, figsize=(columns * _PANEL_INCHES, rows * _PANEL_INCHES + 0.4), squeeze=False
    )
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    return figure, axes


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def plot_examples(examples: list[Any], path: Path, methods: dict[str, str]) -> None:
    """Draw one row per example: input, reconstruction, normalised error, heatmap, binary mask, ground truth."""
    titles = ["input", "reconstruction", f"error ({methods['error']})", f"heatmap ({methods['heatmap']})",
              "binary mask (a = 1)", "ground truth"]
    figure, axes = _image_grid(len(examples), len(titles))
    for column, title in enumerate(titles):
        axes[0, column].set_title(title, fontsize=8)
    for row, example in enumerate(examples):
        _show_image(axes[row, 0], example.image)
        _show_image(axes[row, 1], example.reconstruction)
        _show_map(axes[row, 2], example.error)
        _show_map(axes[row, 3], example.heatmap)
        _show_mask(axes[row, 4], example.mask, example.heatmap.shape)
        _show_mask(axes[row, 5], example.ground_truth, example.heatmap.shape)
        axes[row, 0].set_ylabel(example.defect_type, fontsize=8)
    _save(figure, path)


def plot_sweep(sweeps: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Draw mean F1 and IoU against the threshold multiplier a, one line per map or method."""
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.2), squeeze=False)
    for column, metric in enumerate(("f1", "iou")):
        axis = axes[0, column]
        for name, sweep in sweeps.items():
            points = [(entry["a"], entry[metric]) for entry in sweep if entry[metric] is not None]
            if points:
                axis.plot(*zip(*points), marker="o", label=name)
        axis.set_xlabel("threshold multiplier a")
        axis.set_ylabel(f"mean {metric.upper()}")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    _save(figure, path)


def plot_ablation_examples(ae_examples: list[Any], aexad_examples: list[Any], path: Path) -> None:
    """Draw one row per example: input, ground truth and the maps of the four ablation methods."""
    titles = ["input", "ground truth", "AE", "AE ∪ F", "AE-XAD \\ F", "AE-XAD", "AE-XAD mask (a = 1)"]
    ae_by_path = {example.relative_path: example for example in ae_examples}
    pairs = [(ae_by_path[example.relative_path], example) for example in aexad_examples
             if example.relative_path in ae_by_path]
    figure, axes = _image_grid(max(len(pairs), 1), len(titles))
    for column, title in enumerate(titles):
        axes[0, column].set_title(title, fontsize=8)
    for row, (ae, aexad) in enumerate(pairs):
        _show_image(axes[row, 0], aexad.image)
        _show_mask(axes[row, 1], aexad.ground_truth, aexad.heatmap.shape)
        _show_map(axes[row, 2], ae.error)
        _show_map(axes[row, 3], ae.heatmap)
        _show_map(axes[row, 4], aexad.error)
        _show_map(axes[row, 5], aexad.heatmap)
        _show_mask(axes[row, 6], aexad.mask, aexad.heatmap.shape)
        axes[row, 0].set_ylabel(aexad.defect_type, fontsize=8)
    _save(figure, path)


# ---------------------------------------------------------------------------
# Evaluation report


def _pixel_table(summary: dict[str, Any]) -> str:
    rows = [[name, str(values["images"]), fmt(values["auc"]), fmt(values["f1"]), fmt(values["iou"])]
            for name, values in summary["by_defect"].items()]
    whole = summary["class"]
    rows.append(["**all**", str(whole["images"]), f"**{fmt(whole['auc'])}**", f"**{fmt(whole['f1'])}**",
                 f"**{fmt(whole['iou'])}**"])
    return table(["defect type", "images", "pixel AUC", "F1", "IoU"], rows)


def _settings_rows(model: dict[str, Any]) -> list[list[str]]:
    target = model.get("target_function") or {}
    return [
        ["model folder", f"`{model['dir']}`"],
        ["loss", str(model["loss"])],
        ["target function", ", ".join(f"{key} {value}" for key, value in target.items()) or "–"],
        ["backbone", f"{model['backbone']} ({model['backbone_weights']} weights)"],
        ["scenario", f"{model['scenario']}, {model['anomalies_per_type']} anomalous images per defect type"],
        ["seed", fmt(model["seed"])],
        ["image size", f"{model['image_size']} × {model['image_size']}, {model['channels']} channel(s)"],
        ["epochs", fmt(model["epochs"])],
        ["batch size, learning rate, weight decay",
         f"{model['batch_size']}, {model['learning_rate']}, {model['weight_decay']}"],
        ["final training loss", fmt(model["final_loss"], 4)],
        ["training time", f"{fmt(model['training_seconds'], 0)} s on {model['training_device']}"],
    ]


def _energy_section(energy: dict[str, Any], tradeoff: dict[str, Any] | None) -> list[str]:
    lines = ["## Energy", ""]
    rows = []
    for phase in ("training", "evaluation"):
        record = energy.get(phase) or {}
        measured = bool(record) and not str(record.get("note", "")).startswith("not measured")
        rows.append([phase, fmt(record.get("seconds"), 0), fmt_energy(record.get("kwh") if measured else None),
                     fmt_energy(record.get("emissions_grams") if measured else None),
                     record.get("note") or "not recorded"])
    rows.append(["**total**", "", fmt_energy(energy.get("total_kwh")), fmt_energy(energy.get("total_grams")), ""])
    lines.append(table(["phase", "seconds", "kWh", "g CO₂eq", "measurement"], rows))
    country = (energy.get("evaluation") or {}).get("country")
    lines += ["", f"CodeCarbon's offline tracker with the carbon intensity of the {country} grid."]
    if energy.get("estimated"):
        lines.append("The CPU power counters were unreadable, so CodeCarbon estimated the power from the CPU load "
                     "and a default TDP: the energy figures are estimates.")
    if energy.get("total_grams") is None:
        lines += ["", "The trade-off scores need the energy of both training and evaluation, so they are not computed."]
    elif tradeoff is not None:
        lines += [
            "",
            "Trade-off score T(m) = E / (m / (1 − m)), with E the grams of CO₂eq of training plus evaluation "
            "and m the class-level metric (lower is better, ∞ when m = 0, 0 when m = 1):",
            "",
            table(["metric", "T(m)"], [[name, fmt(value, 4)] for name, value in tradeoff.items()]),
        ]
    return lines


def render_evaluation(report: dict[str, Any]) -> str:
    """Render an evaluation report as Markdown."""
    model, data, detection = report["model"], report["data"], report["detection"]
    methods = report["methods"]
    lines = [
        f"# Evaluation of {model['class_name']} ({methods['heatmap']})",
        "",
        f"Evaluated {report['evaluated_at']} on `{data['root']}`: {data['test_images']} test images "
        f"({detection['normal']} normal, {detection['anomalous']} anomalous). Left out: "
        f"{data['left_out']['trained_on']} images the model trained on and {data['left_out']['calibration']} "
        "calibration images.",
        f"{data['empty_masks']} anomalous images have an empty mask and {data['full_masks']} a mask that covers "
        "the whole image; they count for detection but not for pixel metrics.",
        "",
        f"## Explanation quality: {methods['heatmap']} (filtered heatmap)",
        "",
        "Per-image pixel ROC AUC of the heatmap, and F1 and IoU of the binary mask "
        "`h > mean(h) + a·std(h)` at a = 1, averaged over the anomalous images with a mask.",
        "",
        _pixel_table(report["pixel"]["heatmap"]),
        "",
        f"## Explanation quality: {methods['error']} (unfiltered error map)",
        "",
        _pixel_table(report["pixel"]["error"]),
        "",
        "## Threshold sweep",
        "",
    ]
    sweep_rows = []
    for heatmap_entry, error_entry in zip(report["pixel"]["heatmap"]["sweep"], report["pixel"]["error"]["sweep"]):
        sweep_rows.append([fmt(heatmap_entry["a"], 1), fmt(heatmap_entry["f1"]), fmt(heatmap_entry["iou"]),
                           fmt(error_entry["f1"]), fmt(error_entry["iou"])])
    lines += [
        table(["a", f"F1 {methods['heatmap']}", f"IoU {methods['heatmap']}", f"F1 {methods['error']}",
               f"IoU {methods['error']}"], sweep_rows),
        "",
        f"![F1 and IoU against a]({FIGURE_FOLDER}/{SWEEP_FIGURE})",
        "",
        "## Detection",
        "",
        f"Image-level ROC AUC of the anomaly score: **{fmt(detection['auc'])}** "
        f"({detection['normal']} normal, {detection['anomalous']} anomalous images).",
        "",
    ]
    if detection["decision"] is None:
        lines.append(f"Decision threshold: none. {detection['note'].capitalize()}.")
    else:
        decision = detection["decision"]
        lines += [
            f"Decision threshold on the score: {fmt(detection['threshold'], 5)} "
            f"({(model.get('threshold') or {}).get('method', 'method not recorded')}).",
            "",
            table(["accuracy", "precision", "recall", "TP", "FP", "TN", "FN"],
                  [[fmt(decision["accuracy"]), fmt(decision["precision"]), fmt(decision["recall"]),
                    str(decision["true_positive"]), str(decision["false_positive"]),
                    str(decision["true_negative"]), str(decision["false_negative"])]]),
        ]
    timing = report["timing"]
    lines += [
        "",
        "## Timings",
        "",
        table(["step", "value"], [
            ["training", f"{fmt(model['training_seconds'], 0)} s on {model['training_device']}"],
            ["evaluation, total", f"{fmt(timing['seconds'], 1)} s"],
            ["model time per image", f"{fmt(timing['model_ms_per_image'], 1)} ms on {timing['device']} "
                                     f"(batches of {timing['batch_size']})"],
        ]),
        "",
        *_energy_section(report["energy"], report.get("tradeoff")),
        "",
        "## Examples",
        "",
        f"![input, reconstruction, error, heatmap, mask, ground truth]({FIGURE_FOLDER}/{EXAMPLES_FIGURE})",
        "",
        "## Settings",
        "",
        table(["setting", "value"], _settings_rows(model)),
        "",
    ]
    return "\n".join(lines)


def write_evaluation_report(report: dict[str, Any], examples: list[Any], report_dir: Path) -> None:
    """Write ``report.json``, ``report.md`` and the figures of one evaluation into ``report_dir``."""
    figures = Path(report_dir) / FIGURE_FOLDER
    figures.mkdir(parents=True, exist_ok=True)
    if examples:
        plot_examples(examples, figures / EXAMPLES_FIGURE, report["methods"])
    methods = report["methods"]
    plot_sweep({methods[key]: report["pixel"][key]["sweep"] for key in ("heatmap", "error")}, figures / SWEEP_FIGURE)
    _write_json(Path(report_dir) / REPORT_FILE, report)
    (Path(report_dir) / MARKDOWN_FILE).write_text(render_evaluation(report), encoding="utf-8")


# ---------------------------------------------------------------------------
# Ablation report


def _ablation_quality(report: dict[str, Any]) -> list[str]:
    methods = list(report["methods"])
    lines = [
        "## Class means",
        "",
        table(["method", "pixel AUC", "F1", "IoU"],
              [[name, fmt(row["class"]["auc"]), fmt(row["class"]["f1"]), fmt(row["class"]["iou"])]
               for name, row in report["methods"].items()]),
        "",
        "## Per defect type",
        "",
        "Each cell: pixel AUC / F1 / IoU.",
        "",
    ]
    rows = []
    for name, values in report["methods"]["AE-XAD"]["by_defect"].items():
        cells = []
        for method in methods:
            entry = report["methods"][method]["by_defect"][name]
            cells.append(f"{fmt(entry['auc'])} / {fmt(entry['f1'])} / {fmt(entry['iou'])}")
        rows.append([name, str(values["images"]), *cells])
    lines += [table(["defect type", "images", *methods], rows), ""]
    return lines


def _ablation_wins(report: dict[str, Any]) -> list[str]:
    methods = list(report["methods"])
    lines = [
        "## Probability of winning",
        "",
        "Share of images on which the row method's metric is strictly greater than the column method's "
        "(ties count as no win). The F1 and IoU tables agree because an image's IoU is F1 / (2 − F1), "
        "which preserves the order.",
        "",
    ]
    for metric in ("auc", "f1", "iou"):
        matrix = report["wins"][metric]
        rows = []
        for first in methods:
            cells = ["–" if first == second else fmt(matrix[first][second]["probability"], 2) for second in methods]
            rows.append([first, *cells])
        title = "pixel AUC" if metric == "auc" else metric.upper()
        lines += [f"**{title}**", "", table(["", *methods], rows), ""]
    return lines


def _ablation_sweep(report: dict[str, Any]) -> list[str]:
    methods = list(report["methods"])
    rows = []
    for index, multiplier in enumerate(report["multipliers"]):
        cells = []
        for method in methods:
            entry = report["sweep"][method][index]
            cells.append(f"{fmt(entry['f1'])} / {fmt(entry['iou'])}")
        rows.append([fmt(multiplier, 1), *cells])
    return [
        "## Threshold sweep",
        "",
        "Each cell: mean F1 / IoU.",
        "",
        table(["a", *methods], rows),
        "",
        f"![F1 and IoU against a]({FIGURE_FOLDER}/{ABLATION_SWEEP_FIGURE})",
        "",
    ]


def _ablation_costs(report: dict[str, Any]) -> list[str]:
    detection_rows, cost_rows = [], []
    for name, model in report["models"].items():
        decision = model["detection"]["decision"]
        if decision:
            decision_cells = [fmt(decision[key]) for key in ("accuracy", "precision", "recall")]
        else:
            decision_cells = ["no threshold"] * 3
        detection_rows.append([name, fmt(model["detection"]["auc"]), *decision_cells])
        energy = model["energy"]
        cost_rows.append([name, fmt(model["model"]["epochs"]), fmt(model["model"]["training_seconds"], 0),
                          fmt(model["timing"]["seconds"], 0), fmt_energy(energy["total_kwh"]),
                          fmt_energy(energy["total_grams"]), (energy.get("evaluation") or {}).get("note", "")])
    return [
        "## Detection",
        "",
        table(["model", "image AUC", "accuracy", "precision", "recall"], detection_rows),
        "",
        "## Timings and energy",
        "",
        table(["model", "epochs", "training s", "evaluation s", "kWh", "g CO₂eq", "measurement"], cost_rows),
        "",
        "Energy covers training plus evaluation of each model.",
        "",
        *_ablation_tradeoff(report),
    ]


def _ablation_tradeoff(report: dict[str, Any]) -> list[str]:
    from training.metrics import tradeoff_score

    # AE and AE ∪ F come from the MSE model, the other two from the AE-XAD model.
    model_of = {"AE": "AE", "AE ∪ F": "AE", "AE-XAD \\ F": "AE-XAD", "AE-XAD": "AE-XAD"}
    rows = []
    for method, row in report["methods"].items():
        grams = report["models"][model_of[method]]["energy"]["total_grams"]
        cells = []
        for metric in ("auc", "f1", "iou"):
            value = row["class"][metric]
            cells.append("–" if grams is None or value is None else fmt(tradeoff_score(grams, value), 4))
        rows.append([method, *cells])
    return [
        "Trade-off score T(m) = E / (m / (1 − m)) with E in grams of CO₂eq of the method's model "
        "(lower is better, ∞ when m = 0):",
        "",
        table(["method", "T(pixel AUC)", "T(F1)", "T(IoU)"], rows),
        "",
    ]


def render_ablation(report: dict[str, Any]) -> str:
    """Render an ablation report as Markdown."""
    ae, aexad = report["models"]["AE"], report["models"]["AE-XAD"]
    settings = [[row_ae[0], row_ae[1], row_aexad[1]]
                for row_ae, row_aexad in zip(_settings_rows(ae["model"]), _settings_rows(aexad["model"]))]
    lines = [
        f"# Ablation on {report['class_name']}: AE against AE-XAD ({report['scenario']} scenario)",
        "",
        f"{report['images']} anomalous test images with a mask, the same for every method. "
        "AE is the same network trained with the MSE loss on normal images; AE ∪ F is its error clipped to [0, 1] "
        "and Gaussian-filtered like AE-XAD's; AE-XAD \\ F is AE-XAD's normalised error without the filter. "
        "F1 and IoU are those of the mask `map > mean + a·std` at a = 1.",
        "",
        *[f"NOTE: {note}" for note in report["notes"]],
        "",
        *_ablation_quality(report),
        *_ablation_wins(report),
        *_ablation_sweep(report),
        *_ablation_costs(report),
        "## Examples",
        "",
        f"![input, ground truth and the four methods' maps]({FIGURE_FOLDER}/{ABLATION_EXAMPLES_FIGURE})",
        "",
        "## Settings",
        "",
        table(["setting", "AE", "AE-XAD"], settings),
        "",
        f"Each model's own evaluation report: `{ae['report']}/{MARKDOWN_FILE}`, `{aexad['report']}/{MARKDOWN_FILE}`.",
        "",
    ]
    return "\n".join(lines)


def rerender_from_json(report_dir: Path) -> None:
    """Write ``report.md`` and the sweep figure again from ``report.json``, for example after a layout change.

    The example figure is left as it is, because drawing it needs the maps,
    which ``report.json`` does not store.
    """
    report_dir = Path(report_dir)
    report = json.loads((report_dir / REPORT_FILE).read_text(encoding="utf-8"))
    if report.get("kind") == "ablation":
        plot_sweep(report["sweep"], report_dir / FIGURE_FOLDER / ABLATION_SWEEP_FIGURE)
        markdown = render_ablation(report)
    else:
        methods = report["methods"]
        sweeps = {methods[key]: report["pixel"][key]["sweep"] for key in ("heatmap", "error")}
        plot_sweep(sweeps, report_dir / FIGURE_FOLDER / SWEEP_FIGURE)
        markdown = render_evaluation(report)
    (report_dir / MARKDOWN_FILE).write_text(markdown, encoding="utf-8")


def write_ablation_report(
    report: dict[str, Any], ae_examples: list[Any], aexad_examples: list[Any], report_dir: Path
) -> None:
    """Write ``report.json``, ``report.md`` and the figures of an ablation into ``report_dir``."""
    figures = Path(report_dir) / FIGURE_FOLDER
    figures.mkdir(parents=True, exist_ok=True)
    if aexad_examples:
        plot_ablation_examples(ae_examples, aexad_examples, figures / ABLATION_EXAMPLES_FIGURE)
    plot_sweep(report["sweep"], figures / ABLATION_SWEEP_FIGURE)
    _write_json(Path(report_dir) / REPORT_FILE, report)
    (Path(report_dir) / MARKDOWN_FILE).write_text(render_ablation(report), encoding="utf-8")
