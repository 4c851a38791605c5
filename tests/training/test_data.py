"""Tests of training.data on small images written to tmp_path."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import (
    DataError,
    Sample,
    discover,
    infer_channels,
    load_image,
    load_mask,
    make_split,
)

DATASET = Path(os.environ.get("AEXAD_DATASET") or Path(__file__).resolve().parents[3] / "shared" / "datasets" / "magnetic_tile")


def write_image(path: Path, value: int = 100, size: tuple[int, int] = (8, 6), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode in ("L", "I;16") else (value, value // 2, 255 - value)
    Image.new(mode, size, color).save(path)
    return path


def write_mask(path: Path, box: tuple[int, int, int, int] | None, size: tuple[int, int] = (8, 6)) -> Path:
    """Write an 8-bit mask that is 255 inside box (x0, y0, x1, y1) and 0 elsewhere."""
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        pixels[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_mvtec(root: Path, defects: dict[str, int], *, normals: int = 4, test_normals: int = 2) -> Path:
    """Build an MVTec AD tree with annotated defects of the given counts."""
    for index in range(normals):
        write_image(root / "train" / "good" / f"{index:03d}.png")
    for index in range(test_normals):
        write_image(root / "test" / "good" / f"{index:03d}.png")
    for defect, count in defects.items():
        for index in range(count):
            write_image(root / "test" / defect / f"{index:03d}.png", value=200)
            write_mask(root / "ground_truth" / defect / f"{index:03d}_mask.png", (1, 1, 4, 4))
    return root


# ---------------------------------------------------------------------------
# discover


def test_discover_mvtec_layout(tmp_path):
    root = make_mvtec(tmp_path / "tile", {"crack": 2, "hole": 1}, normals=2, test_normals=1)
    write_image(root / "train" / "good" / "UPPER.JPG")
    (root / "train" / "good" / "notes.txt").write_text("not an image")
    (root / "train" / "good" / ".hidden.png").write_bytes(b"")

    samples = discover(root)

    assert [sample.relative_path for sample in samples] == [
        "test/crack/000.png",
        "test/crack/001.png",
        "test/good/000.png",
        "test/hole/000.png",
        "train/good/000.png",
        "train/good/001.png",
        "train/good/UPPER.JPG",
    ]
    crack = samples[0]
    assert crack.label == 1
    assert crack.defect_type == "crack"
    assert crack.split == "test"
    assert crack.mask_path == root / "ground_truth" / "crack" / "000_mask.png"
    assert crack.image_path == root / "test" / "crack" / "000.png"
    test_good = samples[2]
    assert (test_good.label, test_good.defect_type, test_good.split, test_good.mask_path) == (0, "good", "test", None)
    train_good = samples[-1]
    assert (train_good.label, train_good.defect_type, train_good.split) == (0, "good", "train")


def test_discover_mask_with_other_extension(tmp_path):
    root = make_mvtec(tmp_path / "tile", {})
    write_image(root / "test" / "crack" / "a.jpg")
    write_mask(root / "ground_truth" / "crack" / "a_mask.bmp", (0, 0, 2, 2))

    (crack,) = [sample for sample in discover(root) if sample.label == 1]

    assert crack.mask_path == root / "ground_truth" / "crack" / "a_mask.bmp"


def test_discover_is_deterministic(tmp_path):
    root = make_mvtec(tmp_path / "tile", {"crack": 3, "hole": 2})

    assert discover(root) == discover(root)


def write_manifest(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_discover_csv_manifest(tmp_path):
    data = tmp_path / "data"
    write_image(data / "images" / "n1.png")
    write_image(data / "images" / "n2.bmp")
    write_image(data / "images" / "d1.png")
    write_image(data / "images" / "d2.tif")
    write_mask(data / "masks" / "d1.png", (0, 0, 3, 3))
    write_mask(data / "masks" / "d2.png", (0, 0, 3, 3))
    manifest = write_manifest(
        data / "list.csv",
        "image,mask,split,defect_type\n"
        "images/n1.png,,train,\n"
        "images/n2.bmp,,TEST,good\n"
        "\n"
        "images/d1.png,masks/d1.png,test,scratch\n"
        "images/d2.tif,masks/d2.png,test,\n",
    )

    samples = discover(tmp_path / "elsewhere", manifest)

    assert [sample.relative_path for sample in samples] == [
        "images/d1.png",
        "images/d2.tif",
        "images/n1.png",
        "images/n2.bmp",
    ]
    d1, d2, n1, n2 = samples
    assert (d1.label, d1.defect_type, d1.split, d1.mask_path) == (1, "scratch", "test", data / "masks" / "d1.png")
    assert (d2.label, d2.defect_type) == (1, "defect")
    assert (n1.label, n1.defect_type, n1.split, n1.mask_path) == (0, "good", "train", None)
    assert (n2.label, n2.split) == (0, "test")
    assert d1.image_path == data / "images" / "d1.png"


def test_discover_csv_as_root(tmp_path):
    write_image(tmp_path / "a.png")
    manifest = write_manifest(tmp_path / "list.CSV", "image,mask,split\na.png,,train\n")

    (sample,) = discover(manifest)

    assert sample.relative_path == "a.png"
    assert sample.label == 0


# ---------------------------------------------------------------------------
# discover: errors


def test_discover_missing_folder(tmp_path):
    missing = tmp_path / "nope"

    with pytest.raises(DataError, match="data folder not found") as caught:
        discover(missing)

    assert str(missing) in str(caught.value)


def test_discover_missing_test_folder(tmp_path):
    write_image(tmp_path / "train" / "good" / "a.png")

    with pytest.raises(DataError, match="test folder not found") as caught:
        discover(tmp_path)

    assert str(tmp_path / "test") in str(caught.value)


def test_discover_defect_without_mask(tmp_path):
    root = make_mvtec(tmp_path, {"crack": 1})
    image = write_image(root / "test" / "crack" / "orphan.png")

    with pytest.raises(DataError, match="mask not found") as caught:
        discover(root)

    assert str(image) in str(caught.value)
    assert "orphan_mask.png" in str(caught.value)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("image,split\na.png,train\n", "is missing the column"),
        ("image,mask,split\na.png,,validation\n", "invalid split 'validation'"),
        ("image,mask,split,defect_type\na.png,,test,crack\n", "has no mask"),
        ("image,mask,split,defect_type\na.png,m.png,test,Good\n", "normal image .* has a mask"),
        ("image,mask,split,defect_type\na.png,m.png,test,good\n", "normal image .* has a mask"),
        ("image,mask,split\nmissing.png,,train\n", "image not found"),
        ("image,mask,split\na.png,missing_mask.png,test\n", "mask not found"),
        ("image,mask,split\na.png,m.png,train\n", "is in the train split"),
        ("image,mask,split\n\n", "lists no images"),
        ("image,mask,split\n,m.png,train\n", "the image column is empty"),
    ],
)
def test_discover_manifest_errors(tmp_path, rows, message):
    write_image(tmp_path / "a.png")
    write_mask(tmp_path / "m.png", (0, 0, 2, 2))
    manifest = write_manifest(tmp_path / "list.csv", rows)

    with pytest.raises(DataError, match=message) as caught:
        discover(manifest)

    assert str(manifest) in str(caught.value)


def test_discover_manifest_not_found(tmp_path):
    manifest = tmp_path / "missing.csv"

    with pytest.raises(DataError, match="manifest not found") as caught:
        discover(tmp_path, manifest)

    assert str(manifest) in str(caught.value)


# ---------------------------------------------------------------------------
# load_image


def test_load_image_grayscale(tmp_path):
    path = write_image(tmp_path / "g.png", value=77, size=(5, 3))

    gray = load_image(path, 1)
    rgb = load_image(path, 3)

    assert gray.shape == (3, 5, 1)
    assert gray.dtype == np.uint8
    assert (gray == 77).all()
    assert rgb.shape == (3, 5, 3)
    assert (rgb == 77).all()


def test_load_image_rgb(tmp_path):
    path = write_image(tmp_path / "c.png", value=100, size=(4, 2), mode="RGB")

    rgb = load_image(path, 3)
    gray = load_image(path, 1)

    assert rgb.shape == (2, 4, 3)
    assert rgb[0, 0].tolist() == [100, 50, 155]
    # ITU-R 601-2 luma, as PIL computes it: 0.299 R + 0.587 G + 0.114 B.
    assert gray.shape == (2, 4, 1)
    assert abs(int(gray[0, 0, 0]) - round(0.299 * 100 + 0.587 * 50 + 0.114 * 155)) <= 1


def test_load_image_rgba_drops_alpha(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGBA", (3, 3), (10, 20, 30, 0)).save(path)

    rgb = load_image(path, 3)

    assert rgb.shape == (3, 3, 3)
    assert rgb[1, 1].tolist() == [10, 20, 30]


def test_load_image_palette(tmp_path):
    path = tmp_path / "p.png"
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 250, 40, 5] + [0] * 762)
    image.save(path)

    rgb = load_image(path, 3)

    assert rgb.shape == (4, 4, 3)
    assert rgb[2, 2].tolist() == [250, 40, 5]


def test_load_image_16_bit(tmp_path):
    path = tmp_path / "deep.png"
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path)

    gray = load_image(path, 1)

    assert gray.dtype == np.uint8
    assert gray[:, :, 0].tolist() == [[0, 128, 255]]


def test_load_image_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (6, 2), (200, 200, 200))
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(path, exif=exif)

    loaded = load_image(path, 3)

    assert loaded.shape == (6, 2, 3)


def test_load_image_corrupt_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not a PNG file")

    with pytest.raises(DataError, match="cannot read image") as caught:
        load_image(path, 1)

    assert str(path) in str(caught.value)


def test_load_image_truncated_file(tmp_path):
    path = tmp_path / "truncated.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:200])

    with pytest.raises(DataError, match="cannot read image") as caught:
        load_image(path, 1)

    assert str(path) in str(caught.value)


def test_load_image_missing_file(tmp_path):
    path = tmp_path / "gone.png"

    with pytest.raises(DataError, match="image not found") as caught:
        load_image(path, 3)

    assert str(path) in str(caught.value)


def test_load_image_rejects_channel_count(tmp_path):
    path = write_image(tmp_path / "g.png")

    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        load_image(path, 2)


# ---------------------------------------------------------------------------
# load_mask


def test_load_mask_binarises_soft_edges_at_128(tmp_path):
    path = tmp_path / "soft.png"
    Image.fromarray(np.array([[0, 1, 127, 128, 200, 255]], dtype=np.uint8)).save(path)

    mask = load_mask(path, (6, 1))

    assert mask.dtype == bool
    assert mask.tolist() == [[False, False, False, True, True, True]]


def test_load_mask_16_bit(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 32767, 32768, 65535]], dtype=np.uint16)).save(path)

    mask = load_mask(path, (4, 1))

    assert mask.tolist() == [[False, False, True, True]]


def test_load_mask_colour_annotation(tmp_path):
    path = tmp_path / "red.png"
    pixels = np.zeros((1, 2, 3), dtype=np.uint8)
    pixels[0, 1] = (255, 0, 0)
    Image.fromarray(pixels).save(path)

    mask = load_mask(path, (2, 1))

    assert mask.tolist() == [[False, True]]


def test_load_mask_resized_nearest(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.array([[255, 0], [0, 255]], dtype=np.uint8)).save(path)

    mask = load_mask(path, (4, 6))

    assert mask.shape == (6, 4)
    expected = np.zeros((6, 4), dtype=bool)
    expected[:3, :2] = True
    expected[3:, 2:] = True
    assert (mask == expected).all()


def test_load_mask_corrupt_file(tmp_path):
    path = tmp_path / "broken_mask.png"
    path.write_bytes(b"\x89PNG garbage")

    with pytest.raises(DataError, match="cannot read image") as caught:
        load_mask(path, (4, 4))

    assert str(path) in str(caught.value)


# ---------------------------------------------------------------------------
# infer_channels


def sample_for(path: Path) -> Sample:
    return Sample(path, None, 0, "good", "train", path.name)


def test_infer_channels_grayscale(tmp_path):
    gray = sample_for(write_image(tmp_path / "g.png"))
    deep_path = tmp_path / "deep.png"
    Image.fromarray(np.zeros((2, 2), dtype=np.uint16)).save(deep_path)
    gray_palette_path = tmp_path / "p.png"
    palette_image = Image.new("P", (2, 2), 0)
    palette_image.putpalette([value for level in range(256) for value in (level, level, level)])
    palette_image.save(gray_palette_path)

    assert infer_channels([gray, sample_for(deep_path), sample_for(gray_palette_path)]) == 1


def test_infer_channels_mixed(tmp_path):
    gray = sample_for(write_image(tmp_path / "g.png"))
    colour = sample_for(write_image(tmp_path / "c.png", mode="RGB"))

    assert infer_channels([gray, colour]) == 3


def test_infer_channels_empty():
    with pytest.raises(ValueError, match="at least one sample"):
        infer_channels([])


# ---------------------------------------------------------------------------
# make_split


def test_make_split_moves_n_per_type(tmp_path):
    root = make_mvtec(tmp_path, {"crack": 6, "hole": 4}, normals=20)
    samples = discover(root)

    split = make_split(samples, scenario="standard", anomalies_per_type=3, seed=0)

    assert len(split.train_anomalous) == 6
    assert sorted(sample.defect_type for sample in split.train_anomalous) == ["crack"] * 3 + ["hole"] * 3
    assert split.moved == [sample.relative_path for sample in split.train_anomalous]
    test_paths = {sample.relative_path for sample in split.test}
    assert test_paths.isdisjoint(split.moved)
    assert len(split.test) == 2 + 10 - 6
    assert split.empty_masks == 0


def test_make_split_calibration_holdout(tmp_path):
    root = make_mvtec(tmp_path, {"crack": 1}, normals=20)

    split = make_split(discover(root), scenario="standard", calibration_fraction=0.25, seed=3)

    assert len(split.calibration_normal) == 5
    assert len(split.train_normal) == 15
    train_paths = {sample.relative_path for sample in split.train_normal}
    calibration_paths = {sample.relative_path for sample in split.calibration_normal}
    assert train_paths.isdisjoint(calibration_paths)
    assert len(train_paths | calibration_paths) == 20


def test_make_split_small_calibration(tmp_path):
    root = make_mvtec(tmp_path, {"crack": 1}, normals=2)

    split = make_split(discover(root), scenario="standard", calibration_fraction=0.1)
    no_calibration = make_split(discover(root), scenario="standard", calibration_fraction=0.0)

    assert (len(split.train_normal), len(split.calibration_normal)) == (1, 1)
    assert (len(no_calibration.train_normal), len(no_calibration.calibration_normal)) == (2, 0)


def test_make_split_seed_is_deterministic(tmp_path):
    root = make_mvtec(tmp_path, {"crack": 20, "hole": 20}, normals=30)
    samples = discover(root)

    first = make_split(samples, scenario="standard", seed=7)
    again = make_split(list(reversed(samples)), scenario="standard", seed=7)
    other = make_split(samples, scenario="standard", seed=8)

    assert first == again
    assert first.moved != other.moved
    assert first.calibration_normal != other.calibration_normal


def test_make_split_empty_masks_counted_not_chosen(tmp_path):
    root = make_mvtec(tmp_path, {"crack": 2})
    for index in range(3):
        write_image(root / "test" / "crack" / f"empty{index}.png")
        write_mask(root / "ground_truth" / "crack" / f"empty{index}_mask.png", None)

    split = make_split(discover(root), scenario="standard", anomalies_per_type=5)

    assert split.empty_masks == 3
    assert split.moved == ["test/crack/000.png", "test/crack/001.png"]
    empty_in_test = [sample for sample in split.test if "empty" in sample.relative_path]
    assert len(empty_in_test) == 3


def test_make_split_too_few_anomalies_warns(tmp_path, caplog):
    root = make_mvtec(tmp_path, {"crack": 1, "hole": 5})

    with caplog.at_level(logging.WARNING, logger="training.data"):
        split = make_split(discover(root), scenario="standard", anomalies_per_type=3)

    assert len(split.train_anomalous) == 4
    assert "'crack' has 1 annotated images, fewer than the 3 requested" in caplog.text


def test_make_split_anomalies_only(tmp_path):
    root = make_mvtec(tmp_path, {"crack": 4, "hole": 4}, normals=10)

    split = make_split(discover(root), scenario="anomalies-only", anomalies_per_type=2)

    assert split.train_normal == []
    assert split.calibration_normal == []
    assert len(split.train_anomalous) == 4
    assert len(split.test) == 2 + 8 - 4


def test_make_split_anomalies_only_without_train_folder(tmp_path):
    root = make_mvtec(tmp_path, {"crack": 2}, normals=0)
    assert not (root / "train").exists()

    split = make_split(discover(root), scenario="anomalies-only", anomalies_per_type=1)

    assert len(split.train_anomalous) == 1


def test_make_split_no_normals_in_standard(tmp_path):
    root = make_mvtec(tmp_path / "tile", {"crack": 2}, normals=0)

    with pytest.raises(DataError, match="no normal training images") as caught:
        make_split(discover(root), scenario="standard")

    assert str(root) in str(caught.value)
    assert "train/good" in str(caught.value)


def test_make_split_anomalies_only_without_annotations(tmp_path):
    root = make_mvtec(tmp_path / "tile", {})
    write_image(root / "test" / "crack" / "a.png")
    write_mask(root / "ground_truth" / "crack" / "a_mask.png", None)

    with pytest.raises(DataError, match="no annotated anomalous images") as caught:
        make_split(discover(root), scenario="anomalies-only")

    assert str(root) in str(caught.value)


def test_make_split_unknown_scenario(tmp_path):
    root = make_mvtec(tmp_path, {"crack": 1})

    with pytest.raises(DataError, match="unknown scenario 'few-shot'; use one of standard, anomalies-only"):
        make_split(discover(root), scenario="few-shot")


def test_make_split_corrupt_mask(tmp_path):
    root = make_mvtec(tmp_path, {"crack": 1})
    mask = root / "ground_truth" / "crack" / "000_mask.png"
    mask.write_bytes(b"broken")

    with pytest.raises(DataError, match="cannot read image") as caught:
        make_split(discover(root), scenario="standard")

    assert str(mask) in str(caught.value)


def test_make_split_rejects_bad_arguments(tmp_path):
    samples = discover(make_mvtec(tmp_path, {"crack": 1}))

    with pytest.raises(ValueError, match="anomalies_per_type"):
        make_split(samples, scenario="standard", anomalies_per_type=-1)
    with pytest.raises(ValueError, match="calibration_fraction"):
        make_split(samples, scenario="standard", calibration_fraction=1.0)


# ---------------------------------------------------------------------------
# The real data set


@pytest.mark.dataset
@pytest.mark.skipif(not DATASET.is_dir(), reason=f"data set not found at {DATASET}")
def test_magnetic_tile_split():
    samples = discover(DATASET)

    train_good = [sample for sample in samples if sample.split == "train"]
    test_good = [sample for sample in samples if sample.split == "test" and sample.label == 0]
    defects: dict[str, int] = {}
    for sample in samples:
        if sample.label == 1:
            defects[sample.defect_type] = defects.get(sample.defect_type, 0) + 1
    assert len(train_good) == 714
    assert len(test_good) == 238
    assert defects == {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}

    split = make_split(samples, scenario="standard", anomalies_per_type=3, seed=0)

    assert split.empty_masks == 4
    assert len(split.train_anomalous) == 15
    assert len(split.calibration_normal) == 71
    assert len(split.train_normal) == 714 - 71
    assert len(split.test) == 238 + 392 - 15
    for sample in split.train_anomalous:
        assert sample.mask_path is not None
        with Image.open(sample.image_path) as image:
            size = image.size
        assert load_mask(sample.mask_path, size).any()
