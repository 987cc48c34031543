"""One bad record stops nothing: in BEIR folders, M-BEIR pools and query files, an empty document,
an empty query, a missing or truncated image, a field of the wrong type, a null field, a record
without an id or a line that is not JSON is counted and named as failed, and everything else is
scored exactly as it is without it (BEIR drops a failed query, UniIR scores it 0)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umr.cli import main
from umr.data.beir import load_beir_task
from umr.data.mbeir import load_mbeir
from umr.eval import evaluate
from umr.core.items import Item

from .conftest import OracleEmbedder, Words, build_mbeir, cli_eval, write_beir

CRANFIELD = Path(__file__).parents[1] / "fixtures" / "eval" / "cranfield-layout"
pytest.importorskip("pytrec_eval")


def _without(folder: Path, out: Path, *, corpus_ids=(), query_ids=()) -> Path:
    """A copy of a BEIR folder without some records (the reference a run with them must equal)."""
    shutil.copytree(folder, out)
    for name, ids in (("corpus.jsonl", set(corpus_ids)), ("queries.jsonl", set(query_ids))):
        lines = (folder / name).read_text().splitlines()
        (out / name).write_text("".join(line + "\n" for line in lines if json.loads(line)["_id"] not in ids))
    return out


def test_an_empty_document_and_an_empty_query_of_a_real_beir_layout_are_named_and_the_rest_scored(
        tmp_path, monkeypatch, capsys):
    """Cranfield's document 995 (empty title and text) ended the evaluation: `umr eval: error:
    item '995': has neither text nor image`; an empty query did the same. Nothing was scored."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    code = main(["eval", "--model", "minilm", "--benchmark", "beir", "--data", str(CRANFIELD),
                 "--output", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    task = json.loads((out / "scores.json").read_text())["tasks"][0]
    assert task["failures"]["queries"] == 1 and task["failures"]["candidates"] == 1
    assert {(r["role"], r["id"]) for r in task["failures"]["first"]} == {("query", "3"), ("candidate", "995")}
    assert all("has neither text nor image" in r["error"] for r in task["failures"]["first"])
    assert task["query_errors"] == {"3": task["failures"]["first"][0]["error"]}
    # BEIR-style: the failed query is dropped and counted; the six others are scored
    assert task["n_queries"] == 7 and task["n_scored_queries"] == 6
    assert task["dropped_queries"] == {"absent": 0, "failed": 1, "unjudged": 0}
    assert "995" in printed.out and "⚠" in (out / "results.md").read_text()

    clean = _without(CRANFIELD, tmp_path / "clean", corpus_ids={"995"}, query_ids={"3"})
    assert main(["eval", "--model", "minilm", "--benchmark", "beir", "--data", str(clean),
                 "--output", str(tmp_path / "out-clean"), "--no-progress"]) == 0
    reference = json.loads((tmp_path / "out-clean" / "scores.json").read_text())["tasks"][0]
    assert reference["failures"]["queries"] == reference["failures"]["candidates"] == 0
    assert task["metrics"] == reference["metrics"] and task["main_score"] > 0.3
    capsys.readouterr()


def _bad_beir(folder: Path) -> tuple[Path, set[str], set[str]]:
    """A BEIR folder of good records and one of every kind of bad one; the bad ids (or FILE:LINE)."""
    folder.mkdir(parents=True)
    good_docs = [{"_id": f"d{i}", "title": f"title {i}", "text": f"apples pears topic{i} orchard"} for i in range(6)]
    bad_docs = [
        {"_id": "empty", "title": "", "text": ""},
        {"_id": "blank", "title": "  ", "text": "\n\t"},
        {"_id": "nulls", "title": None, "text": None, "image": None},
        {"_id": "int-text", "title": "a title", "text": 42},
        {"_id": "list-title", "title": ["a"], "text": "fine text"},
        {"_id": "missing-image", "text": "", "image": "pictures/nowhere.png"},
        {"_id": "int-image", "image": 7},
        {"_id": "url-image", "image": "https://example.com/a.png"},
        {"title": "no id", "text": "a document without an id"},
        {"_id": {"nested": 1}, "text": "an id that is an object"},
    ]
    corpus = [json.dumps(r) for r in good_docs[:3] + bad_docs + good_docs[3:]]
    corpus += ["[1, 2, 3]", '{"_id": "torn", "text": "a line cut in the mid']
    good_queries = [{"_id": f"q{i}", "text": f"topic{i} apples"} for i in range(6)]
    bad_queries = [
        {"_id": "qe", "text": ""},
        {"_id": "qn", "text": None, "image": None},
        {"_id": "qt", "text": {"en": "apples"}},
        {"_id": "qi", "text": "apples", "instruction": 3},
        {"_id": "qm", "image": "pictures/nowhere.png"},
    ]
    queries = [json.dumps(r) for r in good_queries[:2] + bad_queries + good_queries[2:]]
    queries += ['{"text": "a query without an id"}', "not json"]
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (folder / "qrels").mkdir()
    judged = [(f"q{i}", f"d{i}", 1) for i in range(6)] + [(q["_id"], "d0", 1) for q in bad_queries]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                               + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in judged))
    bad_candidates = {"empty", "blank", "nulls", "int-text", "list-title", "missing-image", "int-image",
                      "url-image", "corpus.jsonl:12", "corpus.jsonl:13", "corpus.jsonl:17", "corpus.jsonl:18"}
    bad_query_ids = {"qe", "qn", "qt", "qi", "qm", "queries.jsonl:12", "queries.jsonl:13"}
    return folder, bad_candidates, bad_query_ids


def test_every_kind_of_bad_beir_record_is_a_named_failure_and_the_rest_is_scored_as_without_it(tmp_path,
                                                                                                monkeypatch):
    folder, bad_candidates, bad_queries = _bad_beir(tmp_path / "task")
    task = load_beir_task(folder)
    assert len(task.candidates) == 18 and len(task.queries) == 13
    failed = {c.id: c.problem for c in task.candidates if c.problem is not None}
    # the reader's verdicts (a missing file is the model's to find, when it reads the image)
    assert failed["int-text"] == "field 'text' must be a string or null, got int"
    assert failed["list-title"] == "field 'title' must be a string or null, got list"
    assert failed["int-image"] == "field 'image' must be a string or null, got int"
    assert "URLs are not supported" in failed["url-image"]
    assert failed["corpus.jsonl:12"] == "has no '_id' (its id)"
    assert failed["corpus.jsonl:13"] == "field '_id' (its id) must be a string or a number, got dict"
    assert failed["corpus.jsonl:17"] == "expected a JSON object, got list"
    assert failed["corpus.jsonl:18"].startswith("invalid JSON (")
    assert set(failed) == bad_candidates - {"missing-image"}

    model = Words()
    code = cli_eval(monkeypatch, model, folder, tmp_path / "out")
    assert code == 0
    result = json.loads((tmp_path / "out" / "scores.json").read_text())["tasks"][0]
    assert result["failures"]["candidates"] == len(bad_candidates) == 12
    assert result["failures"]["queries"] == len(bad_queries) == 7
    assert set(result["query_errors"]) == bad_queries
    assert "no such image file" in result["query_errors"]["qm"]
    assert result["query_errors"]["qi"] == "field 'instruction' must be a string or null, got int"
    # the evaluation's record of failures names each with its reason (records without any content
    # are one item to the cache, tried once: "empty" stands for "blank" and "nulls", "qe" for "qn")
    errors = [json.loads(line) for line in next((tmp_path / "out" / "cache").rglob("errors.jsonl")).read_text()
              .splitlines()]
    assert {e["id"] for e in errors} == (bad_candidates | bad_queries) - {"blank", "nulls", "qn"}
    assert {e["error"] for e in errors if e["id"] == "int-text"} == {"field 'text' must be a string or null, got int"}
    # the five judged bad queries are dropped and counted; the two without ids were never judged
    assert result["dropped_queries"] == {"absent": 0, "failed": 5, "unjudged": 0}
    assert result["n_scored_queries"] == 6

    reference = evaluate(Words("words-clean"), [load_beir_task(write_beir(
        tmp_path / "clean", [{"_id": f"d{i}", "title": f"title {i}", "text": f"apples pears topic{i} orchard"}
                             for i in range(6)],
        [{"_id": f"q{i}", "text": f"topic{i} apples"} for i in range(6)],
        [(f"q{i}", f"d{i}", 1) for i in range(6)]))])["tasks"][0]
    assert result["metrics"] == reference["metrics"] and result["main_score"] > 0.5


def test_a_rerun_keeps_failed_records_failed_and_a_fixed_record_is_embedded(tmp_path, monkeypatch):
    folder, bad_candidates, _ = _bad_beir(tmp_path / "task")
    assert cli_eval(monkeypatch, Words(), folder, tmp_path / "out") == 0
    lines = (folder / "corpus.jsonl").read_text().splitlines()
    lines[lines.index(json.dumps({"_id": "int-text", "title": "a title", "text": 42}))] = json.dumps(
        {"_id": "int-text", "title": "a title", "text": "now a string"})
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    again = Words()
    assert cli_eval(monkeypatch, again, folder, tmp_path / "out") == 0
    result = json.loads((tmp_path / "out" / "scores.json").read_text())["tasks"][0]
    assert result["failures"]["candidates"] == len(bad_candidates) - 1
    assert again.seen == ["int-text"]  # the fixed record only; failed ones are not retried


def _truncated_png(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (10, 200, 30)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    return str(path)


def test_bad_records_of_mbeir_pools_and_query_files_fail_and_a_failed_query_scores_zero(tmp_path):
    root = build_mbeir(tmp_path / "M-BEIR")
    pool = root / "cand_pool/local/mbeir_oven_task6_cand_pool.jsonl"  # image,text -> text
    records = [json.loads(line) for line in pool.read_text().splitlines()]
    # 6:1010..6:1019 are concepts 10..19; queries 6:0..6:5 ask for concepts 10..15
    records[7]["txt"] = ""                                   # a text candidate with empty text
    records[8]["txt"] = 17                                   # a number where text belongs
    records[9]["modality"] = "video"                         # an unknown modality
    lines = [json.dumps(r) for r in records] + ['{"did": "6:9999", "txt": "cut sho', '{"txt": "no did"}']
    pool.write_text("\n".join(lines) + "\n")
    queries = root / "query/test/mbeir_oven_task6_test.jsonl"
    qrecords = [json.loads(line) for line in queries.read_text().splitlines()]
    qrecords[1]["query_txt"] = "   "                          # a fused query with a blank text...
    qrecords[1]["query_img_path"] = None                     # ...and no image
    qrecords[2]["query_img_path"] = "mbeir_images/oven/nowhere.png"   # an image file that is not there
    _truncated_png(root / "mbeir_images/oven/cut.png")
    qrecords[3]["query_img_path"] = "mbeir_images/oven/cut.png"       # a truncated image file
    qrecords[4]["pos_cand_list"] = "6:1014"                  # a string where a list belongs
    queries.write_text("".join(json.dumps(r) + "\n" for r in qrecords) + "not json\n")

    task = load_mbeir(root, tasks=["oven_task6"], instruction_policy="none")[0]
    assert [c.id for c in task.candidates if c.problem is not None] == \
        ["6:1017", "6:1018", "6:1019", "mbeir_oven_task6_cand_pool.jsonl:11", "mbeir_oven_task6_cand_pool.jsonl:12"]
    assert task.category == "IT→T" and len(task.queries) == 7
    by_id = {q.id: q for q in task.queries}
    assert by_id["6:4"].problem == "field 'pos_cand_list' must be a list of candidate ids, got str"

    class Decoding(OracleEmbedder):
        """The oracle, reading every image as a model does (a truncated file is that item's error)."""

        def _cost(self, item: Item) -> int:
            if item.image is not None:
                from umr.core.images import load_image

                load_image(item.image, item_id=item.id)
            return 1

    result = evaluate(Decoding(), [task])["tasks"][0]
    assert result["failures"]["candidates"] == 5
    assert set(result["query_errors"]) == {"6:1", "6:2", "6:3", "6:4", "mbeir_oven_task6_test.jsonl:7"}
    assert "has neither text nor image" in result["query_errors"]["6:1"]
    assert "no such file" in result["query_errors"]["6:2"] or "not found" in result["query_errors"]["6:2"]
    assert "cannot be decoded" in result["query_errors"]["6:3"] or "truncated" in result["query_errors"]["6:3"]
    # UniIR: the mean is over every query of the file; the two good ones are hits, the five failed score 0
    assert result["n_scored_queries"] == 7
    assert result["main_score"] == pytest.approx(2 / 7)
    assert result["metrics"]["hit@5"] == pytest.approx(2 / 7)


def test_readers_keep_a_failed_record_in_its_place_with_its_reason():
    item = Item.failed("7", "field 'text' must be a string or null, got int", is_query=True)
    assert item.problem == "field 'text' must be a string or null, got int" and item.is_query
    with pytest.raises(Exception, match=r"item '7': field 'text' must be a string"):
        item.modality  # noqa: B018
    assert Item.candidate(text="  ", id="x").problem.startswith("has neither text nor image")
    assert Item.candidate(text="a").problem is None
    with pytest.raises(ValueError, match="holds no text"):
        Item(text="a", error="bad")
    from umr.core.fingerprint import item_fingerprint

    one, other = Item.failed("a", "reason one"), Item.failed("a", "reason two")
    assert item_fingerprint(one) != item_fingerprint(other) != item_fingerprint(Item.candidate(text=None))
    # the vectors of good items keep their fingerprints (existing caches and indexes stay valid)
    assert item_fingerprint(Item.candidate(text="a")) == item_fingerprint(Item(text="a", error=None))
    vectors = OracleEmbedder().embed([Item.candidate(text="concept 01", id="ok"), item], on_error="skip")
    assert vectors.indices.tolist() == [0] and vectors.errors[0].reason == item.error
    assert np.isfinite(vectors.vectors).all()


def test_a_task_of_unknown_number_takes_its_modalities_from_the_first_readable_query(tmp_path):
    root = build_mbeir(tmp_path / "M-BEIR")
    for old, new in (("query/test/mbeir_mscoco_task0_test.jsonl", "query/test/mbeir_mscoco_task9_test.jsonl"),
                     ("cand_pool/local/mbeir_mscoco_task0_cand_pool.jsonl",
                      "cand_pool/local/mbeir_mscoco_task9_cand_pool.jsonl"),
                     ("qrels/test/mbeir_mscoco_task0_test_qrels.txt", "qrels/test/mbeir_mscoco_task9_test_qrels.txt")):
        (root / old).rename(root / new)
    queries = root / "query/test/mbeir_mscoco_task9_test.jsonl"
    lines = queries.read_text().splitlines()
    queries.write_text("\n".join(['{"qid": "1:0", "query_txt": 5}'] + lines[1:]) + "\n")
    task = load_mbeir(root, tasks=["mscoco_task9"], instruction_policy="none")[0]
    assert task.queries[0].problem == "field 'query_txt' must be a string or null, got int"
    assert str(task.target_modality) == "image" and task.category == "T→I"
