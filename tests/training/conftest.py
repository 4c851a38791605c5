import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DATA = REPO / "samples" / "magnetic_tile"


def dataset_root() -> Path:
    """The magnetic_tile data set: $AEXAD_DATASET, else ../shared/datasets beside the repository."""
    configured = os.environ.get("AEXAD_DATASET")
    if configured:
        return Path(configured)
    return REPO.parent / "shared" / "datasets" / "magnetic_tile"


@pytest.fixture
def magnetic_tile() -> Path:
    root = dataset_root()
    if not (root / "train" / "good").is_dir():
        pytest.skip(f"magnetic_tile data set not found at {root}")
    return root


@pytest.fixture
def sample_data() -> Path:
    return SAMPLE_DATA
