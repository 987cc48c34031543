"""Shared pytest fixtures. Keep each fixture small and documented; others add theirs here."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

# Families default to float32 in tests on every CPU unless the run says otherwise: where the CPU
# multiplies bf16 natively they would default to bfloat16 (umr.core.devices). Set in the
# environment, before anything loads, so that subprocesses and Ray workers make the same choice;
# CI runs the `dtype_sensitive` tests a second time under UMR_CPU_BF16=1 (scripts/test.sh).
os.environ.setdefault("UMR_CPU_BF16", "0")


@pytest.fixture(autouse=True, scope="session")
def _umr_cache(tmp_path_factory):
    """umr's own caches (weights digests) live in a temporary folder, never the user's home."""
    from umr.models.identity import weights_digests

    os.environ["UMR_CACHE"] = str(tmp_path_factory.mktemp("umr-cache"))
    weights_digests.cache_clear()
    yield
    weights_digests.cache_clear()


@pytest.fixture(scope="session")
def tiny_gme_dir(tmp_path_factory) -> Path:
    """A tiny random GME (Qwen2-VL) checkpoint laid out like the real one; loads with ``umr.load_model``."""
    from umr.testing import write_tiny_gme

    return write_tiny_gme(tmp_path_factory.mktemp("tiny-gme") / "tiny-gme", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3vl_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3-VL-Embedding checkpoint laid out like the real one (tests only read it)."""
    from umr.testing import write_tiny_qwen3vl

    return write_tiny_qwen3vl(tmp_path_factory.mktemp("tiny-qwen3vl") / "tiny-qwen3vl", seed=0)


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory):
    """A tiny Qwen3-VL-Reranker (also a Qwen3-VL-Instruct-style model for ``family="zero-shot"``)."""
    from umr.testing import write_tiny_qwen3vl_reranker

    return write_tiny_qwen3vl_reranker(tmp_path_factory.mktemp("rr") / "tiny-qwen3-vl-reranker")


@pytest.fixture(scope="session")
def tiny_qwen2vl_dir(tmp_path_factory):
    """A tiny Qwen2-VL-Instruct-style generative MLLM (a zero-shot reranker)."""
    from umr.testing import write_tiny_qwen2vl_instruct

    return write_tiny_qwen2vl_instruct(tmp_path_factory.mktemp("rr") / "tiny-qwen2-vl-instruct")


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A tiny LLaVA-NeXT (a zero-shot reranker)."""
    from umr.testing import write_tiny_llava_next

    return write_tiny_llava_next(tmp_path_factory.mktemp("rr") / "tiny-llava-next")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A small, well-formed PNG whose header claims ``width x height`` RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.fixture
def bomb_png(tmp_path) -> Path:
    """A PNG file of a few bytes whose header claims 30000 x 30000 pixels."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(30000, 30000))
    return path


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A local Ray on 2 CPUs for the session. Its workers import the hash-test model from
    tests/index and die once when the returned marker file is missing (it starts present:
    disarmed)."""
    ray = pytest.importorskip("ray")
    marker = tmp_path_factory.mktemp("ray") / "died"
    marker.touch()
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "index"), os.environ.get("PYTHONPATH", "")]),
           "UMR_TEST_DIE_ONCE": str(marker)}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the local Ray's workers inherit the driver's environment
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    yield marker
    ray.shutdown()
