"""ViDoRe visual-document evaluation: the layouts users download, nDCG@5 as the headline, and
late-interaction (multi-vector) models scored by exact MaxSim — checked against numbers computed
here independently (MaxSim by plain numpy over the model's own token vectors, nDCG by hand)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from umr.cli import main
from umr.core.items import Item
from umr.data.vidore import load_vidore, load_vidore_task
from umr.eval import EvalConfig, Evaluator
from umr.eval.late_interaction import TokenStore, maxsim_search
from umr.eval.cache import EmbeddingStore
from umr.eval.trec import read_run
from umr.models.multivector import MultiVectorEmbedder

from .conftest import concept_of
from .vidore_fixture import QRELS, QUERIES, page_images, write_jsonl_task, write_parquet_task, write_qa_task


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> list[bytes]:
    return page_images(tmp_path_factory.mktemp("pdf-pages"))


@pytest.fixture(scope="module")
def parquet_task(pages, tmp_path_factory) -> Path:
    return write_parquet_task(tmp_path_factory.mktemp("hf") / "esg_reports_v2", pages)


@pytest.fixture(scope="module")
def jsonl_task(pages, tmp_path_factory) -> Path:
    return write_jsonl_task(tmp_path_factory.mktemp("beir") / "esg_reports_jsonl", pages)


# -- reading ---------------------------------------------------------------------------------------


def test_hugging_face_subsets_read_as_vidore_reads_them(parquet_task, pages):
    [task] = load_vidore(parquet_task)
    assert task.name == "esg_reports_v2" and task.category == "T→VD" and str(task.target_modality) == "image"
    assert task.headline == "ndcg@5" and not task.ignore_identical_ids
    assert [q.id for q in task.queries] == ["0", "1", "2", "3"] and [q.text for q in task.queries] == list(QUERIES.values())
    assert [c.id for c in task.candidates] == [str(i) for i in range(len(pages))]
    assert task.candidates[4].image == pages[4]  # the bytes of datasets' Image struct, as stored
    assert task.qrels == {str(q): {str(d): s for d, s in judged.items()} for q, judged in QRELS.items()}


def test_the_bundled_example_is_this_task():
    """``tests/fixtures/eval/vidore-mini`` (the docs' example) holds the fixture's queries and qrels."""
    [task] = load_vidore(Path(__file__).resolve().parents[1] / "fixtures/eval/vidore-mini")
    assert task.name == "vidore-mini" and task.headline == "ndcg@5" and len(task.candidates) == 7
    assert [q.text for q in task.queries] == list(QUERIES.values()) and all(c.error is None for c in task.candidates)
    assert task.qrels == {str(q): {str(d): s for d, s in judged.items()} for q, judged in QRELS.items()}


def test_v3_headline_is_ndcg_at_10(pages, tmp_path):
    """ViDoRe V3 reports nDCG@10: by its ``corpus_id`` columns or a folder named for V3."""
    import pyarrow.parquet as pq

    renamed = write_parquet_task(tmp_path / "finance", pages)
    for subset in ("corpus", "queries", "qrels"):
        path = renamed / subset / "test-00000-of-00001.parquet"
        table = pq.read_table(path)
        pq.write_table(table.rename_columns([n.replace("-id", "_id") for n in table.column_names]), path)
    task = load_vidore_task(renamed)
    assert task.headline == "ndcg@10" and task.qrels["0"] == {"0": 2, "3": 1}
    assert load_vidore_task(write_parquet_task(tmp_path / "vidore_v3_hr", pages)).headline == "ndcg@10"
    (renamed / "task.json").write_text(json.dumps({"main_metric": "ndcg@5", "name": "finance"}))
    assert load_vidore_task(renamed).headline == "ndcg@5"


def test_v1_question_answering_table(pages, tmp_path):
    """Distinct queries (ids q0, q1, ... in order), one page per distinct file name, a query's
    relevant page the last row holding it — as vidore-benchmark's ViDoReEvaluatorQA."""
    task = load_vidore_task(write_qa_task(tmp_path / "docvqa_test_subsampled", pages))
    assert [(q.id, q.text) for q in task.queries] == [("q0", QUERIES[0]), ("q1", QUERIES[1]), ("q2", QUERIES[3]),
                                                      ("q3", QUERIES[2])]
    assert [c.id for c in task.candidates] == ["p0.png", "p1.png", "p2.png", "p5.png", "p3.png"]
    assert task.candidates[1].image == pages[1]
    assert task.qrels == {"q0": {"p3.png": 1}, "q1": {"p1.png": 1}, "q2": {"p5.png": 1}, "q3": {"p1.png": 1}}
    assert task.headline == "ndcg@5"


def test_jsonl_folder_of_page_images(jsonl_task):
    [task] = load_vidore(jsonl_task)
    assert task.headline == "ndcg@5" and task.category == "T→VD" and not task.ignore_identical_ids
    assert Path(task.candidates[0].image).name == "page0.png"


def test_bad_rows_are_item_errors_and_the_rest_is_scored(pages, tmp_path):
    task = load_vidore_task(write_parquet_task(tmp_path / "bad", pages, bad_rows=True))
    failed = {c.id: c.error for c in task.candidates if c.error is not None}
    assert set(failed) == {"7", "corpus:9"}
    assert "image" in failed["7"] and "corpus-id" in failed["corpus:9"]
    assert [(q.id, q.error) for q in task.queries if q.error] == [("9", "has no text (column 'query')")]

    scores = Evaluator(PixelTokens(), output=tmp_path / "out").evaluate([task], benchmark="vidore")
    [result] = scores["tasks"]
    assert result["failures"]["candidates"] == 2 and result["failures"]["queries"] == 1
    assert result["n_scored_queries"] == 4 and result["main_metric"] == "ndcg@5"
    assert result["main_score"] == pytest.approx(_ndcg5(_numpy_run(PixelTokens(), task), task.qrels))


# -- a fast late-interaction model --------------------------------------------------------------------


class PixelTokens(MultiVectorEmbedder):
    """Token vectors from what an item holds: an image's 8x8 pixel cells, a text's characters
    (deterministic, no weights). ``block_bytes`` small makes the evaluator read many blocks."""

    name = "pixel-tokens"
    dim = 8

    def _cost(self, item: Item) -> int:
        return 1

    def prepare(self, item: Item):
        if item.image is not None:
            image = item.image if isinstance(item.image, Image.Image) else Image.open(
                io.BytesIO(item.image) if isinstance(item.image, bytes) else item.image)
            cells = np.asarray(image.convert("RGB").resize((8, 8)), np.float32).reshape(64, 3) / 255
            raw = np.concatenate([cells, np.sin(np.arange(1, 65)[:, None] * np.arange(1, 6) / 7)], axis=1)
        else:
            codes = np.array([ord(ch) for ch in item.text], np.float32)
            raw = np.stack([np.cos(codes * (j + 1) / 37) for j in range(self.dim)], axis=1)
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    def embed_prepared(self, prepared):
        return [torch.from_numpy(np.asarray(p, np.float32)) for p in prepared]


class ConceptTokens(PixelTokens):
    """M-BEIR fixture: a query and its positive share the tokens of their concept number."""

    name = "concept-tokens"
    dim = 40

    def prepare(self, item: Item):
        tokens = np.zeros((3, self.dim), np.float32)
        tokens[:, concept_of(item)] = 1.0
        tokens[1:, 35 if item.text else 36] = 0.3  # a mild modality signal, never stronger than the concept
        return tokens / np.linalg.norm(tokens, axis=1, keepdims=True)


def _numpy_maxsim(query: np.ndarray, page: np.ndarray) -> float:
    return float((query.astype(np.float64) @ page.astype(np.float64).T).max(axis=1).sum())


def _numpy_run(model, task) -> dict[str, dict[str, float]]:
    """Every query's MaxSim (or inner product) with every page, by numpy over the model's own vectors."""
    queries = [q for q in task.queries if q.error is None]
    pages = [c for c in task.candidates if c.error is None]
    qvecs = model.encode_queries(queries)
    cvecs = model.encode_candidates(pages)
    if isinstance(model, MultiVectorEmbedder):
        return {q.id: {c.id: _numpy_maxsim(qv, cv) for c, cv in zip(pages, cvecs)} for q, qv in zip(queries, qvecs)}
    scores = np.asarray(qvecs, np.float64) @ np.asarray(cvecs, np.float64).T
    return {q.id: {c.id: float(s) for c, s in zip(pages, row)} for q, row in zip(queries, scores)}


def _ndcg5(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float:
    """nDCG@5 by hand: graded gains, log2 discounts, averaged over the judged queries run."""
    values = []
    for qid, judged in qrels.items():
        if qid not in run:
            continue
        ranked = sorted(run[qid], key=lambda d: (run[qid][d], d), reverse=True)[:5]  # trec_eval's ties
        dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
        ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(judged.values(), reverse=True)[:5]))
        values.append(dcg / ideal)
    return sum(values) / len(values)


