"""benchmarks/late_interaction.py at toy sizes: it runs end to end and its numbers mean what the
table says (no time is judged here: speed is the benchmark's own business)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("late_interaction", ROOT / "benchmarks" / "late_interaction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clustered_data_has_the_asked_shape(bench):
    docs, queries = bench.clustered(12, 8, 3, 5, seed=1)
    assert (len(docs), docs.n_tokens, docs.dim) == (12, 96, 128) and docs.codes.dtype == np.float16
    assert len(queries) == 3 and all(q.shape == (5, 128) for q in queries)
    assert np.allclose(np.linalg.norm(docs[0], axis=1), 1.0, atol=1e-3)


def test_toy_run_writes_the_table_numbers(bench, tmp_path, capsys):
    out = tmp_path / "li.json"
    assert bench.main(["--docs", "60", "--tokens", "16", "--queries", "4", "--bandwidth-mb", "8",
                       "--single-queries", "2", "--depths", "10", "60", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert "target recall@10" in capsys.readouterr().out
    storage = doc["storage"]
    assert [storage[s]["code_bytes_per_token"] for s in ("float32", "float16", "int8", "binary")] == [512, 256, 128, 16]
    assert storage["float32"]["recall_at_10_vs_float32"] == 1.0 and storage["float32"]["max_top1_score_error"] == 0.0
    full_depth = [s for s in doc["first_stages"] if s["depth"] == 60]
    assert full_depth and all(s["recall_at_10"] == 1.0 for s in full_depth)  # depth >= corpus: exact's top 10
    assert all(s["max_score_error"] <= 1e-5 for s in doc["first_stages"])  # reranked scores are exact MaxSim
    assert doc["memory_read_bandwidth_gb_s"] > 0 and 0 < doc["exact"]["single_scan_share_of_bandwidth"]
