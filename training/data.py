"""Discover, load and split the images and ground-truth masks of one class.

Two input layouts are supported:

* The MVTec AD folder layout, also used by BTAD-style data sets::

      <root>/train/good/*.png              normal training images
      <root>/test/good/*.png               normal test images
      <root>/test/<defect>/*.png           anomalous test images
      <root>/ground_truth/<defect>/<stem>_mask.png

* A CSV manifest with the columns ``image,mask,split`` and an optional
  ``defect_type`` column, described in :func:`discover`.

AE-XAD trains on the normal training images plus a few annotated anomalous
images per defect type that :func:`make_split` moves out of the test set.
"""

from __future__ import annotations

import csv
import logging
import os
import zlib
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SCENARIOS = ("standard", "anomalies-only")
NORMAL_DEFECT_TYPE = "good"

# PIL modes whose pixels carry one value each. Palette modes are checked
# separately because their palette may hold colours.
_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


class DataError(Exception):
    """Invalid input data: a missing folder or file, an unreadable image, a bad manifest row."""


@dataclass(frozen=True)
class Sample:
    """One image of the data set with its ground truth.

    Attributes:
        image_path: Path of the image file.
        mask_path: Path of the ground-truth mask, or None for a normal image.
        label: 0 for a normal image, 1 for an anomalous one.
        defect_type: Name of the defect type, ``"good"`` for a normal image.
        split: ``"train"`` or ``"test"``, as given by the layout or manifest.
        relative_path: Image path relative to the data root with ``/``
            separators, as written to the model metadata.
    """

    image_path: Path
    mask_path: Path | None
    label: int
    defect_type: str
    split: str
    relative_path: str


@dataclass(frozen=True)
class Split:
    """Training, calibration and test sets built by :func:`make_split`.

    Attributes:
        train_normal: Normal images used for training.
        train_anomalous: Annotated anomalous images moved from the test set
            into training.
        calibration_normal: Normal training images held out of training to
            calibrate the image-level decision threshold. Empty in the
            anomalies-only scenario.
        test: Test images minus the moved ones.
        moved: Relative paths of the images in ``train_anomalous``.
        empty_masks: Number of anomalous images whose mask is all zero. These
            stay in ``test`` and are never chosen for training.
    """

    train_normal: list[Sample]
    train_anomalous: list[Sample]
    calibration_normal: list[Sample]
    test: list[Sample]
    moved: list[str]
    empty_masks: int


# ---------------------------------------------------------------------------
# Discovery


def discover(root: Path, manifest: Path | None = None) -> list[Sample]:
    """List the samples of a data set in the MVTec AD layout or a CSV manifest.

    In the MVTec AD layout, only ``train/good`` is read from ``train/``. Every
    image in ``test/<defect>`` other than ``test/good`` must have a mask at
    ``ground_truth/<defect>/<stem>_mask.<ext>``, PNG preferred.

    A manifest is read when ``manifest`` is given or when ``root`` is a
    ``.csv`` file. Its folder is then the data root: the ``image`` and ``mask``
    paths are relative to it (absolute paths work too), and so is each
    sample's ``relative_path``. ``root`` is not used for paths in that case.
    A manifest row is interpreted as follows:

    * ``split`` is ``train`` or ``test``.
    * An empty ``mask`` with an empty or ``good`` ``defect_type`` is a normal
      image.
    * A non-empty ``mask`` is an anomalous image, and its ``defect_type``
      defaults to ``defect`` when empty.
    * An empty ``mask`` with another ``defect_type``, or a mask on a ``good``
      row, is rejected, because an anomalous image needs a mask file (which
      may be all zero) and a normal image has none.
    * Anomalous rows must be in the test split, because :func:`make_split`
      chooses which of them move into training.

    Args:
        root: Data set folder, or a CSV manifest file.
        manifest: CSV manifest; overrides the folder layout when given.

    Returns:
        The samples, sorted by ``relative_path``.

    Raises:
        DataError: A folder, image, mask or manifest column is missing, or a
            manifest row is invalid.
    """
    root = Path(root)
    if manifest is None and root.suffix.lower() == ".csv":
        manifest = root
    if manifest is not None:
        samples = _read_manifest(Path(manifest))
    else:
        samples = _read_folder_layout(root)
    samples.sort(key=lambda sample: sample.relative_path)
    logger.info(
        "Found %d images (%d anomalous) in %s",
        len(samples),
        sum(sample.label for sample in samples),
        manifest if manifest is not None else root,
    )
    return samples