def test_maxsim_search_in_blocks_equals_numpy(pages, tmp_path):
    """Candidates read and scored a block at a time (here one page per block) rank exactly as
    numpy's MaxSim over all of them at once; the token cache holds each page once."""
    model = PixelTokens()
    items = [Item.candidate(image=p, id=str(i)) for i, p in enumerate(pages)]
    tokens = TokenStore(EmbeddingStore(tmp_path, "pixel"))
    spans, kept, errors, _ = tokens.embed(model, items)
    assert list(kept) == list(range(len(pages))) and not errors
    queries = model.encode_queries(list(QUERIES.values()))
    scores, rows = maxsim_search(queries, tokens, spans, k=4, block_bytes=64 * 4 * model.dim)
    expected = np.array([[_numpy_maxsim(q, p) for p in model.encode_candidates(items)] for q in queries])
    for i in range(len(queries)):
        order = sorted(range(len(pages)), key=lambda j: (-expected[i, j], j))[:4]
        assert list(rows[i]) == order
        np.testing.assert_allclose(scores[i], expected[i, order], atol=1e-5)
    again, _, _, _ = tokens.embed(model, items)  # cached: nothing appended
    assert np.array_equal(again, spans) and tokens.path.stat().st_size == 4 * model.dim * int(spans[:, 1].sum())


