"""The late-interaction index (issue 24): a ColQwen model's token vectors stored once in segments,
searched by exact MaxSim or a MUVERA first stage + exact rerank, through the API and the command
line, with filters, deletes, resume, compaction and crash safety."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import umr
from umr.cli import main
from umr.core.items import Item
from umr.index import Index
from umr.index.multivector.store import MultiVectorStore
from umr.models.multivector import maxsim
from umr.testing import write_tiny_colqwen
from umr.verify.references.colqwen import ColQwenReference, maxsim_pairwise

ROOT = Path(__file__).resolve().parents[2]

SCORE_TOL = 1e-4
QUERIES = ["quarterly revenue table", "a river in the city", "x"]


def _noise(width, height, seed, mode="RGB"):
    image = Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_colqwen(tmp_path_factory.mktemp("colqwen") / "adapter", "2.5", seed=0)


@pytest.fixture(scope="module")
def model(tiny):
    return umr.load_model(tiny)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Page images of several PIL modes and odd sizes, a text note and a two-page PDF."""
    folder = tmp_path_factory.mktemp("pages") / "docs"
    folder.mkdir()
    _noise(123, 77, 1).save(folder / "rgb.png")
    _noise(17, 5, 2).save(folder / "tiny.png")
    _noise(97, 61, 3, "L").save(folder / "gray.png")
    _noise(97, 61, 4, "P").save(folder / "palette.gif", transparency=0)
    rgba = _noise(150, 100, 5).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    _noise(90, 120, 6, "CMYK").save(folder / "cmyk.jpg")
    (folder / "note.txt").write_text("Quarterly revenue table: 2023 vs 2024.")
    spec = importlib.util.spec_from_file_location("build_samples", ROOT / "samples" / "build_samples.py")
    samples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(samples)
    (folder / "report.pdf").write_bytes(samples.pdf_with_text([["Council report", "Revenue by region."],
                                                               ["A river runs through the city."]]))
    return folder


