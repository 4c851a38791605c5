import json
import math
import stat

import pytest
import torch

from training.backbones import IMAGENET_MEAN, IMAGENET_STD, build_encoder
from training.explain import TARGET_CONSTANT
from training.explainer import FORMAT_VERSION, Explainer
from training.export import (
    METADATA_FILE,
    MODEL_FILE,
    load_module,
    read_metadata,
    save_model,
    script_explainer,
    validate_class_name,
)
from training.model import AEXADNet


@pytest.fixture(scope="module")
def explainer():
    torch.manual_seed(0)
    encoder, info = build_encoder("efficientnet_lite0", weights="imagenet")
    network = AEXADNet(encoder, info.channels, channels=1, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Explainer(network, image_size=64, channels=1, target_kind=TARGET_CONSTANT, target_value=2.0,
                     score_threshold=3.5).eval()


@pytest.fixture(scope="module")
def saved(explainer, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    model_dir = save_model(explainer, {"loss": "aexad"}, store, "tile")
    return model_dir, load_module(model_dir)


def images():
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.rand(1, 90, 130, generator=generator) * 255).to(torch.uint8),
        torch.rand(3, 64, 64, generator=generator),
        torch.rand(4, 33, 47, generator=generator),
    ]


def test_scripted_matches_eager(explainer, saved):
    _, scripted = saved
    for image in images():
        eager = explainer(image, 1.5)
        served = scripted(image, 1.5)
        assert served.keys() == eager.keys()
        for key in ("reconstruction", "error", "heatmap", "score"):
            torch.testing.assert_close(served[key], eager[key], atol=1e-4, rtol=1e-4, msg=key)
        assert served["filter_size"].item() == eager["filter_size"].item()
        assert bool(served["is_anomalous"]) == bool(eager["is_anomalous"])
        disagreement = (served["mask"] != eager["mask"]).float().mean().item()
        assert disagreement < 1e-3


def test_output_shapes_follow_input(saved):
    _, scripted = saved
    result = scripted((torch.rand(1, 90, 130) * 255).to(torch.uint8), 1.0)
    assert result["reconstruction"].shape == (1, 90, 130)
    assert result["error"].shape == (90, 130)
    assert result["heatmap"].shape == (90, 130)
    assert result["mask"].shape == (90, 130)
    assert result["mask"].dtype == torch.bool
    assert result["score"].shape == ()
    assert result["filter_size"].dtype == torch.int64
    assert 0.0 <= result["error"].min() <= result["error"].max() <= 1.0


def test_batch_equals_single_calls(saved):
    _, scripted = saved
    batch = scripted.explain_batch(images(), [1.0, 2.0, 3.0])
    for image, multiplier, result in zip(images(), [1.0, 2.0, 3.0], batch):
        single = scripted(image, multiplier)
        torch.testing.assert_close(result["heatmap"], single["heatmap"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(result["score"], single["score"], atol=1e-5, rtol=1e-4)


def test_larger_multiplier_shrinks_mask(saved):
    _, scripted = saved
    image = images()[0]
    assert scripted(image, 3.0)["mask"].sum() <= scripted(image, 1.0)["mask"].sum()


def test_module_attributes(saved):
    _, scripted = saved
    assert scripted.format_version == FORMAT_VERSION
    assert scripted.image_size == 64
    assert scripted.channels == 1
    assert scripted.score_threshold == pytest.approx(3.5)


def test_metadata_written(saved):
    model_dir, _ = saved
    metadata = read_metadata(model_dir)
    assert metadata["class_name"] == "tile"
    assert metadata["format_version"] == FORMAT_VERSION
    assert metadata["threshold"]["score"] == pytest.approx(3.5)
    assert metadata["versions"]["torch"] == torch.__version__
    assert metadata["loss"] == "aexad"


def test_files_readable_and_no_temporaries(saved):
    model_dir, _ = saved
    assert sorted(path.name for path in model_dir.iterdir()) == [METADATA_FILE, MODEL_FILE]
    for name in (METADATA_FILE, MODEL_FILE):
        mode = (model_dir / name).stat().st_mode
        assert mode & stat.S_IROTH


def test_nan_threshold_stored_as_null(explainer, tmp_path):
    explainer_without_threshold = Explainer(
        explainer.network, image_size=64, channels=1, target_kind=TARGET_CONSTANT, target_value=2.0
    )
    model_dir = save_model(explainer_without_threshold, {}, tmp_path, "anomalies-only")
    assert json.loads((model_dir / METADATA_FILE).read_text())["threshold"]["score"] is None
    scripted = load_module(model_dir)
    assert math.isnan(scripted.score_threshold)
    assert not bool(scripted(torch.rand(1, 64, 64), 1.0)["is_anomalous"])


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 65, "tile name"])
def test_invalid_class_names_rejected(name):
    with pytest.raises(ValueError, match="invalid class name"):
        validate_class_name(name)


@pytest.mark.parametrize("name", ["tile", "magnetic_tile", "bottle-2.1", "A9"])
def test_valid_class_names_accepted(name):
    assert validate_class_name(name) == name


def test_bad_image_rank_raises(saved):
    _, scripted = saved
    with pytest.raises(Exception, match="channels, height, width"):
        scripted(torch.rand(64, 64), 1.0)