def _list_images(folder: Path) -> list[Path]:
    # Hidden files such as macOS "._x.png" resource forks are not images.
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def _find_mask(mask_folder: Path, stem: str) -> Path | None:
    preferred = mask_folder / f"{stem}_mask.png"
    if preferred.is_file():
        return preferred
    if not mask_folder.is_dir():
        return None
    for path in _list_images(mask_folder):
        if path.stem == f"{stem}_mask":
            return path
    return None


def _read_folder_layout(root: Path) -> list[Sample]:
    if not root.is_dir():
        raise DataError(
            f"data folder not found: {root}; pass a folder with train/ and test/ (MVTec AD layout) or a CSV manifest"
        )
    test_folder = root / "test"
    if not test_folder.is_dir():
        raise DataError(f"test folder not found: {test_folder}; the MVTec AD layout needs test/<defect>/ folders")

    samples: list[Sample] = []
    train_folder = root / "train"
    good_folder = train_folder / NORMAL_DEFECT_TYPE
    if good_folder.is_dir():
        for path in _list_images(good_folder):
            samples.append(_make_sample(root, path, None, NORMAL_DEFECT_TYPE, "train"))
    else:
        # Allowed here because the anomalies-only scenario needs no normal
        # images; make_split rejects the standard scenario without them.
        logger.warning("Normal training folder not found: %s", good_folder)
    if train_folder.is_dir():
        for extra in sorted(p.name for p in train_folder.iterdir() if p.is_dir() and p.name != NORMAL_DEFECT_TYPE):
            logger.warning("Ignoring %s: only train/good is read from train/", train_folder / extra)

    for defect_folder in sorted(p for p in test_folder.iterdir() if p.is_dir()):
        defect_type = defect_folder.name
        images = _list_images(defect_folder)
        if not images:
            logger.warning("No images in %s", defect_folder)
        for path in images:
            if defect_type == NORMAL_DEFECT_TYPE:
                samples.append(_make_sample(root, path, None, defect_type, "test"))
                continue
            mask_folder = root / "ground_truth" / defect_type
            mask_path = _find_mask(mask_folder, path.stem)
            if mask_path is None:
                raise DataError(
                    f"mask not found for {path}: expected {mask_folder / (path.stem + '_mask.png')}; "
                    "add the mask (all zero if the defect is not annotated) or remove the image"
                )
            samples.append(_make_sample(root, path, mask_path, defect_type, "test"))
    return samples


def _make_sample(root: Path, image_path: Path, mask_path: Path | None, defect_type: str, split: str) -> Sample:
    relative = Path(os.path.relpath(image_path, root)).as_posix()
    return Sample(
        image_path=image_path,
        mask_path=mask_path,
        label=0 if mask_path is None else 1,
        defect_type=defect_type,
        split=split,
        relative_path=relative,
    )


