"""Fixtures for the model tests (this file also puts tests/models on the path for ``zoo``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import zoo  # noqa: E402


@pytest.fixture(scope="module")
def image_zoo(tmp_path_factory):
    """(folder, {file name: "ok" | "error"}): the generated odd-image zoo, see zoo.py."""
    folder = tmp_path_factory.mktemp("zoo") / "zoo"
    return folder, zoo.write_zoo(folder)