def test_non_finite_token_vectors_are_that_items_error(pages, tmp_path):
    """A page the model turns into NaN tokens fails alone (MaxSim cannot rank it); the rest is scored."""

    class NanOnChart(PixelTokens):
        def prepare(self, item: Item):
            tokens = super().prepare(item)
            return tokens * np.nan if item.image is not None and item.image == pages[5] else tokens

    [task] = load_vidore(write_parquet_task(tmp_path / "task", pages))
    scores = Evaluator(NanOnChart(), output=tmp_path / "out").evaluate([task], benchmark="vidore")
    [result] = scores["tasks"]
    assert result["failures"]["candidates"] == 1
    assert [(f["id"], f["error"]) for f in result["failures"]["first"]] == [("5", "the model gave non-finite token vectors")]
    assert "5" not in next(iter(read_run(tmp_path / "out/runs/corpus/task.trec").values()))


def test_multi_vector_on_mbeir_tasks(mbeir_dir, tmp_path):
    """M-BEIR / UMRB tasks take late-interaction models, image and text candidates alike: every
    run score is numpy's MaxSim and UniIR's R@5 the hand-counted one; the oracle-like
    ConceptTokens finds every positive."""
    from umr.data.mbeir import MBEIR

    bench = MBEIR(mbeir_dir)
    tasks = [bench.task(name, pool="local") for name in ("mscoco_task0", "oven_task6", "nights_task4")]
    scores = Evaluator(PixelTokens(), output=tmp_path / "out", config=EvalConfig(depth=10)).evaluate(tasks,
                                                                                                   benchmark="mbeir")
    for task, result in zip(tasks, scores["tasks"]):
        expected = _numpy_run(PixelTokens(), task)
        run = read_run(tmp_path / "out" / "runs" / "local" / f"{task.name}.trec")
        hits = []
        for qid, found in run.items():
            assert found.keys() == expected[qid].keys()
            assert all(score == pytest.approx(expected[qid][did], rel=1e-6) for did, score in found.items())  # float32 sums
            top5 = sorted(expected[qid], key=lambda d: (expected[qid][d], d), reverse=True)[:5]
            hits.append(any(task.qrels[qid].get(d, 0) > 0 for d in top5))
        assert result["failures"]["candidates"] == 0 and result["metrics"]["hit@5"] == pytest.approx(np.mean(hits))
    oracle = Evaluator(ConceptTokens(), config=EvalConfig(depth=10)).evaluate(tasks, benchmark="mbeir")
    assert [r["main_score"] for r in oracle["tasks"]] == [1.0, 1.0, 1.0]


def test_a_torn_token_row_is_cut_off(pages, tmp_path):
    """A kill mid-append leaves part of a token row: the next append starts on a whole row, and
    what was committed before reads back unchanged."""
    model = PixelTokens()
    items = [Item.candidate(image=p, id=str(i)) for i, p in enumerate(pages)]
    tokens = TokenStore(EmbeddingStore(tmp_path, "pixel"))
    first, _, _, _ = tokens.embed(model, items[:3])
    with tokens.path.open("ab") as handle:
        handle.write(b"\x01" * 10)  # a torn row, never referenced
    second, _, _, _ = TokenStore(EmbeddingStore(tmp_path, "pixel")).embed(model, items)
    assert np.array_equal(second[:3], first)
    for got, want in zip(tokens.read(second), model.encode_candidates(items)):
        np.testing.assert_array_equal(got, want)


