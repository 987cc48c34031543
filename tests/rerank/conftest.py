"""Fixtures of the reranking tests: a few images (the tiny reranker checkpoints are in tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))  # rerank_fixtures, importable by the tests


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Image files of a few sizes and modes: name -> path."""
    root = tmp_path_factory.mktemp("rr-images")
    out = {}
    for name, (w, h, mode) in {"wide": (90, 40, "RGB"), "tall": (33, 70, "RGB"), "rgba": (50, 50, "RGBA"),
                               "gray": (64, 48, "L")}.items():
        rng = np.random.RandomState(len(name) * 7 + w)
        array = rng.randint(0, 256, (h, w, len(mode)) if mode != "L" else (h, w), dtype=np.uint8)
        path = root / f"{name}.png"
        Image.fromarray(array, mode=mode).save(path)
        out[name] = str(path)
    return out
