"""Fixtures for training tests (helpers in train_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from train_fixtures import write_tiny_text_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    """A tiny random sentence-transformers text model (loads as the text family)."""
    return write_tiny_text_model(tmp_path_factory.mktemp("tiny-text"))