def test_every_item_failing_scores_nothing_and_stops_nothing(pages, tmp_path):
    """A late-interaction model that embeds nothing of a task: its items are failures, no crash."""

    class Refuses(PixelTokens):
        def prepare(self, item: Item):
            raise ValueError("refused")

    [task] = load_vidore(write_parquet_task(tmp_path / "task", pages))
    [result] = Evaluator(Refuses(), output=tmp_path / "out").evaluate([task], benchmark="vidore")["tasks"]
    assert result["failures"]["queries"] == 4 and result["failures"]["candidates"] == len(pages)
    assert result["main_score"] is None


def test_evaluator_refuses_a_sweep_of_token_vectors():
    with pytest.raises(ValueError, match="late-interaction"):
        Evaluator(PixelTokens(), dims=[4])


# -- through the command line, tiny real models -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_colqwen(tmp_path_factory) -> Path:
    from umr.testing import write_tiny_colqwen

    return write_tiny_colqwen(tmp_path_factory.mktemp("colqwen") / "adapter", "2.5", seed=0)


def _cli_eval(model: Path, data: Path, out: Path) -> dict:
    assert main(["eval", "--model", str(model), "--benchmark", "vidore", "--data", str(data), "--output", str(out),
                 "--no-progress"]) == 0
    return json.loads((out / "scores.json").read_text())


def _check_against_numpy(scores: dict, out: Path, expected: dict[str, dict[str, float]], atol: float) -> None:
    [result] = scores["tasks"]
    qrels = {str(q): {str(d): s for d, s in judged.items()} for q, judged in QRELS.items()}
    assert result["main_metric"] == "ndcg@5"
    assert result["main_score"] == pytest.approx(_ndcg5(expected, qrels), abs=1e-9)
    assert result["metrics"]["ndcg@5"] == result["main_score"]
    run = read_run(out / "runs" / "corpus" / f"{result['task']}.trec")
    assert set(run) == set(expected)
    for qid, found in run.items():
        assert set(found) == set(expected[qid])  # every page of the pool, none dropped
        for did, score in found.items():
            assert score == pytest.approx(expected[qid][did], abs=atol)


def test_cli_colqwen_on_both_layouts_matches_numpy_maxsim(tiny_colqwen, parquet_task, jsonl_task, tmp_path, capsys):
    """``umr eval --benchmark vidore`` with a tiny ColQwen2.5: its run scores are numpy's MaxSim
    over the model's own token vectors (<= 1e-4) and its nDCG@5 the hand-computed one, on the
    parquet layout and on the JSONL one alike; a rerun reuses the cached token vectors."""
    from umr import load_model

    model = load_model(str(tiny_colqwen))
    expected = _numpy_run(model, load_vidore_task(parquet_task))
    for data in (parquet_task, jsonl_task):
        out = tmp_path / data.name
        _check_against_numpy(_cli_eval(tiny_colqwen, data, out), out, expected, atol=1e-4)
        assert "mean headline (NDCG@5)" in capsys.readouterr().out
    report = (tmp_path / parquet_task.name / "results.md").read_text()
    assert "| Task | NDCG@5 | R@1" in report
    cached = next((tmp_path / parquet_task.name / "cache").rglob("tokens.f32"))
    size = cached.stat().st_size
    for done in (tmp_path / parquet_task.name / "tasks").rglob("*.json"):
        done.unlink()  # the task is scored again, its token vectors read from the cache
    _check_against_numpy(_cli_eval(tiny_colqwen, parquet_task, tmp_path / parquet_task.name),
                         tmp_path / parquet_task.name, expected, atol=1e-4)
    assert cached.stat().st_size == size


def test_cli_single_vector_model_on_a_vidore_folder(tiny_gme_dir, parquet_task, tmp_path):
    """A single-vector model (tiny GME) on the same folder: exact inner products, nDCG@5 by hand."""
    from umr import load_model

    expected = _numpy_run(load_model(str(tiny_gme_dir)), load_vidore_task(parquet_task))
    out = tmp_path / "gme"
    _check_against_numpy(_cli_eval(tiny_gme_dir, parquet_task, out), out, expected, atol=1e-4)