def test_cli_index_and_search_match_the_reference(tiny, pages, tmp_path, capsys):
    """``umr index`` + ``umr search`` on float32 token storage: every MaxSim score within 1e-4 of
    colpali-engine's (the independent reference, measured 0.0 from colpali-engine 0.3.18) for
    pages of every mode and size; PDF pages are indexed as images (their text layer not read)."""
    index = tmp_path / "ix"
    assert main(["index", str(pages), "--index", str(index), "--model", str(tiny), "--no-progress",
                 "--token-storage", "float32"]) == 0
    out = capsys.readouterr().out
    assert "added 9" in out
    ref = ColQwenReference(tiny)
    with Index.open(index) as ix:
        records = {r["id"]: r for r in ix.store.records()}
    assert set(records) == {f"docs/{n}" for n in ("rgb.png", "tiny.png", "gray.png", "palette.gif", "alpha.png",
                                                  "cmyk.jpg", "note.txt", "report.pdf#page=1", "report.pdf#page=2")}
    assert all(records[f"docs/report.pdf#page={p}"]["via"] == "pixels" for p in (1, 2))
    for query in QUERIES:
        assert main(["search", query, "--index", str(index), "-k", "20", "--json"]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert len(hits) == 9
        q = ref.queries([query])
        for hit in hits:
            if hit["id"].startswith("docs/report.pdf"):
                continue  # rendered by pdfium: checked against the API below
            if hit["id"].endswith(".txt"):
                doc = ref.texts([Path(hit["path"]).read_text()])
            else:
                doc = ref.images([Image.open(hit["path"])])
            want = float(maxsim_pairwise(q, doc)[0, 0])
            assert abs(hit["score"] - want) <= SCORE_TOL, (hit["id"], hit["score"], want)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_api_scores_equal_the_model_and_pdf_pages_are_images(model, pages, tmp_path):
    with Index.create(tmp_path / "ix", model) as ix:  # float16 token storage (the default)
        summary = ix.index_corpus(pages)
        assert summary.added == 9 and not summary.errors
        assert isinstance(ix.store, MultiVectorStore) and ix.store.encoding.name == "float16"
        records = {r["id"]: r for r in ix.store.records()}
        page = records["docs/report.pdf#page=2"]
        assert page["meta"]["page"] == 2 and page["via"] == "pixels" and page["modality"] == "image"
        hits = ix.search("revenue by region", k=9)
        ids = [h.id for h in hits]
        assert len(ids) == 9 == len(set(ids))
        q = model.encode_queries(["revenue by region"])
        for hit in hits:
            if hit.id.startswith("docs/report.pdf"):
                continue
            item = Item(text=Path(hit.path).read_text()) if hit.id.endswith(".txt") else Item(image=hit.path)
            want = float(maxsim(q, model.encode_candidates([item]))[0, 0])
            assert abs(hit.score - want) <= 2e-3 * max(1.0, abs(want))  # float16 storage


def test_muvera_first_stage_reranks_exactly(model, pages, tmp_path):
    """``method="muvera"``: the same scores as exact search for what it finds (always exact
    MaxSim); with depth >= the corpus it finds everything exact search finds."""
    with Index.create(tmp_path / "mu", model, method="muvera") as ix:
        ix.index_corpus(pages)
        for query in QUERIES:
            exact = [(h.id, h.score) for h in ix.search(query, k=5, method="exact")]
            fast = [(h.id, h.score) for h in ix.search(query, k=5)]
            assert fast == exact
            few = ix.search(query, k=3, ef_search=3)
            scores = dict(exact)
            assert all(abs(h.score - scores.get(h.id, h.score)) < 1e-6 for h in few)
    with Index.create(tmp_path / "ex", model) as ix, pytest.raises(ValueError, match="no MUVERA"):
        ix.index_corpus(pages)
        ix.search("x", method="muvera")


def test_filters_deletes_resume_prune_and_compaction(model, pages, tmp_path):
    folder = tmp_path / "ix"
    with Index.create(folder, model) as ix:
        ix.index_corpus(pages)
        before = [(h.id, h.score) for h in ix.search("a river", k=20)]
        assert {h.id for h in ix.search("a river", k=20, modality="text")} == {"docs/note.txt"}
        pdf = ix.search("a river", k=20, where={"ext": "pdf"})
        assert {h.id for h in pdf} == {"docs/report.pdf#page=1", "docs/report.pdf#page=2"}
        assert ix.delete(["docs/rgb.png", "docs/missing"]) == 1
        assert "docs/rgb.png" not in [h.id for h in ix.search("a river", k=20)] and len(ix) == 8
    with Index.open(folder, writable=True, model=model) as ix:  # resume: nothing re-embedded but the deleted one
        summary = ix.index_corpus(pages)
        assert (summary.added, summary.unchanged) == (1, 8)
        assert [(h.id, h.score) for h in ix.search("a river", k=20)] == before
        (pages / "tiny.png").rename(pages / "tiny.moved")
        try:
            summary = ix.index_corpus(pages, prune=True)
        finally:
            (pages / "tiny.moved").rename(pages / "tiny.png")
        assert summary.deleted == 1 and "docs/tiny.png" not in ix.ids()
        segments = len(ix.store.segments)
        ix.compact()
        assert len(ix.store.segments) == 1 < segments
        after = [(h.id, h.score) for h in ix.search("a river", k=20)]
        assert after == [(i, s) for i, s in before if i != "docs/tiny.png"]
    with Index.open(folder) as ix:  # what compaction wrote is what a reader opens
        assert len(ix) == 8 and sorted(p.name for p in (folder / "segments").iterdir()) == \
            [s["name"] for s in ix.store._manifest["segments"]]


def test_token_pooling_and_storage_types(model, pages, tmp_path):
    stored = {}
    for storage, pool in (("float16", None), ("int8", None), ("binary", None), ("float16", 2)):
        with Index.create(tmp_path / f"{storage}-{pool}", model, token_storage=storage, pool_factor=pool) as ix:
            ix.index_corpus(pages)
            stored[(storage, pool)] = (ix.store.token_count(),
                                       sum(s.codes.nbytes for s in ix.store.segments),
                                       [h.id for h in ix.search("revenue", k=3)])
    tokens, nbytes, _ = stored[("float16", None)]
    assert stored[("int8", None)][:2] == (tokens, nbytes // 2)
    assert stored[("binary", None)][:2] == (tokens, nbytes // 16)
    assert stored[("float16", 2)][0] <= tokens // 2 + 9  # each item's tokens halved (rounded up)


def test_milvus_and_single_vector_options_are_refused_in_one_line(tiny, pages, tmp_path, capsys):
    for extra, message in ((["--backend", "milvus"], "embedded store only"),
                           (["--method", "hnsw"], "exact or muvera")):
        code = main(["index", str(pages), "--index", str(tmp_path / "ix"), "--model", str(tiny), "--no-progress",
                     *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "ix" / "manifest.json").exists()


def test_a_single_vector_index_refuses_the_muvera_method(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("a note about bicycles")
    index = tmp_path / "ix"
    assert main(["index", str(folder), "--index", str(index), "--model", "minilm", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["index", str(folder), "--index", str(index), "--no-progress", "--method", "muvera"]) == 2
    err = capsys.readouterr().err.strip()
    assert "late-interaction" in err and len(err.splitlines()) == 1, err
    assert '"muvera"' not in (index / "manifest.json").read_text()


def _segments(index: Path) -> int:
    try:
        return len(json.loads((index / "manifest.json").read_text())["segments"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_holds_every_item_once(tiny, tmp_path):
    """``umr index`` of a late-interaction model SIGKILLed after some commits, three times, then
    run again: every item exactly once, and the same results as an uninterrupted run."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "river mountain city garden engine violin harbour winter copper lantern".split()
    for i in range(240):
        (corpus / f"doc{i:03d}.txt").write_text(" ".join(words[(i * 7 + j) % len(words)] for j in range(6 + i % 5)))

    def command(index):
        return [sys.executable, "-m", "umr", "index", str(corpus), "--index", str(index), "--model", str(tiny),
                "--no-progress", "--commit-every", "4", "--batch-size", "2"]

    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ref = tmp_path / "ref"
    assert subprocess.run(command(ref), env=env, capture_output=True, timeout=600).returncode == 0
    index = tmp_path / "index"
    kills = 0
    for target in (3, 12, 25):
        proc = subprocess.Popen(command(index), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = _segments(index)
        while _segments(index) < max(target, start + 1) and proc.poll() is None:
            time.sleep(0.005)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        with Index.open(index) as ix:  # readable at every moment, never a duplicate
            ids = ix.ids()
            assert len(ids) == len(set(ids)) and 0 < len(ids) < 240
    assert kills == 3
    final = subprocess.run(command(index), env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    with Index.open(index) as ix, Index.open(ref) as whole:
        ids = ix.ids()
        assert len(ids) == len(set(ids)) == 240
        for query in ("river city", "copper lantern"):
            assert [(h.id, h.score) for h in ix.search(query, k=10)] == \
                [(h.id, h.score) for h in whole.search(query, k=10)]


@pytest.mark.slow
def test_umr_index_with_ray_stores_the_token_vectors_of_a_single_process_run(tiny, pages, tmp_path, ray_session, capsys):
    """``--ray`` carries ragged outputs: each worker's result is a list of ``(n_tokens, dim)``
    matrices, committed in chunk order exactly as this process would commit them."""
    common = ["--model", str(tiny), "--no-progress", "--commit-every", "3", "--token-storage", "float32"]
    assert main(["index", str(pages), "--index", str(tmp_path / "one"), *common]) == 0
    assert main(["index", str(pages), "--index", str(tmp_path / "ray"), *common, "--ray", "--workers", "2"]) == 0
    assert "added 9, updated 0, unchanged 0" in capsys.readouterr().out
    with Index.open(tmp_path / "one") as one, Index.open(tmp_path / "ray") as ray:
        assert sorted(one.ids()) == sorted(ray.ids()) and len(ray) == 9
        assert ray.store.token_count() == one.store.token_count()
        for query in QUERIES:
            want, got = one.search(query, k=9), ray.search(query, k=9)
            assert [h.id for h in got] == [h.id for h in want]
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
