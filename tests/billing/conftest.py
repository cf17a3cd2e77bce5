from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    env = os.environ.get("TOKENFUSE_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture
def focus_sample() -> Path:
    path = shared_data_dir() / "focus-sample" / "focus_sample_1.0.csv"
    if not path.is_file():
        pytest.skip(f"FOCUS sample data not found at {path}; set TOKENFUSE_SHARED_DATA to the shared data folder")
    return path