def _read_manifest(manifest: Path) -> list[Sample]:
    if not manifest.is_file():
        raise DataError(f"manifest not found: {manifest}; pass an existing CSV file with columns image,mask,split")
    base = manifest.parent
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in ("image", "mask", "split") if name not in columns]
            if missing:
                raise DataError(
                    f"manifest {manifest} is missing the column(s) {', '.join(missing)}; "
                    "the header must contain image,mask,split (defect_type optional)"
                )
            rows = [{(key or "").strip(): (value or "").strip() for key, value in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read manifest {manifest}: {error}; save it as a UTF-8 CSV file") from error

    samples = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if not any(row.values()):
            continue
        samples.append(_manifest_row_to_sample(manifest, base, line, row))
    if not samples:
        raise DataError(f"manifest {manifest} lists no images; add one row per image below the header")
    return samples


def _manifest_row_to_sample(manifest: Path, base: Path, line: int, row: dict[str, str]) -> Sample:
    where = f"{manifest}, line {line}"
    image_text = row.get("image", "")
    mask_text = row.get("mask", "")
    split = row.get("split", "").lower()
    defect_type = row.get("defect_type", "")
    if defect_type.lower() == NORMAL_DEFECT_TYPE:
        defect_type = NORMAL_DEFECT_TYPE

    if not image_text:
        raise DataError(f"{where}: the image column is empty; give the image path relative to {base}")
    if split not in ("train", "test"):
        raise DataError(f"{where}: invalid split {row.get('split', '')!r}; use 'train' or 'test'")
    image_path = base / image_text
    if not image_path.is_file():
        raise DataError(f"{where}: image not found: {image_path}; fix the path, which is relative to {base}")

    if not mask_text:
        if defect_type not in ("", NORMAL_DEFECT_TYPE):
            raise DataError(
                f"{where}: anomalous image {image_path} (defect_type {defect_type!r}) has no mask; "
                "add a mask path (an all-zero mask if it is not annotated) or set defect_type to good"
            )
        mask_path = None
        defect_type = NORMAL_DEFECT_TYPE
    else:
        if defect_type == NORMAL_DEFECT_TYPE:
            raise DataError(
                f"{where}: normal image {image_path} has a mask; leave the mask empty for a normal image "
                "or give its defect type"
            )
        mask_path = base / mask_text
        if not mask_path.is_file():
            raise DataError(f"{where}: mask not found: {mask_path}; fix the path, which is relative to {base}")
        defect_type = defect_type or "defect"
        if split != "test":
            raise DataError(
                f"{where}: anomalous image {image_path} is in the train split; put it in the test split, "
                "make_split moves the annotated anomalies into training"
            )

    return _make_sample(base, image_path, mask_path, defect_type, split)


# ---------------------------------------------------------------------------
# Loading


@contextmanager
def _image_errors(path: Path) -> Iterator[None]:
    """Turn the errors of PIL and the file system into a DataError naming the file."""
    try:
        yield
    except FileNotFoundError as error:
        raise DataError(f"image not found: {path}; check the path or rerun discovery") from error
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read image {path}: {error}; replace or remove the file") from error


def _open_image(path: Path) -> Image.Image:
    """Open and decode an image, with its EXIF orientation applied.

    Raises:
        DataError: The file is missing, truncated or not an image.
    """
    with _image_errors(path), Image.open(path) as image:
        image.load()  # decode now, so that a truncated file fails here
        return ImageOps.exif_transpose(image)


def _to_uint8_array(image: Image.Image, channels: int) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16-bit gray: map 0..65535 onto 0..255 (65535 / 257 = 255).
        values = np.asarray(image, dtype=np.float64)
        gray = np.round(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        image = Image.fromarray(gray, mode="L")
    elif image.mode == "F":
        # Floating-point images (32-bit TIFF) are taken to be in [0, 1].
        values = np.asarray(image, dtype=np.float64)
        gray = np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        image = Image.fromarray(gray, mode="L")
    elif image.mode in ("P", "PA"):
        # Expand the palette first, so a transparent palette entry drops its
        # alpha like an RGBA image does.
        image = image.convert("RGBA")

    # convert() drops an alpha channel without compositing, and maps RGB to
    # gray with the ITU-R 601-2 luma weights.
    image = image.convert("L" if channels == 1 else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    if channels == 1:
        array = array[:, :, np.newaxis]
    return np.ascontiguousarray(array)


def load_image(path: Path, channels: int) -> np.ndarray:
    """Load an image as 8-bit pixels with a fixed number of channels.

    Grayscale, RGB, RGBA, palette and 16-bit files are accepted. The EXIF
    orientation is applied, alpha is dropped and 16-bit values are scaled to
    0..255.

    Args:
        path: Image file.
        channels: 1 for grayscale output, 3 for RGB output.

    Returns:
        Array shaped ``(height, width, channels)``, dtype uint8.

    Raises:
        DataError: The file is missing or cannot be decoded.
        ValueError: ``channels`` is not 1 or 3.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return _to_uint8_array(_open_image(Path(path)), channels)


def _read_binary_mask(path: Path) -> np.ndarray:
    """Read a mask at its own size, binarised at half of its value range."""
    image = _open_image(Path(path))
    if image.mode == "1":
        return np.asarray(image, dtype=bool)
    if image.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image, dtype=np.int64) >= 32768
    if image.mode == "F":
        return np.asarray(image, dtype=np.float64) >= 0.5
    if image.mode in ("L", "LA", "La"):
        return np.asarray(image.getchannel(0), dtype=np.uint8) >= 128
    # Colour and palette masks: a pixel is set when any colour channel is, so
    # a pure red or blue annotation counts although its luma is below 128.
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return rgb.max(axis=2) >= 128


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Load a ground-truth mask as a boolean array at the size of its image.

    Values are binarised at half of the value range: 128 for 8-bit masks,
    32768 for 16-bit masks, so soft JPEG-like edges do not blur the mask.
    For colour masks, the maximum over the colour channels is compared.

    Args:
        path: Mask file.
        size: ``(width, height)`` of the image the mask belongs to. A mask of
            another size is resized with nearest-neighbour interpolation.

    Returns:
        Array shaped ``(height, width)``, dtype bool.

    Raises:
        DataError: The file is missing or cannot be decoded.
    """
    mask = _read_binary_mask(Path(path))
    width, height = size
    if mask.shape != (height, width):
        logger.debug("Resizing mask %s from %s to %dx%d", path, mask.shape[::-1], width, height)
        resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        mask = resized.astype(bool)
    return mask


def _is_grayscale_file(path: Path) -> bool:
    # Reads only the header and palette, not the pixels.
    with _image_errors(path), Image.open(path) as image:
        mode = image.mode
        palette = image.getpalette() if mode in ("P", "PA") else None
    if mode in _GRAYSCALE_MODES:
        return True
    if palette is not None:
        entries = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        return bool((entries[:, 0] == entries[:, 1]).all() and (entries[:, 1] == entries[:, 2]).all())
    return False


def infer_channels(samples: list[Sample]) -> int:
    """Choose the channel count of the model from its training images.

    The decision uses each file's pixel mode, not its content: an RGB file
    whose pixels happen to be gray counts as colour.

    Args:
        samples: The training images, for example ``train_normal`` plus
            ``train_anomalous`` of a :class:`Split`.

    Returns:
        1 if every image is grayscale (including 16-bit gray and palettes of
        grays), else 3.

    Raises:
        DataError: An image cannot be read.
        ValueError: ``samples`` is empty.
    """
    if not samples:
        raise ValueError("infer_channels needs at least one sample")
    return 1 if all(_is_grayscale_file(sample.image_path) for sample in samples) else 3


# ---------------------------------------------------------------------------
# Splitting


def _data_root_hint(samples: list[Sample]) -> str:
    """Return the data root shared by the samples, for error messages."""
    for sample in samples:
        relative_parts = PurePosixPath(sample.relative_path).parts
        image_parts = sample.image_path.parts
        if ".." not in relative_parts and image_parts[-len(relative_parts) :] == relative_parts:
            return str(Path(*image_parts[: -len(relative_parts)]))
    return "the data root"


def _stream_rng(seed: int, name: str) -> np.random.Generator:
    # One independent stream per purpose and defect type, so adding a defect
    # type does not change which images another type moves.
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def _choose_calibration(normals: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    count = int(round(fraction * len(normals)))
    if fraction > 0 and len(normals) >= 2:
        # At least one image to calibrate on, and at least one to train on.
        count = min(max(count, 1), len(normals) - 1)
    else:
        count = 0
    order = _stream_rng(seed, "calibration").permutation(len(normals))
    held_out = {int(index) for index in order[:count]}
    calibration = [sample for index, sample in enumerate(normals) if index in held_out]
    training = [sample for index, sample in enumerate(normals) if index not in held_out]
    return training, calibration


def make_split(
    samples: list[Sample],
    *,
    scenario: str,
    anomalies_per_type: int = 3,
    seed: int = 0,
    calibration_fraction: float = 0.1,
) -> Split:
    """Build the training, calibration and test sets of one experiment.

    For each defect type, ``anomalies_per_type`` anomalous test images with a
    non-empty mask are chosen at random with ``seed`` and moved into training.
    When a type has fewer annotated images, all of them are moved and a
    warning is logged, so a small data set still trains.

    In the ``standard`` scenario, ``calibration_fraction`` of the normal
    training images (at least one when there are two or more, and never all)
    are held out to calibrate the image-level threshold and the rest train.
    In the ``anomalies-only`` scenario no normal image is used at all, so
    ``train_normal`` and ``calibration_normal`` are empty and the caller has
    to set the threshold without calibration images.

    Args:
        samples: Output of :func:`discover`.
        scenario: ``"standard"`` or ``"anomalies-only"``.
        anomalies_per_type: Anomalous images moved into training per defect
            type. 0 trains on normal images only.
        seed: Seed of the random choices.
        calibration_fraction: Share of normal training images held out for
            calibration, in ``[0, 1)``.

    Returns:
        The split, each list sorted by ``relative_path``.

    Raises:
        DataError: Unknown scenario, no normal training images in the
            standard scenario, no annotated anomalies in the anomalies-only
            scenario, an anomalous image in the train split, or an unreadable
            mask.
        ValueError: ``anomalies_per_type`` is negative or
            ``calibration_fraction`` is outside ``[0, 1)``.
    """
    if scenario not in SCENARIOS:
        raise DataError(f"unknown scenario {scenario!r}; use one of {', '.join(SCENARIOS)}")
    if anomalies_per_type < 0:
        raise ValueError(f"anomalies_per_type must be 0 or more, got {anomalies_per_type}")
    if not 0 <= calibration_fraction < 1:
        raise ValueError(f"calibration_fraction must be in [0, 1), got {calibration_fraction}")

    samples = sorted(samples, key=lambda sample: sample.relative_path)
    for sample in samples:
        if sample.label == 1 and sample.split != "test":
            raise DataError(
                f"anomalous image {sample.image_path} is in the train split; "
                "anomalous images must be test images, make_split moves some into training"
            )
    normals = [sample for sample in samples if sample.split == "train" and sample.label == 0]
    test = [sample for sample in samples if sample.split == "test"]

    # Group the annotated anomalies by defect type. Images with an empty mask stay in test.
    eligible: dict[str, list[Sample]] = defaultdict(list)
    empty_masks = 0
    for sample in test:
        if sample.label != 1:
            continue
        assert sample.mask_path is not None  # an anomalous sample always has a mask path
        if _read_binary_mask(sample.mask_path).any():
            eligible[sample.defect_type].append(sample)
        else:
            empty_masks += 1
    if empty_masks:
        logger.info("%d anomalous images have an empty mask; they stay in the test set", empty_masks)

    moved_samples: list[Sample] = []
    defect_types = sorted({sample.defect_type for sample in test if sample.label == 1})
    for defect_type in defect_types:
        candidates = eligible.get(defect_type, [])
        count = min(anomalies_per_type, len(candidates))
        if count < anomalies_per_type:
            logger.warning(
                "Defect type %r has %d annotated images, fewer than the %d requested; moving %d into training",
                defect_type,
                len(candidates),
                anomalies_per_type,
                count,
            )
        chosen = _stream_rng(seed, f"anomalies/{defect_type}").choice(len(candidates), size=count, replace=False)
        moved_samples.extend(candidates[int(index)] for index in chosen)
    moved_samples.sort(key=lambda sample: sample.relative_path)
    moved_paths = {sample.relative_path for sample in moved_samples}

    if scenario == "standard":
        if not normals:
            raise DataError(
                f"no normal training images under {_data_root_hint(samples)}: add images to train/good "
                "(or manifest rows with split train and no mask), or use the anomalies-only scenario"
            )
        train_normal, calibration_normal = _choose_calibration(normals, calibration_fraction, seed)
    else:
        if not moved_samples:
            raise DataError(
                f"no annotated anomalous images to train on under {_data_root_hint(samples)}: "
                "the anomalies-only scenario needs defect images with non-empty masks and anomalies_per_type >= 1"
            )
        train_normal, calibration_normal = [], []

    split = Split(
        train_normal=train_normal,
        train_anomalous=moved_samples,
        calibration_normal=calibration_normal,
        test=[sample for sample in test if sample.relative_path not in moved_paths],
        moved=[sample.relative_path for sample in moved_samples],
        empty_masks=empty_masks,
    )
    logger.info(
        "Split (%s, seed %d): %d normal and %d anomalous training images, %d calibration, %d test",
        scenario,
        seed,
        len(split.train_normal),
        len(split.train_anomalous),
        len(split.calibration_normal),
        len(split.test),
    )
    return split
