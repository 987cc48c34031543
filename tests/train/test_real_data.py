"""Real data: fine-tuning minilm with ``umr train`` on hand-written training queries of the
bundled stdlib-docs collection raises NDCG@10 on its held-out test queries."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import umr
from umr.cli import main
from umr.data.beir import candidate_text, load_beir
from umr.eval import evaluate

FIXTURES = Path(__file__).parents[1] / "fixtures"
COLLECTION = FIXTURES / "eval" / "stdlib-docs"
TRAIN_QUERIES = FIXTURES / "train" / "stdlib-docs-train.tsv"


def write_training_set(path: Path) -> Path:
    """One example per training query: its document as the positive, and three other documents
    of the same module (``math.``, ``str.``, ...) as hard negatives."""
    corpus = {}
    for line in (COLLECTION / "corpus.jsonl").read_text().splitlines():
        record = json.loads(line)
        corpus[record["_id"]] = candidate_text(record)
    rng = random.Random(0)
    rows = []
    for line in TRAIN_QUERIES.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        query, doc = line.split("\t")
        module = doc.rsplit(".", 1)[0]
        same_module = sorted(d for d in corpus if d.rsplit(".", 1)[0] == module and d != doc)
        negatives = rng.sample(same_module, min(3, len(same_module)))
        rows.append({"query": {"text": query}, "positive": {"id": doc, "text": corpus[doc]},
                     "negatives": [{"id": d, "text": corpus[d]} for d in negatives], "source": "stdlib-docs"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_training_queries_are_not_test_queries():
    test_queries = {json.loads(line)["text"].lower() for line in (COLLECTION / "queries.jsonl").read_text().splitlines()}
    train_queries = {line.split("\t")[0].lower() for line in TRAIN_QUERIES.read_text().splitlines()
                     if line.strip() and not line.startswith("#")}
    assert len(train_queries) >= 100 and not train_queries & test_queries


def _ndcg(model) -> float:
    return evaluate(model, load_beir(COLLECTION))["tasks"][0]["metrics"]["ndcg@10"]


@pytest.mark.slow
def test_umr_train_raises_ndcg_on_held_out_queries(tmp_path):
    data = write_training_set(tmp_path / "train.jsonl")
    before = _ndcg(umr.load_model("minilm"))
    code = main(["train", "--model", "minilm", "--data", str(data), "--output", str(tmp_path / "out"),
                 "--epochs", "2", "--batch-size", "32", "--lr", "1e-4", "--hard-negatives", "1", "--warmup", "0.1",
                 "--no-progress"])
    assert code == 0
    after = _ndcg(umr.load_model(tmp_path / "out"))
    print(f"stdlib-docs NDCG@10: minilm {before:.4f} -> fine-tuned {after:.4f}")
    assert after > before + 0.01, (before, after)
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    assert record["examples"] == len(data.read_text().splitlines())
